"""Convert a trained checkpoint, transfer its attention, then finetune: three ordinary fairseq runs.

    scripts/convert.sh --checkpoint IN.pt --data DATA_BIN --out DIR [--transfer-updates N] [--finetune-updates N]
                       [--transfer-lr LR] [--finetune-lr LR] [position and kind flags] [-- fairseq-train flags]

1. `python -m kvattn_fairseq convert` writes DIR/converted.pt with the requested kinds (the position and kind flags,
   e.g. --decoder-attention-type memsizer*5,softmax).
2. `fairseq-train --criterion attention_transfer --teacher-checkpoint IN.pt` trains only the new attention modules
   to reproduce the ones they replaced (DIR/transfer/; skipped with --transfer-updates 0).
3. `fairseq-train --finetune-from-model` trains the whole model with the task's usual criterion (DIR/finetune/;
   label-smoothed cross-entropy 0.1 for translation, cross-entropy for language modelling).
Both runs take the model flags of converted.pt, the task and its data settings from IN.pt (source/target
language, tokens per sample, sample break mode, max tokens or batch size), Adam (0.9, 0.98) with an inverse-sqrt
schedule warming up over the first tenth of the run, then the flags after `--` (a later flag wins).  Every command
is printed and recorded in DIR/chain.json with the settings; a rerun with the same settings skips the conversion
when DIR/converted.pt exists and resumes each fairseq-train from its checkpoint_last.pt.  A rerun with other
settings is refused in one line, or with --force redone from the start, removing only the files the chain made (a
file of yours in DIR stops it, named).  The result is DIR/finetune/checkpoint_last.pt.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

from ..util import proc
from ..util.cli import ArgumentParser, run_main, split_passthrough
from ..util.errors import OneLineError
from ..util.io import (add_made, check_output_dir, check_replaceable, made_entries, mark, read_json,
                      tracking_writes, write_atomic)
from . import config

CHAIN = "chain.json"
STAGES = ("transfer", "finetune")
MADE = ("converted.pt", *STAGES, *(f"{s}{x}.log" for s in STAGES for x in ("", ".failed")), CHAIN)


tool = proc.fairseq_tool  # under this name for recovery.py


def run(cmd: Sequence[str], log_path: str, record: List[Dict]) -> str:
    """Run a command, recorded in `record`, its output appended to log_path; a failure is StepFailed, one line
    with the tool's last error and the log."""
    cmd = [str(c) for c in cmd]
    record.append({"cmd": cmd, "log": os.path.basename(log_path)})
    print("+ " + proc.shell(cmd), flush=True)
    return proc.run(cmd, log_path, append=True)


def finished(save_dir: str, updates: int) -> bool:
    """True when save_dir/checkpoint_last.pt already holds `updates` updates (a rerun then starts nothing)."""
    from .files import read, updates as held

    path = os.path.join(save_dir, "checkpoint_last.pt")
    if not os.path.exists(path):
        return False
    try:
        return held(read(path)) >= updates
    except Exception:  # noqa: BLE001  (unreadable: let fairseq-train deal with it)
        return False


def task_flags(checkpoint: str) -> List[str]:
    """--task and the data settings the checkpoint was trained with, so that both runs see its data the same way."""
    from .convert import load_source

    state, _, _ = load_source(checkpoint)
    task, dataset = config.section(state, "task"), config.section(state, "dataset")
    name = config.value(task, "_name") or config.value(task, "task")
    flags = ["--task", name] if name else []
    for section, keys in ((task, ("source_lang", "target_lang", "tokens_per_sample", "sample_break_mode")),
                          (dataset, ("max_tokens", "batch_size"))):
        for key in keys:
            value = config.value(section, key)
            if value is not None:
                flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def criterion_flags(task: Optional[str]) -> List[str]:
    if task == "language_modeling":
        return ["--criterion", "cross_entropy"]
    return ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]


