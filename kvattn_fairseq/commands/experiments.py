"""`python -m kvattn_fairseq experiments`: the papers' recipes as fairseq-train commands and hydra configs.

    python -m kvattn_fairseq experiments list
    python -m kvattn_fairseq experiments show  EXPERIMENT [DATA_BIN [SAVE_DIR]] [OPTIONS] [-- FLAGS...]
    python -m kvattn_fairseq experiments train EXPERIMENT DATA_BIN SAVE_DIR [OPTIONS] [-- FLAGS...]
    python -m kvattn_fairseq experiments hydra-configs --out configs [--tiny] [--check]
    scripts/train.sh EXPERIMENT DATA_BIN SAVE_DIR [OPTIONS] [-- FLAGS...]          (= train)

    OPTIONS: --kind KIND, --tiny, --drop FLAG (repeatable)

The recipes are in kvattn_fairseq/papers, the command in run/train.py, the hydra configs in run/hydra.py.
"""
import os
import sys
from typing import Optional, Sequence

from ..papers import RECIPES
from ..run.hydra import write_hydra_configs
from ..run.train import build_command, check_data
from ..util.cli import ArgumentParser, run_main, split_passthrough

PROG = "python -m kvattn_fairseq experiments"


def build_parser(prog: str = PROG) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0], passthrough=True,
                            epilog="Flags after `--` go to fairseq-train verbatim, after the recipe's.")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{list,show,train,hydra-configs}")
    sub.add_parser("list", help="the experiments")
    for cmd in ("show", "train"):
        p = sub.add_parser(cmd, help="print the command" if cmd == "show" else "print and run the command")
        p.add_argument("experiment")
        if cmd == "show":
            p.add_argument("data_bin", nargs="?", default="DATA_BIN")
            p.add_argument("save_dir", nargs="?", default="SAVE_DIR")
        else:
            p.add_argument("data_bin")
            p.add_argument("save_dir")
        p.add_argument("--kind", help="attention kind at every position where it fits (softmax elsewhere)")
        p.add_argument("--tiny", action="store_true", help="tiny architecture and limits (CPU smoke run)")
        p.add_argument("--drop", action="append", default=[], metavar="FLAG",
                       help="remove a flag (and its value) from the recipe's flags, e.g. --drop fp16 on a CPU; "
                            "repeatable (a store-true flag cannot be undone after --)")
    p = sub.add_parser("hydra-configs", help="write configs/<experiment>.yaml for fairseq-hydra-train")
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="the --tiny variants")
    p.add_argument("--check", action="store_true", help="only report files that are out of date (exit 1)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    prog = os.environ.get("KVATTN_EXPERIMENTS_PROG", PROG)
    own, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    args = parser.parse_args(own)
    if extra and args.cmd not in ("show", "train"):
        parser.error("flags after -- are only for show and train")

    def body() -> int:
        if args.cmd == "list":
            width = max(map(len, RECIPES))
            for r in RECIPES.values():
                print(f"{r.name:<{width}}  {r.task:<17}  {r.arch:<24}  {r.summary}")
            return 0
        if args.cmd == "hydra-configs":
            stale = write_hydra_configs(args.out, args.tiny, args.check)
            for path in stale:
                print(("out of date: " if args.check else "wrote ") + path)
            return 1 if args.check and stale else 0
        command = build_command(args.experiment, args.data_bin, args.save_dir, args.kind, args.tiny, extra,
                                args.drop)
        if args.cmd == "train":
            check_data(args.experiment, args.data_bin, extra)
        for note in command.notes:
            print(f"# {note}")
        print(command.shell())
        if args.cmd == "train":
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(command.argv[0], command.argv)
        return 0

    return run_main(prog, body)
