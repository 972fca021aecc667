"""Checks of the evaluators' inputs, each failing with one line that names the flag or file, and where their
outputs go."""
import os
from typing import List, Sequence

from ..util.errors import OneLineError


def require_dir(path: str, flag: str) -> str:
    if not os.path.isdir(path):
        raise OneLineError(f"{flag} {path}: no such directory")
    return path


def require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise OneLineError(f"{what}: file not found: {path}")
    return path


def require_data_bin(data_bin: str, flag: str, splits: Sequence[str]) -> None:
    """A fairseq-preprocess output directory holding each of `splits` (some *.bin file named after it)."""
    require_dir(data_bin, flag)
    names = os.listdir(data_bin)
    if not any(n.startswith("dict.") for n in names):
        raise OneLineError(f"{flag}: {data_bin} holds no dict.*.txt: not a fairseq-preprocess output directory")
    for split in splits:
        if not any(n.startswith(split + ".") and n.endswith(".bin") for n in names):
            raise OneLineError(f"{flag}: {data_bin} has no binarized '{split}' split ({split}.*.bin)")


def read_lines(path: str, what: str) -> List[str]:
    """The lines of a UTF-8 text file, split on "\\n" only (str.splitlines would also split on U+2028, U+0085,
    form feeds ... which real corpora contain, and miscount the sentences)."""
    require_file(path, what)
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line[:-1].rstrip("\r") if line.endswith("\n") else line.rstrip("\r") for line in f]


def stem(out: str) -> str:
    """results.json -> results: the prefix of the hypotheses and log files written next to the results file."""
    return out[:-len(".json")] if out.endswith(".json") else out


def experiment_name(a, checkpoint: str) -> str:
    if a.name:
        return a.name
    directory = a.checkpoint_dir if a.average_last else os.path.dirname(os.path.abspath(checkpoint))
    return os.path.basename(os.path.normpath(os.path.abspath(directory))) or "experiment"
