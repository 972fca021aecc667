"""Average the parameters of several fairseq checkpoints (fairseq's scripts/ are not in its wheel).

    python -m kvattn_fairseq average-checkpoints --inputs CKPT_DIR --num-epoch-checkpoints 10 --output avg.pt
    python -m kvattn_fairseq average-checkpoints --inputs CKPT_DIR --num-update-checkpoints 5 --output avg.pt
    python -m kvattn_fairseq average-checkpoints --inputs a.pt b.pt c.pt --output avg.pt

With a directory, the last N epoch checkpoints (checkpoint<EPOCH>.pt) or update checkpoints
(checkpoint_<EPOCH>_<UPDATE>.pt, written with --save-interval-updates) are averaged; --upper-bound excludes later
ones.  Checkpoints are loaded with torch.load(weights_only=True) (the plugin allow-lists the globals fairseq
checkpoints hold, so nothing else in a file can run on load).  Floating-point parameters are summed in fp32 (fp64
ones in fp64) and cast back to their dtype; other tensors (counters, version buffers) are taken from the last
checkpoint.  Every non-model field (cfg, extra_state, optimizer history and state) is the last checkpoint's; the
full paths of the files averaged are recorded under "kvattn_averaged_from".  All checkpoints must hold the same
parameter names and shapes and the same attention plan (plan.py: softmax and linear weights have the
same shapes, but their mean is neither model).  The output is written atomically, with an ordinary file's mode; it
must be a regular file or absent, never one of the inputs (links resolved), and an existing one is replaced only
with --force.
"""
import argparse
import collections
import os
import re
from typing import Dict, List, Optional, Sequence

import torch

from ..util.cli import ArgumentParser, run_main
from ..util.errors import OneLineError
from ..util.io import check_output_file, write_atomic
from .files import read
from .plan import KEY, checkpoint_record, describe, difference

EPOCH_RE = re.compile(r"^checkpoint(\d+)\.pt$")
UPDATE_RE = re.compile(r"^checkpoint_\d+_(\d+)\.pt$")


def last_checkpoints(directory: str, n: int, by: str, upper_bound: Optional[int] = None) -> List[str]:
    """The last `n` epoch (by="epoch") or update (by="update") checkpoints in `directory`, oldest first."""
    pattern = EPOCH_RE if by == "epoch" else UPDATE_RE
    found = []
    for name in os.listdir(directory):
        m = pattern.match(name)
        if m and (upper_bound is None or int(m.group(1)) <= upper_bound):
            found.append((int(m.group(1)), name))
    found.sort()
    if len(found) < n:
        what = "checkpoint<EPOCH>.pt" if by == "epoch" else "checkpoint_<EPOCH>_<UPDATE>.pt"
        bound = f" up to {by} {upper_bound}" if upper_bound is not None else ""
        raise OneLineError(f"--inputs {directory}: asked for the last {n} {by} checkpoints but found {len(found)} "
                           f"({what}{bound})")
    return [os.path.join(directory, name) for _, name in found[-n:]]


def load_checkpoint(path: str, what: str = "checkpoint", require_model: bool = True) -> Dict:
    """A checkpoint loaded on the CPU with torch.load(weights_only=True), memory-mapped where the file allows it;
    `what` names it in the one-line error (e.g. the flag that gave it)."""
    if not os.path.isfile(path):
        raise OneLineError(f"{what} not found: {path}")
    try:
        state = read(path)  # memory-mapped: only what is averaged gets read into memory
    except Exception as e:  # noqa: BLE001  (pickle errors, truncated zip files, ...: one line, no traceback)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OneLineError(f"{what} {path}: cannot load it: {first}") from None
    if require_model and (not isinstance(state, dict) or not isinstance(state.get("model"), dict)):
        raise OneLineError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    return state


