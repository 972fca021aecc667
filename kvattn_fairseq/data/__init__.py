"""Data preparation for the papers' tasks: WMT16 En-De, CNN/DailyMail, WikiText-103 and the Key-Value
Transformer's synthetic tasks.

    python -m kvattn_fairseq.data.wmt16       --out OUTDIR [--raw DIR] [--tiny] [--workers N] [--bpe-size N]
    python -m kvattn_fairseq.data.cnndm       --out OUTDIR [--raw DIR] [--tiny] [--workers N] [--bpe-size N]
    python -m kvattn_fairseq.data.wikitext103 --out OUTDIR [--raw DIR] [--tiny] [--workers N]
    python -m kvattn_fairseq.data.fixtures {wmt16,cnndm,wikitext103} DIR
    python -m kvattn_fairseq synthetic --task reverse --out DIR       (kvattn_fairseq/data/synthetic.py)
    python -m kvattn_fairseq toydata reverse DIR                       (toy.py: toy data for tests and the demo)

(`scripts/prepare-*.sh` are one-line wrappers of the first three; `prepare(name, argv)` below runs them in
process.)  Each downloads the published files (resumable) or takes them from --raw, builds OUTDIR in a sibling
temporary directory, and renames it into place with OUTDIR/prepare.json written last.  Nothing here imports torch
or fairseq: binarization runs fairseq-preprocess in a subprocess.
"""
import importlib
from typing import Sequence


def prepare(name: str, argv: Sequence[str]) -> None:
    """The prepare command of dataset `name` (the module data/<name>.py: its PROG, command_parser and prepare)
    with the arguments `argv`, in this process; bad input or a failed step raises util.errors.OneLineError."""
    from . import build, common

    module = importlib.import_module(f"{__name__}.{name}")
    common.PROG = module.PROG
    build.run(module.prepare, module.command_parser().parse_args([str(a) for a in argv]))
