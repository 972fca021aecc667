"""Module names that moved: `python -m kvattn_fairseq.<old>` stops with one line naming the command to run now.

No import hook is involved: runpy imports the parent package before it looks for the module, and the package's
__init__ calls stop_old_command() first, which reads the module name from the interpreter's own command line
(sys.orig_argv).  An `import` of an old name fails as any missing module does; MOVED says where its code went.
"""
import sys
from typing import Optional, Sequence

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


def run_module() -> Optional[str]:
    """While runpy looks for the module of `python [OPTIONS] -m MODULE ARGS` (sys.argv is ['-m', *ARGS] then):
    MODULE, the word of the interpreter's command line in front of ARGS (`-mMODULE` too); else None."""
    argv, original = sys.argv, getattr(sys, "orig_argv", [])
    if argv[:1] != ["-m"] or len(original) <= len(argv):
        return None
    word = original[-len(argv)]
    return word[2:] if word.startswith("-m") else word


def stop_old_command() -> None:
    """`python -m OLD` for a moved OLD: one line, exit 2; anything else that imports the package is untouched."""
    old = run_module()
    if old in MOVED:
        print(f"kvattn_fairseq: error: {message(old, run=True)}", file=sys.stderr)
        sys.exit(2)
