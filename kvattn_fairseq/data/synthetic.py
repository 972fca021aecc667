"""The Key-Value Transformer paper's synthetic tasks: inputs and per-position labels, binarized for fairseq.

    python -m kvattn_fairseq synthetic --task reverse --out DIR [--train N --valid N --test N]
        [--min-len L --max-len L --alphabet-size A --seed S] [--force]

writes DIR/raw/{train,valid,test}.{src,tgt} (one sequence a line, symbols separated by spaces) and DIR/data-bin, the
same data binarized by fairseq-preprocess with a joined dictionary, ready for `fairseq-train DIR/data-bin`.
DIR/synthetic.json records the settings.

Every task keeps the length, so the target line holds a label for each input position: label i is symbol i of
the target.  The paper's setup reads it that way (task kv_position_classification: `python -m kvattn_fairseq
experiments show kv_classification`); the same files are also sequence-to-sequence pairs for
fairseq's translation task (ours: `show kv_synthetic_reverse`).

The tasks (Borji, "Key-Value Transformer", arXiv 2305.19129, and the author's `Reverse_sort_pos.py` in
aliborji/kv-transformer, whose dataset class defines them; docs/papers/kv-transformer.md), for a source x_1 .. x_L
over the symbols 0 .. A-1:

    reverse  x_L .. x_1
    sort     x sorted ascending (by symbol value)
    copy     x
    swap     the two halves exchanged: x_{L//2+1} .. x_L, x_1 .. x_{L//2} (the middle symbol of an odd L goes first)
    sub      (A-1) - x_i at every position ("9 - x" for the paper's 10 symbols)

Defaults are the paper's: 10 symbols, sequences of a fixed length 64 (its sweep used 64 and 128; pass
--min-len 128 --max-len 128 for the other), 50,000 / 1,000 / 10,000 train / valid / test sequences, symbols drawn
uniformly and independently (as the code's torch.randint; the random streams themselves differ).

Output is deterministic for a given seed (Python's own `random.Random`, seeded per split; the sources do not
depend on the task, so every task with the same seed and lengths sees the same inputs) and atomic: everything is
built in a temporary directory next to DIR and renamed into place at the end, so DIR is either absent, the old
complete output (until --force replaces it), or the new complete output.  --force replaces only a directory this
command made (it carries a marker file, .kvattn-made.json): a directory with anything else in it is refused, naming
those files.
"""
import json
import os
import random
import shutil
import sys
from typing import Callable, Dict, List, Sequence, Tuple

from ..util.cli import ArgumentParser, run_main
from ..util.errors import OneLineError
from ..util.io import check_replaceable, install_dir, temp_dir_beside, write_atomic
from .build import fairseq_preprocess, scrub_log

# Reverse_sort_pos.py: MyDataset(10, seq_len, size), seq_len in {64, 128}, sizes 50000 / 1000 / 10000
# (docs/papers/kv-transformer.md, "Synthetic tasks")
DEFAULTS = dict(train=50000, valid=1000, test=10000, min_len=64, max_len=64, alphabet_size=10, seed=1)
SPLITS = ("train", "valid", "test")


def _reverse(x: List[int], a: int) -> List[int]:
    return x[::-1]


def _sort(x: List[int], a: int) -> List[int]:
    return sorted(x)


def _copy(x: List[int], a: int) -> List[int]:
    return list(x)


def _swap(x: List[int], a: int) -> List[int]:
    half = len(x) // 2
    return x[half:] + x[:half]


def _sub(x: List[int], a: int) -> List[int]:
    return [a - 1 - v for v in x]


TASKS: Dict[str, Callable[[List[int], int], List[int]]] = {
    "reverse": _reverse, "sort": _sort, "copy": _copy, "swap": _swap, "sub": _sub}


def target(task: str, source: Sequence[int], alphabet_size: int) -> List[int]:
    """The task's target for one source sequence (symbols as integers)."""
    return TASKS[task](list(source), alphabet_size)


def sources(n: int, min_len: int, max_len: int, alphabet_size: int, seed: int, split: str) -> List[List[int]]:
    """n random sequences for one split, reproducible from (seed, split) alone."""
    rng = random.Random(f"kvattn-synthetic:{seed}:{split}")
    symbols = range(alphabet_size)
    return [rng.choices(symbols, k=rng.randint(min_len, max_len)) for _ in range(n)]


def pairs(task: str, split: str, n: int, min_len: int = DEFAULTS["min_len"], max_len: int = DEFAULTS["max_len"],
          alphabet_size: int = DEFAULTS["alphabet_size"], seed: int = DEFAULTS["seed"]) -> List[Tuple[str, str]]:
    """(source line, target line) pairs in fairseq's raw text format."""
    check(task, n=n, min_len=min_len, max_len=max_len, alphabet_size=alphabet_size)
    out = []
    for src in sources(n, min_len, max_len, alphabet_size, seed, split):
        out.append((" ".join(map(str, src)), " ".join(map(str, target(task, src, alphabet_size)))))
    return out


