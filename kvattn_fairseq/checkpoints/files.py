"""Checkpoint files that survive an interrupt at any moment, and a resume that gets past a damaged one: what the
files hold and which one a resume should use (patches/atomic_checkpoints.py hooks it into fairseq).

fairseq saves `checkpoint_E_U.pt` through a temporary name, but then *copies* it onto `checkpoint_last.pt` and
`checkpoint_best.pt` in place: a kill or Ctrl-C during that copy leaves a truncated checkpoint_last.pt, and the
next run of the same command dies on it ("failed finding central directory") although the intact checkpoint it was
copied from sits beside it.  Here every checkpoint write and copy goes through a temporary file in the same
directory that is fsynced and renamed into place (util.io.write_atomic).  A resume uses an intact checkpoint_last.pt
as fairseq does; when it is unreadable or missing, the run continues from the readable checkpoint in --save-dir
that holds the most updates, saying so in one line (or refuses, naming the file, when none is readable).  The
choice is made from what the files hold, never from their modification times (a copy of the directory resets
those).
"""
import os
import re
import shutil
import zipfile
from typing import List, Optional, Tuple

from ..util.errors import OneLineError
from ..util.io import write_atomic


def copy_atomic(src: str, dst: str) -> None:
    write_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))


def unreadable(path: str) -> Optional[str]:
    """Why torch could not load `path` (cheaply: a torch zip checkpoint must have its central directory and a
    pickle), or None if it looks whole."""
    try:
        with zipfile.ZipFile(path) as z:
            if not any(name.endswith("data.pkl") for name in z.namelist()):
                return "not a torch checkpoint (no data.pkl)"
        return None
    except FileNotFoundError:
        return "missing"
    except zipfile.BadZipFile:
        pass
    except OSError as e:
        return e.strerror or str(e)
    import torch  # not a zip file: a legacy (pre-1.6) checkpoint, or garbage; only loading it tells

    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return None
    except Exception as e:  # noqa: BLE001
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


# what fairseq-train writes into --save-dir: checkpoints (a suffix for sharded and model-parallel ones), crash.pt,
# and the temporaries of fairseq's and this module's writes
SAVED = re.compile(r"^checkpoint(\d+|_\d+_\d+|_last|_best|\.best_.+)(-shard\d+|-model_part-\d+)?\.pt$")
TEMPORARY = (re.compile(r"^\.checkpoint.*\.pt\..*\.tmp$"), re.compile(r"^checkpoint.*\.pt\.tmp$"))


def written_by_fairseq_train(name: str) -> bool:
    """Whether `name` is one fairseq-train gives a file in its --save-dir (a user's checkpoint_teacher.pt is not)."""
    return bool(SAVED.match(name)) or name == "crash.pt" or any(t.match(name) for t in TEMPORARY)


def numbered_checkpoints(save_dir: str, suffix: str = "") -> List[str]:
    """checkpoint<E>.pt and checkpoint_<E>_<U>.pt in `save_dir`, sorted by name."""
    pattern = re.compile(r"^checkpoint(\d+|_\d+_\d+)" + re.escape(suffix) + r"\.pt$")
    try:
        names = [n for n in os.listdir(save_dir) if pattern.match(n)]
    except FileNotFoundError:
        return []
    return [os.path.join(save_dir, n) for n in sorted(names)]


def read(path: str) -> dict:
    """torch.load(weights_only=True) on the CPU, memory-mapped where the file allows it (only what is used gets read
    into memory); raises what torch raises."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):  # an old (non-zip) checkpoint cannot be mapped
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def updates(state) -> int:
    """The number of updates a loaded checkpoint holds."""
    history = (state.get("optimizer_history") if isinstance(state, dict) else None) or [{}]
    return int((history[-1] if isinstance(history[-1], dict) else {}).get("num_updates", 0) or 0)


def updates_held(path: str) -> Tuple[Optional[int], Optional[str]]:
    """(the number of updates the checkpoint holds, None) or (None, why it cannot be read)."""
    why = unreadable(path)
    if why is not None:
        return None, why
    try:
        return updates(read(path)), None
    except Exception as e:  # noqa: BLE001
        return None, (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def resume_choice(save_dir: str, suffix: str = "") -> Tuple[Optional[str], str]:
    """(the checkpoint to resume from instead of checkpoint_last.pt, why) or (None, "") when fairseq's own choice
    stands (checkpoint_last.pt is intact, or nothing was saved yet).  The replacement is the readable checkpoint
    holding the most updates.  Raises OneLineError naming checkpoint_last.pt when it is unreadable and nothing else
    is readable."""
    last = os.path.join(save_dir, f"checkpoint_last{suffix}.pt")
    last_exists = os.path.lexists(last)
    if last_exists and unreadable(last) is None:
        return None, ""
    numbered = numbered_checkpoints(save_dir, suffix)
    if not last_exists and not numbered:
        return None, ""
    why_last = unreadable(last) if last_exists else "missing"
    readable, skipped = [], []
    for path in numbered:
        updates, why = updates_held(path)
        if why is None:
            readable.append((updates, path))
        else:
            skipped.append(f"{os.path.basename(path)} ({why})")
    if readable:
        updates, path = max(readable)
        where = "missing" if why_last == "missing" else f"unreadable: {why_last}"
        return path, f"{os.path.basename(last)} is {where}; {os.path.basename(path)} holds the most updates ({updates})"
    if not last_exists:
        return None, ""  # nothing readable at all and no checkpoint_last: fairseq starts afresh, as it would
    others = f"; also unreadable: {', '.join(skipped)}" if skipped else ""
    raise OneLineError(f"{last} is unreadable ({why_last}) and no other checkpoint in {save_dir} is readable"
                       f"{others}: move it away to start training afresh, or pass --restore-file FILE")


def remove_stale_temporaries(save_dir: str) -> None:
    """Temporary files of writes that a kill interrupted (ours and fairseq's own `.tmp`): never a checkpoint."""
    try:
        names = os.listdir(save_dir)
    except FileNotFoundError:
        return
    for name in names:
        if any(t.match(name) for t in TEMPORARY):
            try:
                os.unlink(os.path.join(save_dir, name))
            except FileNotFoundError:
                pass
