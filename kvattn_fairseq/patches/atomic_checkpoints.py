"""fairseq copies each saved checkpoint onto checkpoint_last.pt / checkpoint_best.pt in place, so an interrupt
during the copy leaves a truncated checkpoint that the next run dies on: every checkpoint write and copy is atomic,
and a resume gets past a damaged checkpoint_last.pt (the files' side is checkpoints/files.py).  Wrapper factories
for patches.PATCHES."""
import copy
import logging

from ..checkpoints.files import copy_atomic, remove_stale_temporaries, resume_choice
from ..util.io import write_atomic

logger = logging.getLogger(__name__)


def atomic_copy(copy_file):
    """fairseq.file_io.PathManager.copy"""
    from fairseq.file_io import PathManager

    def copy_checkpoint(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if PathManager.path_requires_pathmanager(dst_path) or PathManager.path_requires_pathmanager(src_path):
            return copy_file(src_path, dst_path, overwrite)
        copy_atomic(src_path, dst_path)
        return True

    return copy_checkpoint


def atomic_save(persistent_save):
    """fairseq.checkpoint_utils.torch_persistent_save"""
    from fairseq import checkpoint_utils
    from fairseq.file_io import PathManager

    def torch_persistent_save(obj, filename, async_write: bool = False):
        if async_write or not isinstance(filename, str) or PathManager.path_requires_pathmanager(filename):
            return persistent_save(obj, filename, async_write)

        def write(tmp):
            with open(tmp, "wb") as f:
                checkpoint_utils._torch_persistent_save(obj, f)

        write_atomic(filename, write)

    return torch_persistent_save


def resume_past_damage(load_checkpoint):
    """fairseq.checkpoint_utils.load_checkpoint"""
    def load(cfg, trainer, **passthrough_args):
        suffix = getattr(trainer, "checkpoint_suffix", "") or ""
        if cfg.restore_file == "checkpoint_last.pt" and not cfg.no_save and not cfg.no_last_checkpoints:
            remove_stale_temporaries(cfg.save_dir)
            path, why = resume_choice(cfg.save_dir, suffix)
            if path is not None:
                logger.warning(f"{why}: resuming from {path}, the readable checkpoint in {cfg.save_dir} with the "
                               f"most updates")
                from omegaconf import open_dict

                cfg = copy.deepcopy(cfg)
                with open_dict(cfg):
                    # fairseq adds the suffix (sharded models) to a --restore-file itself
                    cfg.restore_file = path[:-len(suffix + ".pt")] + ".pt" if suffix else path
                    cfg.finetune_from_model = None
        return load_checkpoint(cfg, trainer, **passthrough_args)

    return load
