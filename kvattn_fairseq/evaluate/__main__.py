"""python -m kvattn_fairseq.evaluate {wmt,cnndm,lm,synthetic,classify} --data DIR --checkpoint CKPT --out results.json
[options] [-- extra fairseq flags]"""
import argparse
import os
import sys

from ..papers import TABLES
from ..util import proc
from ..util.cli import ArgumentParser, run_main, split_passthrough
from ..util.errors import OneLineError
from . import classification, cnndm, lm, results, synthetic, wmt

EVALUATORS = {"wmt": wmt, "cnndm": cnndm, "lm": lm, "synthetic": synthetic, "classify": classification}


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


def _generation(p: argparse.ArgumentParser, beam: int, lenpen: float) -> None:
    p.add_argument("--beam", type=int, default=beam, help=f"beam size (default {beam})")
    p.add_argument("--lenpen", type=float, default=lenpen, help=f"length penalty (default {lenpen})")
    p.add_argument("--gen-subset", default="test", help="which binarized split to decode (default test)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m kvattn_fairseq.evaluate", description=__doc__, passthrough=True)
    sub = parser.add_subparsers(dest="task", metavar="{wmt,cnndm,lm,synthetic,classify}", required=True)

    p = sub.add_parser("wmt", help="WMT En-De: sacreBLEU (+ compound-split tok-BLEU)", description=wmt.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    _generation(p, 4, 0.6)
    p.add_argument("--target-lang", default="de", help="reference suffix DIR/test.LANG and tokenizer language")
    p.add_argument("--sacrebleu-tokenize", default="13a", help="sacreBLEU tokenizer (default 13a)")

    p = sub.add_parser("cnndm", help="CNN/DailyMail: ROUGE-1/2/L/Lsum", description=cnndm.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    _generation(p, 4, 2.0)
    p.add_argument("--min-len", type=int, default=55, help="minimum summary length in tokens (default 55)")
    p.add_argument("--max-len-b", type=int, default=140, help="maximum summary length in tokens (default 140)")
    p.add_argument("--no-repeat-ngram-size", type=int, default=3, help="default 3")
    p.add_argument("--no-truncate-source", action="store_true",
                   help="do not pass --truncate-source (a too-long article then stops generation with an error)")

    p = sub.add_parser("lm", help="language modelling: fairseq-eval-lm perplexity", description=lm.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, lm_task=True)
    p.add_argument("--context-window", type=int, default=0, metavar="C", help="context tokens before each block")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--tokens-per-sample", type=int, metavar="M",
                      help="the model's input window, context included (fairseq's meaning)")
    size.add_argument("--score-block", type=int, metavar="B",
                      help="tokens scored per window; passes --tokens-per-sample B + C")
    p.add_argument("--splits", default="valid,test", help="comma-separated splits (default valid,test)")

    p = sub.add_parser("synthetic", help="synthetic sequence tasks: exact-match accuracy",
                       description=synthetic.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    _generation(p, 1, 1.0)
    p.add_argument("--synthetic-task", metavar="NAME",
                   help="reverse, sort, copy, swap, sub, ... (default: the data directory's name)")

    p = sub.add_parser("classify", help="per-position classification (kv_position_classification): accuracy",
                       description=classification.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--gen-subset", default="test", help="which binarized split to label (default test)")
    p.add_argument("--synthetic-task", metavar="NAME",
                   help="reverse, sort, copy, swap, sub, ... (default: the data directory's name)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    return parser


def parse(argv) -> argparse.Namespace:
    """The evaluator's arguments; flags after `--` are in .extra."""
    own, extra = split_passthrough(argv)
    a = build_parser().parse_args(own)
    a.extra = extra
    return a


def evaluate(a: argparse.Namespace) -> dict:
    """Run the evaluator `a.task`, write its results file and return the results; bad input raises OneLineError
    before any fairseq tool runs."""
    if a.checkpoint and a.average_last:
        raise OneLineError("--checkpoint and --average-last exclude each other")
    if os.path.isdir(a.out):
        raise OneLineError(f"--out {a.out} is a directory; give the results file's name")
    if os.path.exists(a.out) and not _is_results_file(a.out):  # an overwrite replaces only this tool's results
        raise OneLineError(f"--out {a.out} exists and is not a results file of this tool; choose another --out "
                           "(nothing was written)")
    module = EVALUATORS[a.task]
    with proc.staged_logs():  # a failed rerun keeps the previous run's logs beside its results
        result = module.run(a)
    print(f"{result['name']}: {module.summary_line(result)}")
    print(f"wrote {a.out}")
    return result


def _is_results_file(path: str) -> bool:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            return results.is_results(json.load(f))
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def main(argv=None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        evaluate(a)
        return 0

    return run_main(f"python -m kvattn_fairseq.evaluate {a.task}", body, interrupted="interrupted; nothing written")


if __name__ == "__main__":
    sys.exit(main())
