"""The steps experiments are made of (run/spine.py runs them): prepared data, a fairseq-train run, an evaluation,
a table.  A spec (run/specs/) builds its list of steps from these."""
import glob
import json
import os
import re
import shlex
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from ..checkpoints.files import written_by_fairseq_train
from ..evaluate.results import TRAIN_RECORD
from ..util import proc
from ..util.errors import OneLineError
from ..util.io import add_made, adopt_writes, read_json, tracking_writes, write_atomic
from .progress import Progress
from .spine import Context, Step, in_process, now_utc

SYNTHETIC_TINY = dict(train=300, valid=30, test=30, min_len=8, max_len=8)


def data_step(key: str, *, raw: Optional[str] = None, tiny: bool = False, **options: Any) -> Step:
    """Prepared data under data/KEY: a data set of data.DATASETS (from --raw, the bundled fixtures with --tiny, or
    downloaded), or `synthetic-<task>[-len<L>]` (the Key-Value Transformer's tasks, sequences of length L)."""
    if key.startswith("synthetic-"):
        return _synthetic_step(key, tiny)
    from ..data import DATASETS

    dataset = DATASETS[key]
    settings = {"dataset": key, "tiny": tiny, "options": dataset.options(**options)}

    def run(ctx: Context) -> None:
        source = raw
        if tiny and not raw:  # the fixtures in the published formats stand in for the downloads
            source = os.path.join(ctx.work, "fixtures", key)
            if not os.path.isdir(source):
                dataset.write_fixtures(source)
        dataset.prepare(ctx.out, raw=source, tiny=tiny, force=True, **options)

    by_hand = ["python", "-m", "kvattn_fairseq", dataset.load().PROG, "--out", f"data/{key}"] + (["--raw", raw] if raw else ["--raw", f"fixtures/{key}"] if tiny else []) + \
        (["--tiny"] if tiny else [])
    return Step(f"data/{key}", f"data/{key}", settings, in_process(run, f"data {key}"), command=proc.shell(by_hand),
                sources={"--raw": os.path.abspath(raw)} if raw else {})


def _synthetic_step(key: str, tiny: bool) -> Step:
    from ..data import synthetic

    task, _, length = key.split("-", 1)[1].partition("-len")
    sizes = dict(SYNTHETIC_TINY) if tiny else dict(min_len=int(length), max_len=int(length)) if length else {}

    def run(ctx: Context) -> None:
        synthetic.generate(ctx.out, task, force=True, **sizes)

    by_hand = ["python", "-m", "kvattn_fairseq", "synthetic", "--task", task, "--out", f"data/{key}"] + \
        [f"--{k.replace('_', '-')}={v}" for k, v in sizes.items()]
    return Step(f"data/{key}", f"data/{key}", synthetic.settings(task, **sizes),
                in_process(run, f"data {key}"), command=proc.shell(by_hand))


def train_step(name: str, out: str, command, settings: Dict[str, Any], *, needs: Sequence[str] = (),
               check_data: Optional[Callable[[str], None]] = None, data_step_name: Optional[str] = None,
               sources: Optional[Dict[str, str]] = None) -> Step:
    """A fairseq-train run into OUT (its --save-dir), continued from checkpoint_last.pt when interrupted.  `command`
    is a run/train.Command (argv, notes, check()); the run's record is also written beside its checkpoints
    (kvattn-train.json), where an evaluation of them finds it."""
    def run(ctx: Context) -> None:
        if check_data is not None and data_step_name:
            check_data(ctx.inputs[data_step_name])
        os.makedirs(ctx.out, exist_ok=True)
        adopt_writes(ctx.out, written_by_fairseq_train)  # a killed run's checkpoints are this tool's too
        record_path = os.path.join(ctx.out, TRAIN_RECORD)
        record = read_json(record_path) or {"settings": settings, "started": now_utc(), "finished": None}
        add_made(ctx.out, [TRAIN_RECORD])  # to what it made before, a resumed run's included
        write_atomic(record_path, json.dumps(record, indent=2) + "\n")
        for note in command.notes:
            ctx.say(f"{ctx.step.name}: # {note}")
        progress = Progress(ctx.say, ctx.step.name, command.argv)  # the terminal's view; the log gets everything
        with tracking_writes(ctx.out, written_by_fairseq_train):  # the marker names each file fairseq-train makes
            proc.run(command.argv, ctx.log, label=ctx.step.name, append=True, keep_output=False, echo=progress)
        progress.finish()
        record["finished"] = now_utc()
        write_atomic(record_path, json.dumps(record, indent=2) + "\n")

    return Step(name, out, settings, run, needs=tuple(needs), command=command.shell(), resumable=True,
                check=command.check, sources=dict(sources or {}), concurrent=True)


def evaluate_step(name: str, out: str, evaluator: str, *, data: Step, train: Step, checkpoint: Optional[str],
                  options: Mapping[str, Any], label: str, table: Optional[str] = None) -> Step:
    """The evaluator `evaluator` (evaluate/registry.py) on the checkpoint `checkpoint` of the training step `train`
    (None: the step's output is the checkpoint, e.g. a conversion's), over the data of step `data`: a results file
    (its "training" field: the run that made the checkpoint).  `checkpoint` is a file name in the run's directory,
    or a pattern that must match exactly one there (fairseq names an interval checkpoint by epoch and update:
    checkpoint_*_300.pt)."""
    from ..evaluate.registry import evaluate, options as evaluator_options

    settings = {"evaluator": evaluator, "checkpoint": checkpoint, "options": dict(options)}

    def run(ctx: Context) -> None:
        a = evaluator_options(evaluator, data=ctx.inputs[data.name], out=ctx.out, name=label, table=table,
                              checkpoint=checkpoint_file(ctx.inputs[train.name], checkpoint), **options)
        evaluate(a)

    extra = list(options.get("extra", ()))
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in options.items()
             if k != "extra" and v is not None and v is not False]
    by_hand = ["python", "-m", "kvattn_fairseq", "evaluate", evaluator, "--data", data.out, "--checkpoint",
               _within(train.out, checkpoint), "--out", out, "--name", label] + \
        (["--table", table] if table else []) + flags + (["--", *extra] if extra else [])
    command = proc.shell(by_hand)
    if checkpoint and _is_pattern(checkpoint):  # left for the shell to expand
        path = os.path.join(train.out, checkpoint)
        command = command.replace(shlex.quote(path), "".join(
            p if p in "*?" else shlex.quote(p) for p in re.split(r"([*?])", path) if p))
    return Step(name, out, settings, in_process(run, name), needs=(data.name, train.name), command=command)


def checkpoint_file(directory: str, name: Optional[str]) -> str:
    """`name` in a training run's directory (None: the directory is the checkpoint); a pattern (* and ?) must match
    exactly one file there."""
    if not name or not _is_pattern(name):
        return _within(directory, name)
    found = sorted(glob.glob(os.path.join(glob.escape(directory), name)))
    if len(found) != 1:
        raise OneLineError(f"{os.path.join(directory, name)}: {len(found) or 'no'} checkpoint(s) match, one expected "
                           f"(see the run's training log)")
    return found[0]


def _is_pattern(name: str) -> bool:
    return "*" in name or "?" in name


def _within(output: str, checkpoint: Optional[str]) -> str:
    return os.path.join(output, checkpoint) if checkpoint else output