def schedule(updates: int, lr: str) -> List[str]:
    return ["--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", lr, "--lr-scheduler", "inverse_sqrt",
            "--warmup-updates", str(max(1, updates // 10)), "--max-update", str(updates)]


def chain_settings(checkpoint: str, data: str, convert_flags: Sequence[str], transfer_updates: int,
                   finetune_updates: int, transfer_lr: str, finetune_lr: str, extra: Sequence[str],
                   converted: Optional[str]) -> Dict:
    """What a chain's output depends on: recorded in chain.json, compared on a rerun."""
    return {"checkpoint": os.path.realpath(checkpoint), "data": os.path.realpath(data),
            "convert_flags": [str(f) for f in convert_flags], "transfer_updates": transfer_updates,
            "finetune_updates": finetune_updates, "transfer_lr": str(transfer_lr), "finetune_lr": str(finetune_lr),
            "extra": [str(f) for f in extra], "converted": os.path.realpath(converted) if converted else None}


def _recorded(out: str) -> Optional[Dict]:
    data = read_json(os.path.join(out, CHAIN))
    return data.get("settings") if isinstance(data, dict) else None


def prepare_out(out: str, settings: Dict, force: bool) -> None:
    """Refuse (or with --force clear) an --out made with other settings, before anything is written."""
    import shutil

    from ..util.settings import differences

    check_output_dir(out, "--out")
    present = [e for e in MADE if os.path.lexists(os.path.join(out, e))]
    recorded = _recorded(out)
    changed = differences(recorded, settings) if recorded is not None else "no record of them" if present else ""
    if not changed:
        return
    if not force:
        raise OneLineError(f"--out {out} was made with other settings ({changed}); pass --force to redo the chain "
                           f"(only its own files are removed), or choose another --out")
    foreign = [e for e in present if e not in made_entries(out)]
    if foreign:
        raise OneLineError(f"--force: {out} holds {', '.join(foreign)}, which this tool did not record making; move "
                           f"them away or choose another --out (nothing was removed)")
    for stage in STAGES:  # a fairseq-train save directory: only when it holds nothing but what the runs made
        if os.path.lexists(os.path.join(out, stage)):
            check_replaceable(os.path.join(out, stage), "--force")
    print(f"--out {out} was made with other settings ({changed}); --force: redoing the chain", flush=True)
    for entry in present:
        path = os.path.join(out, entry)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)


def chain(checkpoint: str, data: str, out: str, convert_flags: Sequence[str], transfer_updates: int,
          finetune_updates: int, transfer_lr: str = "1e-3", finetune_lr: str = "5e-4",
          extra: Sequence[str] = (), converted: Optional[str] = None, force: bool = False) -> str:
    """The three stages; `converted` reuses an existing conversion of `checkpoint` with the same flags."""
    from ..util.paths import USER_DIR
    from .convert import convert_file, load_source, model_flags, parser
    from .files import written_by_fairseq_train

    data_flags = task_flags(checkpoint)  # a bad --checkpoint stops here, before anything is written
    settings = chain_settings(checkpoint, data, convert_flags, transfer_updates, finetune_updates, transfer_lr,
                              finetune_lr, extra, converted)
    prepare_out(out, settings, force)
    os.makedirs(out, exist_ok=True)
    record: List[Dict] = []  # every stage's command, run now or by an earlier run

    def save_record(result: Optional[str]) -> None:
        add_made(out, [CHAIN])
        write_atomic(os.path.join(out, CHAIN), json.dumps({"checkpoint": checkpoint, "data": data, "result": result,
                                                           "settings": settings, "commands": record}, indent=1))

    save_record(None)  # the settings first: a rerun after an interruption compares them

    def stage(name: str, cmd: List, updates: int) -> str:
        save, log = os.path.join(out, name), os.path.join(out, f"{name}.log")
        if finished(save, updates):
            record.append({"cmd": [str(c) for c in cmd], "log": os.path.basename(log), "skipped": "already done"})
        else:
            add_made(out, [name, os.path.basename(log), os.path.basename(proc.failed_log(log))])
            if not os.path.isdir(save):
                os.makedirs(save)
                mark(save, [])
            with tracking_writes(save, written_by_fairseq_train):
                run(cmd, log, record)
        return os.path.join(save, "checkpoint_last.pt")

    if converted is None:
        converted = os.path.join(out, "converted.pt")
        cmd = [sys.executable, "-m", "kvattn_fairseq", "convert", "--checkpoint", checkpoint, "--out", converted,
               *convert_flags]
        record.append({"cmd": [str(c) for c in cmd]})
        if os.path.exists(converted):
            record[-1]["skipped"] = "already done"
        else:  # in this process: the same checks and output as the command
            add_made(out, ["converted.pt"])
            done = convert_file(checkpoint, converted, parser().parse_args(cmd[4:]))
            print(f"converted {checkpoint} -> {converted}: " + "; ".join(
                f"{p} {i}: {a} -> {b}" for p, i, a, b, _ in done["sites"]), flush=True)
    base = [*tool("fairseq-train"), data, "--user-dir", USER_DIR, *model_flags(load_source(converted)[1]),
            *data_flags, "--no-epoch-checkpoints", "--log-format", "simple"]
    task = data_flags[1] if data_flags[:1] == ["--task"] else None
    result = converted
    if transfer_updates > 0:
        result = stage("transfer", [*base, "--finetune-from-model", converted, "--save-dir",
                                    os.path.join(out, "transfer"), "--criterion", "attention_transfer",
                                    "--teacher-checkpoint", checkpoint, *schedule(transfer_updates, transfer_lr),
                                    *extra], transfer_updates)
    if finetune_updates > 0:
        result = stage("finetune", [*base, "--finetune-from-model", result, "--save-dir",
                                    os.path.join(out, "finetune"), *criterion_flags(task),
                                    *schedule(finetune_updates, finetune_lr), *extra], finetune_updates)
    save_record(result)
    return result


def main(argv=None) -> int:
    from ..modules.registry import POSITIONS, add_attention_args

    argv, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    p = ArgumentParser(prog=os.environ.get("KVATTN_CHAIN_PROG", "scripts/convert.sh"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the trained model to convert (and the transfer's teacher)")
    p.add_argument("--data", required=True, help="fairseq-preprocess output for the two training runs")
    p.add_argument("--out", required=True, help="directory for converted.pt, transfer/, finetune/ and the logs")
    p.add_argument("--transfer-updates", type=int, default=500, help="attention-transfer updates (0: none)")
    p.add_argument("--finetune-updates", type=int, default=2000, help="finetuning updates")
    p.add_argument("--transfer-lr", default="1e-3")
    p.add_argument("--finetune-lr", default="5e-4")
    p.add_argument("--force", action="store_true", help="redo a chain whose --out was made with other settings "
                                                        "(only the chain's own files are removed)")
    add_attention_args(p, POSITIONS)
    a = p.parse_args(argv)
    if a.transfer_updates < 0 or a.finetune_updates < 0:
        p.error("--transfer-updates/--finetune-updates: expected 0 or more")
    if not os.path.isdir(a.data):
        p.error(f"--data: no such directory: {a.data}")
    convert_flags = []
    for action in p._actions:
        value = getattr(a, action.dest, None)
        if action.option_strings and value is not None and action.dest not in (
                "help", "checkpoint", "data", "out", "transfer_updates", "finetune_updates", "transfer_lr",
                "finetune_lr", "force"):
            convert_flags += [action.option_strings[-1], str(value) if not isinstance(value, (list, tuple)) else
                              ",".join(map(str, value))]

    def body() -> int:
        print(chain(a.checkpoint, a.data, a.out, convert_flags, a.transfer_updates, a.finetune_updates, a.transfer_lr,
                    a.finetune_lr, extra, force=a.force))
        return 0

    return run_main(p.prog, body)