def average(paths: Sequence[str]) -> Dict:
    """The averaged checkpoint: mean of the floating-point parameters, everything else from the last file."""
    if not paths:
        raise OneLineError("no checkpoints to average")
    sums: Dict[str, torch.Tensor] = collections.OrderedDict()
    dtypes: Dict[str, torch.dtype] = {}
    shapes: Dict[str, torch.Size] = {}
    reference_path = None
    reference_plan = None
    last = None
    for path in paths:
        state = load_checkpoint(path)
        model = state["model"]
        plan = checkpoint_record(state)
        if reference_path is None:
            reference_path, reference_plan = path, plan
        elif (difference(reference_plan, plan) if reference_plan and plan else plan != reference_plan):
            diff = difference(reference_plan, plan) if reference_plan and plan else \
                f"{describe(reference_plan)} against {describe(plan)}"
            raise OneLineError(f"--inputs: {path} and {reference_path} were trained with different attention plans "
                               f"({diff.replace('in the checkpoint', 'in the first').replace(' here', ' in this one')}"
                               f"): checkpoints of different models cannot be averaged")
        if reference_path == path:
            for key, value in model.items():
                if not torch.is_tensor(value):
                    raise OneLineError(f"{path}: model entry {key} is not a tensor")
                dtypes[key], shapes[key] = value.dtype, value.shape
                if value.is_floating_point():
                    acc = torch.float64 if value.dtype == torch.float64 else torch.float32
                    sums[key] = value.detach().to(acc).clone()
        else:
            missing = [k for k in dtypes if k not in model]
            extra = [k for k in model if k not in dtypes]
            if missing or extra:
                what = f"lacks {missing[0]}" if missing else f"has an extra parameter {extra[0]}"
                more = len(missing) + len(extra) - 1
                raise OneLineError(f"{path} {what}{f' (and {more} more differences)' if more else ''} compared "
                                   f"with {reference_path}: checkpoints of different models cannot be averaged")
            for key, value in model.items():
                if not torch.is_tensor(value) or value.shape != shapes[key]:
                    shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                    raise OneLineError(f"{path}: parameter {key} has shape {shape}, {reference_path} has "
                                       f"{tuple(shapes[key])}: checkpoints of different models cannot be averaged")
                if key in sums:
                    if not value.is_floating_point():
                        raise OneLineError(f"{path}: parameter {key} is {value.dtype}, {reference_path} has "
                                           f"{dtypes[key]}")
                    sums[key].add_(value.detach().to(sums[key].dtype))
        last = state
    n = len(paths)
    averaged = collections.OrderedDict()
    for key, value in last["model"].items():
        if key in sums:
            averaged[key] = sums[key].div_(n).to(value.dtype)
        else:
            averaged[key] = value
    out = dict(last)
    out["model"] = averaged
    out["kvattn_averaged_from"] = [os.path.abspath(p) for p in paths]
    if reference_plan is not None:
        out[KEY] = reference_plan
    return out


def save_atomic(state: Dict, output: str) -> None:
    write_atomic(output, lambda tmp: torch.save(state, tmp))


def resolve_inputs(inputs: Sequence[str], num_epoch: Optional[int], num_update: Optional[int],
                   upper_bound: Optional[int]) -> List[str]:
    if num_epoch is not None or num_update is not None:
        n, by = (num_epoch, "epoch") if num_epoch is not None else (num_update, "update")
        if n < 1:
            raise OneLineError(f"--num-{by}-checkpoints: must be at least 1, got {n}")
        if len(inputs) != 1 or not os.path.isdir(inputs[0]):
            raise OneLineError(f"--num-{by}-checkpoints: --inputs must be one directory, got {' '.join(inputs)}")
        return last_checkpoints(inputs[0], n, by, upper_bound)
    if upper_bound is not None:
        raise OneLineError("--upper-bound: only with --num-epoch-checkpoints or --num-update-checkpoints")
    for path in inputs:
        if os.path.isdir(path):
            raise OneLineError(f"--inputs {path} is a directory: add --num-epoch-checkpoints N or "
                               f"--num-update-checkpoints N, or list checkpoint files")
        if not os.path.isfile(path):
            raise OneLineError(f"--inputs: checkpoint not found: {path}")
    return list(inputs)


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m kvattn_fairseq average-checkpoints", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", nargs="+", required=True, help="checkpoint files, or one directory with --num-*")
    p.add_argument("--output", required=True, help="where the averaged checkpoint goes")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--num-epoch-checkpoints", type=int, metavar="N", help="average the last N epoch checkpoints")
    which.add_argument("--num-update-checkpoints", type=int, metavar="N",
                       help="average the last N update checkpoints")
    p.add_argument("--upper-bound", type=int, metavar="K",
                   help="only checkpoints of epoch (or update) <= K")
    p.add_argument("--force", action="store_true", help="replace --output if it exists")
    a = p.parse_args(argv)

    def body() -> int:
        paths = resolve_inputs(a.inputs, a.num_epoch_checkpoints, a.num_update_checkpoints, a.upper_bound)
        check_output_file(a.output, "--output", [("--inputs", x) for x in paths], force=a.force)
        save_atomic(average(paths), a.output)
        print(f"averaged {len(paths)} checkpoints ({', '.join(os.path.basename(x) for x in paths)}) into "
              f"{a.output}")
        return 0

    return run_main(p.prog, body)

