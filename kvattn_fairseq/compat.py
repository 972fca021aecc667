"""Fixes for three fairseq problems on today's stack, applied when the plugin is imported (DESIGN.md §2).

1. torch >= 2.6 loads checkpoints with weights_only=True and fairseq checkpoints hold an argparse.Namespace (the
   legacy model config): allow-list exactly the globals fairseq checkpoints need.  The safety stays on, so a
   checkpoint carrying anything else (say, os.system) is still refused.
2. numpy 2 removed np.compat; fairseq's TokenBlockDataset (--sample-break-mode eos) and LanguagePairDataset still
   use np.compat.long.
3. fairseq main's data_utils.batch_by_size drops the last batch when its size is not a multiple of
   --required-batch-size-multiple (default 8): fairseq-generate silently translates 96 of 100 sentences.
"""
import argparse
import functools
import sys
import types

import numpy as np
import torch

# Globals a fairseq checkpoint may pickle besides tensors and plain containers (the legacy model args).
CHECKPOINT_SAFE_GLOBALS = (argparse.Namespace,)


def allow_fairseq_checkpoint_globals() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no weights_only default to work around
        add(list(CHECKPOINT_SAFE_GLOBALS))


def restore_np_compat() -> None:
    if hasattr(np, "compat"):
        return
    try:
        import numpy.compat  # noqa: F401  (numpy 2.0-2.2 still ship it, just not imported)
        return
    except ImportError:
        pass
    compat = types.ModuleType("numpy.compat")
    compat.long = int
    sys.modules["numpy.compat"] = compat
    np.compat = compat


def _keep_last_batch(batch_by_size):
    @functools.wraps(batch_by_size)
    def wrapper(indices, *args, **kwargs):
        if not isinstance(indices, np.ndarray):
            indices = np.fromiter(indices, dtype=np.int64, count=-1)
        batches = batch_by_size(indices, *args, **kwargs)
        if kwargs.get("fixed_shapes") is not None or len(args) >= 6 and args[5] is not None:
            return batches
        covered = sum(len(b) for b in batches)
        # The batchers cut `indices` into consecutive runs, so the dropped batch is exactly the uncovered tail.
        if covered < len(indices):
            batches = list(batches) + [indices[covered:]]
        return batches

    wrapper.kvattn_keeps_last_batch = True
    return wrapper


def keep_last_batch() -> None:
    from fairseq.data import data_utils

    if not getattr(data_utils.batch_by_size, "kvattn_keeps_last_batch", False):
        data_utils.batch_by_size = _keep_last_batch(data_utils.batch_by_size)


def apply() -> None:
    allow_fairseq_checkpoint_globals()
    restore_np_compat()
    keep_last_batch()
