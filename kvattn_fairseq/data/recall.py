"""Multi-query associative recall (MQAR, after Arora et al. 2023, "Zoology", arXiv 2312.04927, section 3), with the
pairs placed out of a sliding window's reach (docs/recall/README.md).

One sequence of exactly `length` tokens, over three disjoint vocabularies (keys k0.., values v0.., filler x0..):

    k_1 v_1 k_2 v_2 ... k_N v_N   x x x ... x   q_1 a_1 q_2 a_2 ... q_S a_S
    |-- N pairs (distinct keys,  |-- filler: --|  |-- queries: every key once, in a random order, and
        values drawn freely) --|   at least        `repeats` more that ask again for a key queried a few
                                   `min_gap`        slots before (within `window`), each followed by its value
                                   tokens

A query is a key seen earlier in the sequence; the model must emit its value next.  Its distance is the number of
positions back to the key's most recent earlier occurrence: for a first query it is more than min_gap (the runner
makes min_gap the reach of its stack of windows, layers x (W - 1)), for a repeat at most `window`.  Output is
deterministic: each split comes from Python's random.Random seeded by (seed, split, pairs, length).

Several settings (pairs, length) are trained together and tested apart, as Zoology does: train and valid mix them,
and each setting has its own test subset (recall.json says which).
"""
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence

from ..util.errors import OneLineError
from ..util.io import install_dir, temp_dir_beside, write_atomic
from .build import fairseq_preprocess, scrub_log

SPLITS = ("train", "valid", "test")
META = "recall.json"


@dataclass(frozen=True)
class RecallData:
    pairs: int
    length: int
    window: int
    min_gap: int
    keys: int = 64
    values: int = 64
    fillers: int = 8
    train: int = 10000
    valid: int = 200
    test: int = 1000
    seed: int = 1

    @property
    def repeats(self) -> int:
        """Queries asked a second time from close by: the within-window control (none for a window under 2)."""
        return self.pairs // 4 if self.window >= 2 else 0

    @property
    def gap(self) -> int:
        return self.length - 2 * self.pairs - 2 * (self.pairs + self.repeats)

    def check(self) -> None:
        if self.pairs < 1:
            raise OneLineError(f"--pairs: need at least 1 key-value pair, got {self.pairs}")
        if self.keys < self.pairs:
            raise OneLineError(f"--pairs: {self.pairs} distinct keys need a key vocabulary of at least that many "
                               f"(it has {self.keys})")
        if self.gap < self.min_gap:
            raise OneLineError(f"--lengths: {self.length} tokens leave {self.gap} filler tokens between {self.pairs} "
                               f"pairs and their {self.pairs + self.repeats} queries, fewer than the {self.min_gap} "
                               f"that put the pairs out of the window's reach; give longer sequences or fewer pairs")
        for split in SPLITS:
            if getattr(self, split) < 1:
                raise OneLineError(f"--{split}: need at least 1 sequence, got {getattr(self, split)}")


def symbols(spec: RecallData) -> List[str]:
    return ([f"k{i}" for i in range(spec.keys)] + [f"v{i}" for i in range(spec.values)] +
            [f"x{i}" for i in range(spec.fillers)])


