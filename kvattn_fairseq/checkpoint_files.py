"""Checkpoint files that survive an interrupt at any moment, and a resume that gets past a damaged one.

fairseq saves `checkpoint_E_U.pt` through a temporary name, but then *copies* it onto `checkpoint_last.pt` and
`checkpoint_best.pt` in place: a kill or Ctrl-C during that copy leaves a truncated checkpoint_last.pt, and the
next run of the same command dies on it ("failed finding central directory") although the intact checkpoint it was
copied from sits beside it.  Here every checkpoint write and copy goes through a temporary file in the same
directory that is fsynced and renamed into place (util.io.write_atomic), and a resume whose checkpoint_last.pt is
unreadable, missing or older than a numbered checkpoint continues from the newest readable checkpoint in --save-dir,
saying so in one line (or refuses, naming the file, when none is readable).
"""
import copy
import logging
import os
import re
import shutil
import zipfile
from typing import List, Optional, Tuple

from .util.errors import OneLineError
from .util.io import write_atomic

logger = logging.getLogger(__name__)


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


def numbered_checkpoints(save_dir: str, suffix: str = "") -> List[str]:
    """checkpoint<E>.pt and checkpoint_<E>_<U>.pt in `save_dir`, newest (by modification time) first."""
    pattern = re.compile(r"^checkpoint(\d+|_\d+_\d+)" + re.escape(suffix) + r"\.pt$")
    try:
        names = [n for n in os.listdir(save_dir) if pattern.match(n)]
    except FileNotFoundError:
        return []
    paths = [os.path.join(save_dir, n) for n in names]
    return sorted(paths, key=lambda p: os.stat(p).st_mtime_ns, reverse=True)


def resume_choice(save_dir: str, suffix: str = "") -> Tuple[Optional[str], str]:
    """(the checkpoint to resume from instead of checkpoint_last.pt, why) or (None, "") when fairseq's own choice
    stands (checkpoint_last.pt is whole and newest, or nothing was saved yet).  Raises OneLineError naming
    checkpoint_last.pt when it is unreadable and nothing else is readable."""
    last = os.path.join(save_dir, f"checkpoint_last{suffix}.pt")
    numbered = numbered_checkpoints(save_dir, suffix)
    last_exists = os.path.exists(last)
    if not last_exists and not numbered:
        return None, ""
    why_last = unreadable(last) if last_exists else "missing"
    last_time = os.stat(last).st_mtime_ns if last_exists else -1
    newer = [p for p in numbered if os.stat(p).st_mtime_ns > last_time]
    if why_last is None and not newer:
        return None, ""
    skipped = []
    for path in newer if why_last is None else numbered:
        why = unreadable(path)
        if why is None:
            if why_last is None:
                reason = f"{os.path.basename(last)} is older than {os.path.basename(path)} (a save was interrupted)"
            else:
                reason = f"{os.path.basename(last)} is {why_last if why_last == 'missing' else 'unreadable: ' + why_last}"
            return path, reason
        skipped.append(f"{os.path.basename(path)} ({why})")
    if why_last is None:
        return None, ""
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
        if re.match(r"^\.checkpoint.*\.pt\..*\.tmp$", name) or re.match(r"^checkpoint.*\.pt\.tmp$", name):
            try:
                os.unlink(os.path.join(save_dir, name))
            except FileNotFoundError:
                pass


# --- hooks into fairseq (installed by compat.apply) ---------------------------------------------------------------
def install() -> None:
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    if getattr(checkpoint_utils.load_checkpoint, "kvattn_resumes_safely", False):
        return

    copy_file = PathManager.copy

    def atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if PathManager.path_requires_pathmanager(dst_path) or PathManager.path_requires_pathmanager(src_path):
            return copy_file(src_path, dst_path, overwrite)
        copy_atomic(src_path, dst_path)
        return True

    PathManager.copy = staticmethod(atomic_copy)

    persistent_save = checkpoint_utils.torch_persistent_save

    def torch_persistent_save(obj, filename, async_write: bool = False):
        if async_write or not isinstance(filename, str) or PathManager.path_requires_pathmanager(filename):
            return persistent_save(obj, filename, async_write)

        def write(tmp):
            with open(tmp, "wb") as f:
                checkpoint_utils._torch_persistent_save(obj, f)

        write_atomic(filename, write)

    checkpoint_utils.torch_persistent_save = torch_persistent_save

    load_checkpoint = checkpoint_utils.load_checkpoint

    def load(cfg, trainer, **passthrough_args):
        suffix = getattr(trainer, "checkpoint_suffix", "") or ""
        if cfg.restore_file == "checkpoint_last.pt" and not cfg.no_save and not cfg.no_last_checkpoints:
            remove_stale_temporaries(cfg.save_dir)
            path, why = resume_choice(cfg.save_dir, suffix)
            if path is not None:
                logger.warning(f"{why}; resuming from {path}, the newest readable checkpoint in {cfg.save_dir}")
                from omegaconf import open_dict

                cfg = copy.deepcopy(cfg)
                with open_dict(cfg):
                    # fairseq adds the suffix (sharded models) to a --restore-file itself
                    cfg.restore_file = path[:-len(suffix + ".pt")] + ".pt" if suffix else path
                    cfg.finetune_from_model = None
        return load_checkpoint(cfg, trainer, **passthrough_args)

    load.kvattn_resumes_safely = True
    checkpoint_utils.load_checkpoint = load