def check(task: str, n: int = 1, min_len: int = 1, max_len: int = 1, alphabet_size: int = 2, **_) -> None:
    if task not in TASKS:
        raise OneLineError(f"--task: unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    if n < 1:
        raise OneLineError(f"--train/--valid/--test: need at least 1 sequence per split, got {n}")
    if min_len < 1:
        raise OneLineError(f"--min-len: must be at least 1, got {min_len}")
    if max_len < min_len:
        raise OneLineError(f"--max-len: must be at least --min-len ({min_len}), got {max_len}")
    if alphabet_size < 2:
        raise OneLineError(f"--alphabet-size: must be at least 2, got {alphabet_size}")


def write_raw(outdir: str, task: str, sizes: Dict[str, int], min_len: int, max_len: int, alphabet_size: int,
              seed: int) -> None:
    os.makedirs(outdir, exist_ok=True)
    for split in SPLITS:
        rows = pairs(task, split, sizes[split], min_len, max_len, alphabet_size, seed)
        for side, col in (("src", 0), ("tgt", 1)):
            with open(os.path.join(outdir, f"{split}.{side}"), "w", encoding="utf-8") as f:
                f.writelines(row[col] + "\n" for row in rows)


def write_dictionary(path: str, alphabet_size: int) -> None:
    """Every symbol in numeric order, so that a symbol's index does not depend on the data (or on a symbol
    happening to be absent from a small training set)."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{v} 1\n" for v in range(alphabet_size))


def binarize(raw_dir: str, bin_dir: str, dict_path: str, workers: int = 1) -> None:
    """fairseq-preprocess with one joined dictionary for source and target."""
    fairseq_preprocess(["--source-lang", "src", "--target-lang", "tgt", "--trainpref", os.path.join(raw_dir, "train"),
                        "--validpref", os.path.join(raw_dir, "valid"), "--testpref", os.path.join(raw_dir, "test"),
                        "--destdir", bin_dir, "--joined-dictionary", "--srcdict", dict_path, "--workers",
                        str(workers)])


def generate(out: str, task: str, train: int = DEFAULTS["train"], valid: int = DEFAULTS["valid"],
             test: int = DEFAULTS["test"], min_len: int = DEFAULTS["min_len"], max_len: int = DEFAULTS["max_len"],
             alphabet_size: int = DEFAULTS["alphabet_size"], seed: int = DEFAULTS["seed"], force: bool = False,
             workers: int = 1) -> str:
    """Write OUT/raw, OUT/data-bin and OUT/synthetic.json atomically; returns OUT/data-bin."""
    sizes = dict(train=train, valid=valid, test=test)
    for n in sizes.values():
        check(task, n=n, min_len=min_len, max_len=max_len, alphabet_size=alphabet_size)
    out = os.path.abspath(out)
    if os.path.lexists(out) and not force:
        raise OneLineError(f"--out: {out} already exists; pass --force to replace it")
    check_replaceable(out, "--force")  # --force replaces only an output of this command, never a user's files
    tmp = temp_dir_beside(out)
    try:
        raw = os.path.join(tmp, "raw")
        write_raw(raw, task, sizes, min_len, max_len, alphabet_size, seed)
        write_dictionary(os.path.join(raw, "dict.txt"), alphabet_size)
        binarize(raw, os.path.join(tmp, "data-bin"), os.path.join(raw, "dict.txt"), workers)
        scrub_log(os.path.join(tmp, "data-bin", "preprocess.log"), tmp)
        meta = dict(settings(task, **sizes, min_len=min_len, max_len=max_len, alphabet_size=alphabet_size,
                             seed=seed), source="Borji 2023, Key-Value Transformer (arXiv 2305.19129), synthetic tasks")
        write_atomic(os.path.join(tmp, "synthetic.json"), json.dumps(meta, indent=2, sort_keys=True) + "\n")
        install_dir(tmp, out)  # with --force, the old output stays whole until the new one is in place
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.path.join(out, "data-bin")


def settings(task: str, **given) -> dict:
    """The settings synthetic.json records for an output made by generate(task, **given)."""
    return dict(DEFAULTS, **given, task=task)


def build_parser() -> ArgumentParser:
    import argparse

    parser = ArgumentParser(prog="python -m kvattn_fairseq synthetic", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--task", required=True, choices=list(TASKS))
    parser.add_argument("--out", required=True, help="output directory (must not exist unless --force)")
    parser.add_argument("--train", type=int, default=DEFAULTS["train"], help="training sequences")
    parser.add_argument("--valid", type=int, default=DEFAULTS["valid"], help="validation sequences")
    parser.add_argument("--test", type=int, default=DEFAULTS["test"], help="test sequences")
    parser.add_argument("--min-len", type=int, default=DEFAULTS["min_len"], help="shortest source")
    parser.add_argument("--max-len", type=int, default=DEFAULTS["max_len"], help="longest source")
    parser.add_argument("--alphabet-size", type=int, default=DEFAULTS["alphabet_size"],
                        help="number of symbols (written as 0 .. A-1)")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--workers", type=int, default=1, help="fairseq-preprocess workers")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def body() -> int:
        print(generate(args.out, args.task, args.train, args.valid, args.test, args.min_len, args.max_len,
                       args.alphabet_size, args.seed, args.force, args.workers))
        return 0

    return run_main(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
