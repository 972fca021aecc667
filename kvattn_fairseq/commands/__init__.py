"""`python -m kvattn_fairseq COMMAND [ARGS]` (also the `kvattn-fairseq` console script): every command of the package.

    python -m kvattn_fairseq --user-dir | --kinds | --archs | --patches
    python -m kvattn_fairseq COMMAND --help

COMMANDS names the module and function behind each command; a command runs in this process with the arguments after
its name, and an error of the plugin's (util/errors.py) is one line, `python -m kvattn_fairseq COMMAND: error: ...`.
"""
import argparse
import importlib
import inspect
import sys
from typing import Iterator, Optional, Sequence, Tuple

from ..util.cli import run_main

PROG = "python -m kvattn_fairseq"

# command -> (module:function called with the arguments after the command's name, what it does)
COMMANDS = {
    "experiments": ("kvattn_fairseq.commands.experiments:main",
                    "the papers' recipes as fairseq-train commands: list, show, train, hydra-configs"),
    "paper-tables": ("kvattn_fairseq.run.specs.paper_tables:main",
                     "a paper's table end to end: data, training, evaluation, Markdown (scripts/run-table.sh)"),
    "evaluate": ("kvattn_fairseq.evaluate.__main__:main", "score a checkpoint, one results JSON (scripts/evaluate.sh)"),
    "make-tables": ("kvattn_fairseq.run.report:main", "the papers' tables from a directory of results"),
    "synthetic": ("kvattn_fairseq.data.synthetic:main", "the Key-Value Transformer paper's synthetic tasks as data"),
    "toydata": ("kvattn_fairseq.data.toy:main", "toy reversal / language-modelling text for tests and the demo"),
    "prepare-wmt16-en-de": ("kvattn_fairseq.data.wmt16:cli", "WMT16 En-De (scripts/prepare-wmt16-en-de.sh)"),
    "prepare-cnndm": ("kvattn_fairseq.data.cnndm:cli", "CNN/DailyMail (scripts/prepare-cnndm.sh)"),
    "prepare-wikitext103": ("kvattn_fairseq.data.wikitext103:cli", "WikiText-103 (scripts/prepare-wikitext103.sh)"),
    "fixtures": ("kvattn_fairseq.data.fixtures:cli", "tiny archives in the real formats of the datasets"),
    "convert": ("kvattn_fairseq.checkpoints.convert:main",
                "a trained checkpoint with other attention kinds, the weights carried over"),
    "convert-chain": ("kvattn_fairseq.run.specs.convert_chain:main",
                      "convert, attention transfer, finetune (scripts/convert.sh)"),
    "average-checkpoints": ("kvattn_fairseq.checkpoints.average:main", "the mean of several checkpoints"),
    "bench": ("kvattn_fairseq.bench.__main__:main", "speed and memory against fairseq's transformer"),
    "demo": ("kvattn_fairseq.run.specs.demo:main",
             "a constant-state decoder against a vanilla transformer on toy data (make demo)"),
    "recovery": ("kvattn_fairseq.run.specs.recovery:main", "how much of a teacher conversion recovers"),
    "quality": ("kvattn_fairseq.run.specs.quality:main", "real-text quality against decoding state"),
    "recall": ("kvattn_fairseq.run.specs.recall:main", "associative recall beyond the window against decoding state"),
}


def run_command(name: str, argv: Sequence[str]) -> int:
    module, function = COMMANDS[name][0].split(":")
    main = getattr(importlib.import_module(module), function)
    # a main that is also behind a script (make_tables.py) takes the name to report errors under
    named = {"prog": f"{PROG} {name}"} if "prog" in inspect.signature(main).parameters else {}
    # the plugin's errors are one line in every command, also those whose main does not report them itself
    return run_main(f"{PROG} {name}", lambda: main(list(argv), **named) or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return run_command(argv[0], argv[1:])
    width = max(map(len, COMMANDS))
    parser = argparse.ArgumentParser(
        prog=PROG, usage=f"{PROG} COMMAND [ARGS] | --user-dir | --kinds | --archs | --patches",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<{width}}  {what}" for n, (_, what) in COMMANDS.items()))
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--user-dir", action="store_true", help="print the path to pass to fairseq's --user-dir")
    what.add_argument("--kinds", action="store_true", help="list the attention kinds and where each may sit")
    what.add_argument("--archs", action="store_true", help="list the plugin's architectures")
    what.add_argument("--patches", action="store_true", help="list what the plugin changes in fairseq, and why")
    if not argv or not argv[0].startswith("-"):
        parser.error(f"unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}" if argv else
                     f"give a COMMAND ({', '.join(COMMANDS)}) or one of --user-dir, --kinds, --archs, --patches")
    args = parser.parse_args(argv)
    if args.user_dir:
        from ..util.paths import USER_DIR

        print(USER_DIR)
    elif args.kinds:
        from ..modules.registry import ATTENTION_KINDS, PLAN_SYNTAX, POSITIONS

        width = max(len(name) for name in ATTENTION_KINDS)
        for kind in sorted(ATTENTION_KINDS.values(), key=lambda k: k.name):
            where = ",".join(p for p in POSITIONS if p in kind.positions)
            print(f"{kind.name:<{width}} {where:<22} {kind.summary}")
        print(f"\nA position flag takes one kind for every layer, or a plan: {PLAN_SYNTAX}.")
    elif args.archs:
        for model, arch, plan in arch_plans():
            print(f"{model:<20} {arch:<28} " + " ".join(f"{p}={kinds}" for p, kinds in plan.items()))
    else:
        from ..patches import docs_section

        print(docs_section(), end="")
    return 0


def arch_plans() -> Iterator[Tuple[str, str, dict]]:
    """(model, arch, {position: plan}) for each of the plugin's architectures, with its default flags."""
    from fairseq.models import ARCH_MODEL_INV_REGISTRY

    from ..models import attention_positions, plugin_models
    from ..models.building import parse_model_args
    from ..models.layers import check_attention_args

    for model in plugin_models():
        positions = attention_positions(model)
        for arch in ARCH_MODEL_INV_REGISTRY.get(model, []):
            plan = check_attention_args(parse_model_args(arch), positions)
            yield model, arch, {p: plan[p].text for p in positions}
