"""Toy data in fairseq's raw translation / language-modelling text formats, for tests and the demo.

`python -m kvattn_fairseq toydata reverse OUTDIR` writes {train,valid,test}.{src,tgt}: random sequences over a small
alphabet and their reversal, a task a model can only solve by attending across the whole source.  prepare_reverse()
also binarizes them for fairseq-train (the demo's data step).
"""
import argparse
import os
import random
import shutil
from typing import List, Tuple

ALPHABET = [chr(c) for c in range(ord("a"), ord("t"))]  # 20 symbols


def reverse_pairs(n: int, min_len: int, max_len: int, seed: int) -> List[Tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        seq = [rng.choice(ALPHABET) for _ in range(rng.randint(min_len, max_len))]
        pairs.append((" ".join(seq), " ".join(reversed(seq))))
    return pairs


def write_reverse(outdir: str, train: int = 2000, valid: int = 200, test: int = 100, min_len: int = 3,
                  max_len: int = 12, seed: int = 1) -> str:
    os.makedirs(outdir, exist_ok=True)
    for i, (split, n) in enumerate((("train", train), ("valid", valid), ("test", test))):
        pairs = reverse_pairs(n, min_len, max_len, seed * 1000 + i)
        for side, col in (("src", 0), ("tgt", 1)):
            with open(os.path.join(outdir, f"{split}.{side}"), "w", encoding="utf-8") as f:
                f.writelines(p[col] + "\n" for p in pairs)
    return outdir


def prepare_reverse(out: str, *, train: int, valid: int, test: int, min_len: int, max_len: int, seed: int = 1,
                    workers: int = 1) -> str:
    """OUT/raw (write_reverse) and OUT/data-bin (fairseq-preprocess, one dictionary for both sides), built beside
    OUT and moved into place whole; returns OUT/data-bin."""
    from ..util.io import install_dir, temp_dir_beside
    from .build import fairseq_preprocess, scrub_log

    tmp = temp_dir_beside(out)
    try:
        raw = write_reverse(os.path.join(tmp, "raw"), train, valid, test, min_len, max_len, seed)
        data_bin = os.path.join(tmp, "data-bin")
        fairseq_preprocess(["--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
                            *(a for split in ("train", "valid", "test")
                              for a in (f"--{split}pref", os.path.join(raw, split))),
                            "--destdir", data_bin, "--workers", str(workers)])
        scrub_log(os.path.join(data_bin, "preprocess.log"), tmp)
        install_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.path.join(out, "data-bin")


def write_lm(outdir: str, train: int = 2000, valid: int = 200, test: int = 200, seed: int = 2) -> str:
    """A language with structure to learn: each line is a sequence followed by its reversal."""
    os.makedirs(outdir, exist_ok=True)
    for i, (split, n) in enumerate((("train", train), ("valid", valid), ("test", test))):
        pairs = reverse_pairs(n, 2, 8, seed * 1000 + i)
        with open(os.path.join(outdir, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"{s} | {t}\n" for s, t in pairs)
    return outdir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kvattn_fairseq toydata", description=__doc__)
    parser.add_argument("task", choices=["reverse", "lm"])
    parser.add_argument("outdir")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--valid", type=int, default=200)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.task == "reverse":
        write_reverse(args.outdir, args.train, args.valid, args.test, seed=args.seed)
    else:
        write_lm(args.outdir, args.train, args.valid, args.test, seed=args.seed)

