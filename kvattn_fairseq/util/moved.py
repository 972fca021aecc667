"""Module names that moved: `python -m kvattn_fairseq.<old>` says which command to run now, and `import` of an old
name says where its code went.  Only names that no longer exist reach this finder (it is the last one on
sys.meta_path)."""
import importlib
import importlib.abc
import importlib.util
import sys

# old module -> (where its code is now, the command that replaces `python -m` of it, or None)
MOVED = {
    "kvattn_fairseq.convert": ("kvattn_fairseq.checkpoints.convert", "convert"),
    "kvattn_fairseq.convert_chain": ("kvattn_fairseq.run.specs.convert_chain", "convert-chain"),
    "kvattn_fairseq.checkpoints.chain": ("kvattn_fairseq.run.specs.convert_chain", "convert-chain"),
    "kvattn_fairseq.average_checkpoints": ("kvattn_fairseq.checkpoints.average", "average-checkpoints"),
    "kvattn_fairseq.checkpoint_plan": ("kvattn_fairseq.checkpoints.plan", None),
    "kvattn_fairseq.checkpoint_files": ("kvattn_fairseq.checkpoints.files", None),
    "kvattn_fairseq.compat": ("kvattn_fairseq.patches", None),
    "kvattn_fairseq.tool_refusals": ("kvattn_fairseq.patches.tool_refusals", None),
    "kvattn_fairseq.cli": ("kvattn_fairseq.commands", None),
    "kvattn_fairseq.building": ("kvattn_fairseq.models.building", None),
    "kvattn_fairseq.toydata": ("kvattn_fairseq.data.toy", "toydata"),
    "kvattn_fairseq.experiments": ("kvattn_fairseq.commands.experiments", "experiments"),
    "kvattn_fairseq.paper_tables": ("kvattn_fairseq.run.specs.paper_tables", "paper-tables"),
    "kvattn_fairseq.synthetic": ("kvattn_fairseq.data.synthetic", "synthetic"),
    "kvattn_fairseq.recall": ("kvattn_fairseq.run.specs.recall", "recall"),
    "kvattn_fairseq.quality": ("kvattn_fairseq.run.specs.quality", "quality"),
    "kvattn_fairseq.demo": ("kvattn_fairseq.run.specs.demo", "demo"),
    "kvattn_fairseq.recovery": ("kvattn_fairseq.run.specs.recovery", "recovery"),
}


def message(old: str, run: bool = False) -> str:
    new, command = MOVED[old]
    if run and command:
        return f"python -m {old} moved: run `python -m kvattn_fairseq {command}` (the same arguments)"
    return f"{old} moved to {new}"


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError(message(module.__name__), name=module.__name__)

    def get_code(self, name):  # `python -m OLD` asks for code to run
        raise ImportError(message(name, run=True), name=name)


def install_aliases() -> None:
    if not any(isinstance(f, _Moved) for f in sys.meta_path):
        sys.meta_path.append(_Moved())