def sequence(rng: random.Random, spec: RecallData) -> List[str]:
    keys = rng.sample(range(spec.keys), spec.pairs)
    value = {k: rng.randrange(spec.values) for k in keys}
    out = []
    for k in keys:
        out += [f"k{k}", f"v{value[k]}"]
    out += [f"x{rng.randrange(spec.fillers)}" for _ in range(spec.gap)]
    order = rng.sample(keys, len(keys))
    slots = len(keys) + spec.repeats
    again = set(rng.sample(range(1, slots), spec.repeats)) if spec.repeats else set()
    asked: List[int] = []
    for j in range(slots):
        if j in again:  # a key asked in one of the last window // 2 slots: at most `window` positions back
            k = asked[rng.randrange(max(0, j - spec.window // 2), j)]
        else:
            k = order.pop()
        asked.append(k)
        out += [f"k{k}", f"v{value[k]}"]
    assert len(out) == spec.length
    return out


def name(spec: RecallData) -> str:
    return f"pairs{spec.pairs}-len{spec.length}"


def name_of(recorded: Dict) -> str:
    """name() of a setting as recall.json records it"""
    return f"pairs{recorded['pairs']}-len{recorded['length']}"


def write_raw(raw: str, specs: Sequence[RecallData]) -> Dict[str, str]:
    """train.txt and valid.txt mix every setting (shuffled by fairseq's batching); each setting gets its own test
    file.  Returns {setting name: test file}."""
    os.makedirs(raw, exist_ok=True)
    tests = {}
    for split in SPLITS:
        for spec in specs:
            rng = random.Random(f"kvattn-recall:{spec.seed}:{split}:{spec.pairs}:{spec.length}")
            path = os.path.join(raw, f"{split}.{name(spec)}.txt" if split == "test" else f"{split}.txt")
            with open(path, "a", encoding="utf-8") as f:
                for _ in range(getattr(spec, split)):
                    f.write(" ".join(sequence(rng, spec)) + "\n")
            if split == "test":
                tests[name(spec)] = path
    with open(os.path.join(raw, "dict.txt"), "w", encoding="utf-8") as f:
        # every symbol in a fixed order: an index never depends on the data
        f.writelines(f"{s} 1\n" for s in symbols(specs[0]))
    return tests


def settings(specs: Sequence[RecallData]) -> Dict:
    """What recall.json records: every setting, and which binarized test subset holds it (fairseq-preprocess names
    the test files test, test1, test2, ... in order)."""
    shared = {k: getattr(specs[0], k) for k in ("window", "min_gap", "keys", "values", "fillers", "seed")}
    return dict(shared, settings=[dict(asdict(s), repeats=s.repeats, gap=s.gap) for s in specs],
                test_subsets={name(s): "test" + (str(i) if i else "") for i, s in enumerate(specs)},
                source="multi-query associative recall after Arora et al. 2023 (Zoology, arXiv 2312.04927)")


def read_settings(out: str) -> Dict:
    path = os.path.join(out, META)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise OneLineError(f"--data: {path} is missing or unreadable ({e}); make the data with "
                           f"python -m kvattn_fairseq recall") from None


def generate(out: str, specs: Sequence[RecallData]) -> str:
    """OUT/raw, OUT/data-bin and OUT/recall.json for one or more settings (trained together, tested apart), built
    beside OUT and renamed into place; returns OUT/data-bin.  An OUT made with the same settings is kept; other
    settings are refused (the caller removes it first)."""
    for spec in specs:
        spec.check()
    shared = {(s.window, s.min_gap, s.keys, s.values, s.fillers, s.seed) for s in specs}
    if len(shared) != 1 or len({name(s) for s in specs}) != len(specs):
        raise ValueError("settings trained together share their window, vocabularies and seed, and differ in size")
    out = os.path.abspath(out)
    if os.path.isfile(os.path.join(out, META)):
        if read_settings(out) != json.loads(json.dumps(settings(specs))):
            raise OneLineError(f"{out} holds recall data made with other settings; pass --force to remake it")
        return os.path.join(out, "data-bin")
    tmp = temp_dir_beside(out)
    try:
        raw = os.path.join(tmp, "raw")
        tests = write_raw(raw, specs)
        fairseq_preprocess(["--only-source", "--srcdict", os.path.join(raw, "dict.txt"),
                            "--trainpref", os.path.join(raw, "train.txt"), "--validpref", os.path.join(raw, "valid.txt"),
                            "--testpref", ",".join(tests[name(s)] for s in specs),
                            "--destdir", os.path.join(tmp, "data-bin"), "--workers", "1"])
        scrub_log(os.path.join(tmp, "data-bin", "preprocess.log"), tmp)
        write_atomic(os.path.join(tmp, META), json.dumps(settings(specs), indent=1, sort_keys=True) + "\n")
        install_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.path.join(out, "data-bin")
