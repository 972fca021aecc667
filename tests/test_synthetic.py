"""The Key-Value Transformer synthetic tasks (kvattn_fairseq/data/synthetic.py, `python -m kvattn_fairseq synthetic`):
targets, defaults, determinism, the binarized output and its atomicity."""
import json
import os
import random

import pytest

from kvattn_fairseq.data import synthetic
from kvattn_fairseq.util.errors import OneLineError
from conftest import run_cli


def _reference(task, x, a):
    """Each task written a second, independent way."""
    n = len(x)
    if task == "reverse":
        return [x[n - 1 - i] for i in range(n)]
    if task == "sort":
        counts = [x.count(v) for v in range(a)]
        return [v for v in range(a) for _ in range(counts[v])]
    if task == "copy":
        return x[:]
    if task == "swap":  # rotate left by n // 2
        return [x[(i + n // 2) % n] for i in range(n)]
    if task == "sub":
        return [a - 1 - v for v in x]
    raise AssertionError(task)


def test_the_five_tasks_of_the_paper():
    assert sorted(synthetic.TASKS) == ["copy", "reverse", "sort", "sub", "swap"]


@pytest.mark.parametrize("task", sorted(synthetic.TASKS))
@pytest.mark.parametrize("alphabet", [2, 10, 37])
def test_target_is_the_task_of_the_source(task, alphabet):
    rng = random.Random(7)
    for length in [1, 2, 3, 8, 9, 64, 65]:
        x = [rng.randrange(alphabet) for _ in range(length)]
        assert synthetic.target(task, x, alphabet) == _reference(task, x, alphabet), (task, x)


def test_worked_examples():
    x = [3, 1, 4, 1, 5]
    assert synthetic.target("reverse", x, 10) == [5, 1, 4, 1, 3]
    assert synthetic.target("sort", x, 10) == [1, 1, 3, 4, 5]
    assert synthetic.target("copy", x, 10) == x
    assert synthetic.target("swap", x, 10) == [4, 1, 5, 3, 1]  # odd length: the middle symbol goes first
    assert synthetic.target("swap", [1, 2, 3, 4], 10) == [3, 4, 1, 2]
    assert synthetic.target("sub", x, 10) == [6, 8, 5, 8, 4]  # the paper's 9 - x


@pytest.mark.parametrize("task", sorted(synthetic.TASKS))
def test_text_lines_are_the_task(task):
    rows = synthetic.pairs(task, "train", 300, min_len=2, max_len=11, alphabet_size=13, seed=3)
    assert len(rows) == 300
    lengths = set()
    for src, tgt in rows:
        x = [int(t) for t in src.split(" ")]
        y = [int(t) for t in tgt.split(" ")]
        assert 2 <= len(x) <= 11 and all(0 <= v < 13 for v in x)
        assert y == _reference(task, x, 13)
        lengths.add(len(x))
    assert lengths == set(range(2, 12))  # every length in range is drawn


def test_defaults_are_the_papers():
    """docs/papers/kv-transformer.md: 10 symbols, sequence length 64 (its sweep: 64, 128), 50k/1k/10k sequences."""
    assert synthetic.DEFAULTS == dict(train=50000, valid=1000, test=10000, min_len=64, max_len=64, alphabet_size=10,
                                      seed=1)
    args = synthetic.build_parser().parse_args(["--task", "reverse", "--out", "x"])
    for key, value in synthetic.DEFAULTS.items():
        assert getattr(args, key) == value, key
    rows = synthetic.pairs("reverse", "valid", 50)
    assert {len(s.split()) for s, _ in rows} == {64}
    assert {t for s, _ in rows for t in s.split()} == {str(v) for v in range(10)}


def test_deterministic_and_seeded():
    a = synthetic.pairs("sort", "train", 50, 3, 9, 10, seed=5)
    assert a == synthetic.pairs("sort", "train", 50, 3, 9, 10, seed=5)
    assert a != synthetic.pairs("sort", "train", 50, 3, 9, 10, seed=6)
    assert a != synthetic.pairs("sort", "valid", 50, 3, 9, 10, seed=5)  # splits differ
    # the sources depend on the seed and split only, so every task sees the same inputs
    assert [s for s, _ in a] == [s for s, _ in synthetic.pairs("reverse", "train", 50, 3, 9, 10, seed=5)]


@pytest.mark.parametrize("kwargs, flag", [
    (dict(task="rotate"), "--task"), (dict(min_len=0), "--min-len"), (dict(min_len=5, max_len=4), "--max-len"),
    (dict(alphabet_size=1), "--alphabet-size"), (dict(n=0), "--train"),
])
def test_bad_settings(kwargs, flag):
    settings = dict(task="copy", n=1, min_len=1, max_len=1, alphabet_size=2)
    settings.update(kwargs)
    with pytest.raises(OneLineError, match=flag):
        synthetic.check(**settings)


def _read_binarized(bin_dir, split, side):
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(os.path.join(bin_dir, f"dict.{side}.txt"))
    ds = data_utils.load_indexed_dataset(os.path.join(bin_dir, f"{split}.src-tgt.{side}"), d)
    return [d.string(ds[i]) for i in range(len(ds))]


def test_generate_writes_raw_and_binarized(tmp_path):
    out = tmp_path / "swap"
    bin_dir = synthetic.generate(str(out), "swap", train=30, valid=5, test=4, min_len=2, max_len=7,
                                 alphabet_size=40, seed=2)
    assert bin_dir == str(out / "data-bin")
    assert sorted(os.listdir(tmp_path)) == ["swap"]  # no temporary directory left beside it
    assert ".tmp-" not in (out / "data-bin" / "preprocess.log").read_text()
    meta = json.loads((out / "synthetic.json").read_text())
    assert meta["task"] == "swap" and meta["alphabet_size"] == 40 and meta["train"] == 30 and meta["seed"] == 2
    for split, n in (("train", 30), ("valid", 5), ("test", 4)):
        src = (out / "raw" / f"{split}.src").read_text().splitlines()
        tgt = (out / "raw" / f"{split}.tgt").read_text().splitlines()
        assert [(s, t) for s, t in zip(src, tgt)] == synthetic.pairs("swap", split, n, 2, 7, 40, 2)
        # the binarized data decodes back to the raw text, nothing replaced by <unk>
        assert _read_binarized(bin_dir, split, "src") == src
        assert _read_binarized(bin_dir, split, "tgt") == tgt
    # one joined dictionary holding every symbol in numeric order, even those the 30 training lines never use
    for side in ("src", "tgt"):
        words = [line.split()[0] for line in (out / "data-bin" / f"dict.{side}.txt").read_text().splitlines()]
        assert words == [str(v) for v in range(40)]


def test_output_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "rev"
    synthetic.generate(str(out), "reverse", train=5, valid=2, test=2, min_len=2, max_len=3)
    before = (out / "raw" / "train.src").read_text()
    with pytest.raises(OneLineError, match="already exists"):
        synthetic.generate(str(out), "copy", train=5, valid=2, test=2, min_len=2, max_len=3)

    def broken(*args, **kwargs):
        raise RuntimeError("binarization failed")

    monkeypatch.setattr(synthetic, "binarize", broken)
    with pytest.raises(RuntimeError):
        synthetic.generate(str(out), "copy", train=5, valid=2, test=2, min_len=2, max_len=3, seed=9, force=True)
    assert (out / "raw" / "train.src").read_text() == before  # the old output is untouched
    assert sorted(os.listdir(tmp_path)) == ["rev"]
    with pytest.raises(RuntimeError):
        synthetic.generate(str(tmp_path / "new"), "copy", train=5, valid=2, test=2, min_len=2, max_len=3)
    assert sorted(os.listdir(tmp_path)) == ["rev"]
    monkeypatch.undo()
    synthetic.generate(str(out), "copy", train=5, valid=2, test=2, min_len=2, max_len=3, seed=9, force=True)
    assert json.loads((out / "synthetic.json").read_text())["task"] == "copy"
    assert sorted(os.listdir(tmp_path)) == ["rev"]


@pytest.mark.slow
def test_command_line(tmp_path):
    out = tmp_path / "sub"
    proc = run_cli("-m kvattn_fairseq synthetic", "--task", "sub", "--out", out, "--train", 20, "--valid", 3,
                   "--test", 3, "--min-len", 4, "--max-len", 6, "--seed", 4)
    assert proc.stdout.strip().splitlines()[-1] == str(out / "data-bin")
    assert (out / "data-bin" / "train.src-tgt.src.bin").exists()
    src = (out / "raw" / "test.src").read_text().splitlines()
    tgt = (out / "raw" / "test.tgt").read_text().splitlines()
    assert all([9 - int(v) for v in s.split()] == [int(v) for v in t.split()] for s, t in zip(src, tgt))


def test_force_replaces_only_its_own_output(tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("months of work")
    assert synthetic.main(["--task", "copy", "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0] and "did not make (thesis.tex)" in err[0]
    assert os.listdir(out) == ["thesis.tex"] and sorted(os.listdir(tmp_path)) == ["thesis"]


def test_command_line_errors(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    for argv, needle in ((["--out", str(tmp_path / "taken")], "--force"),
                         (["--out", str(tmp_path / "x"), "--min-len", "5", "--max-len", "4"], "--max-len"),
                         (["--out", str(tmp_path / "x"), "--alphabet-size", "1"], "--alphabet-size")):
        assert synthetic.main(["--task", "sub", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0] and needle in err[0]
    assert sorted(os.listdir(tmp_path)) == ["taken"]
