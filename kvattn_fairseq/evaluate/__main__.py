"""python -m kvattn_fairseq evaluate {wmt,cnndm,lm,synthetic,classify} --data DIR --checkpoint CKPT --out results.json
[options] [-- extra fairseq flags]"""
import argparse
import sys

from ..papers import TABLES
from ..util.cli import ArgumentParser, run_main, split_passthrough
from .registry import EVALUATORS, evaluate  # noqa: F401  (evaluate: the in-process entry point)


def _common(p: argparse.ArgumentParser, lm_task: bool = False) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="the prepared data directory (holds data-bin/)")
    p.add_argument("--checkpoint", metavar="CKPT", help="the checkpoint to evaluate")
    p.add_argument("--average-last", type=int, metavar="N",
                   help="instead of --checkpoint: average the last N checkpoints of --checkpoint-dir first")
    p.add_argument("--average-by", choices=["epoch", "update"], default="epoch",
                   help="with --average-last: epoch checkpoints (checkpointE.pt, default) or update checkpoints "
                        "(checkpoint_E_U.pt)")
    p.add_argument("--checkpoint-dir", metavar="D", help="with --average-last: where the checkpoints are")
    p.add_argument("--average-output", metavar="FILE",
                   help="with --average-last: where the averaged checkpoint goes (default D/checkpoint.avgN.pt)")
    p.add_argument("--out", required=True, metavar="results.json",
                   help="the results file; hypotheses and logs go next to it (same name, other suffixes)")
    p.add_argument("--name", help="experiment name (default: the checkpoint's directory name)")
    p.add_argument("--table", choices=sorted(TABLES), help="which paper table the result belongs to "
                                                           "(default: inferred from the task and architecture)")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help=f"sentences per batch (default {2 if lm_task else 128} unless --max-tokens is given)")
    p.add_argument("--max-tokens", type=int, metavar="N", help="tokens per batch")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m kvattn_fairseq evaluate", description=__doc__, passthrough=True)
    sub = parser.add_subparsers(dest="task", metavar="{" + ",".join(EVALUATORS) + "}", required=True)
    for name, module in EVALUATORS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _common(p, lm_task=name == "lm")
        module.add_arguments(p)
    return parser


def parse(argv) -> argparse.Namespace:
    """The evaluator's arguments; flags after `--` are in .extra."""
    own, extra = split_passthrough(argv)
    a = build_parser().parse_args(own)
    a.extra = extra
    return a


def main(argv=None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        evaluate(a)
        return 0

    return run_main(f"python -m kvattn_fairseq evaluate {a.task}", body, interrupted="interrupted; nothing written")


if __name__ == "__main__":
    sys.exit(main())
