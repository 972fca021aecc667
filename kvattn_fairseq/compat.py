"""Fixes for three fairseq problems on today's stack, applied on import (docs/papers/fairseq-pitfalls.md).

1. torch >= 2.6 loads checkpoints with weights_only=True and fairseq checkpoints hold an argparse.Namespace (the
   legacy model config): allow-list exactly the globals fairseq checkpoints need.  The safety stays on, so a
   checkpoint carrying anything else (say, os.system) is still refused.
2. numpy 2 removed np.compat; fairseq's TokenBlockDataset (--sample-break-mode eos) and LanguagePairDataset still
   use np.compat.long.
3. fairseq main's data_utils.batch_by_size drops the last batch when its size is not a multiple of
   --required-batch-size-multiple (default 8): fairseq-generate silently translates 96 of 100 sentences.
Two more that users hit:
4. A checkpoint that torch refuses (a global outside the allow-list) surfaces as a long pickle error that suggests
   allow-listing the global; it becomes a one-line refusal that names the file and the global.
5. Distributed training on CPU (gloo): fairseq divides by torch.cuda.device_count() to pick a device, defaults to
   the NCCL backend, and hands CPU modules to DistributedDataParallel with device_ids; launched with torchrun,
   CPU workers now get device 0, gloo, and no device_ids.
6. fairseq copies each saved checkpoint onto checkpoint_last.pt / checkpoint_best.pt in place, so an interrupt
   during the copy leaves a truncated checkpoint that the next run dies on: every checkpoint write and copy is
   atomic, and a resume gets past a damaged checkpoint_last.pt (checkpoint_files.py).
7. Weights load into a model of another attention kind whenever the shapes match: checkpoints record their
   attention plan and a load into another plan is refused (checkpoint_plan.py).
8. fairseq-eval-lm silently skips blocks longer than the model's positions; refused instead, with other one-line
   refusals where fairseq's tools would print a traceback (tool_refusals.py).
"""
import argparse
import functools
import logging
import os
import pickle
import re
import sys
import types

import numpy as np
import torch


def _numpy_multiarray():
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed np.core
    return core.multiarray


# Globals a fairseq checkpoint may pickle besides tensors and plain containers: the legacy model args, and the
# numpy arrays and scalars fairseq's metrics keep in extra_state (e.g. --eval-bleu's n-gram counts).  Rebuilding
# an array or scalar from a dtype and raw bytes runs no code; an object array still needs its elements' globals.
_NUMERIC_DTYPES = tuple({type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG"})
CHECKPOINT_SAFE_GLOBALS = (argparse.Namespace, np.ndarray, np.dtype, _numpy_multiarray()._reconstruct,
                           _numpy_multiarray().scalar) + _NUMERIC_DTYPES


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


class CheckpointRefused(pickle.UnpicklingError):
    """A checkpoint needs a global that is not allow-listed; it was not loaded and nothing in it ran."""


def _refuse_clearly(load):
    @functools.wraps(load)
    def wrapper(path, *args, **kwargs):
        try:
            return load(path, *args, **kwargs)
        except pickle.UnpicklingError as e:
            if isinstance(e, CheckpointRefused) or "Weights only load failed" not in str(e):
                raise
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            what = found.group(1) if found else "a global that is not allow-listed"
            raise CheckpointRefused(
                f"refusing to load checkpoint {path}: it references {what}, which fairseq checkpoints do not need "
                f"and which could run code on load; load only checkpoints you trust, and if you do trust this one, "
                f"allow-list that global with torch.serialization.add_safe_globals") from None

    wrapper.kvattn_refuses_clearly = True
    return wrapper


def refuse_unsafe_checkpoints_clearly() -> None:
    from fairseq import checkpoint_utils

    if not getattr(checkpoint_utils.load_checkpoint_to_cpu, "kvattn_refuses_clearly", False):
        checkpoint_utils.load_checkpoint_to_cpu = _refuse_clearly(checkpoint_utils.load_checkpoint_to_cpu)


def distributed_on_cpu() -> None:
    import torch
    from fairseq.distributed import utils as dist_utils
    from fairseq.models import distributed_fairseq_model

    launch_init = dist_utils._infer_torch_distributed_launch_init
    if getattr(launch_init, "kvattn_cpu_aware", False):
        return

    @functools.wraps(launch_init)
    def infer_launch(cfg):
        if torch.cuda.is_available():
            return launch_init(cfg)
        cfg.distributed_init_method = "env://"
        cfg.distributed_world_size = int(os.environ["WORLD_SIZE"])
        cfg.distributed_rank = int(os.environ["RANK"])
        cfg.device_id = 0  # no GPU to pick: every CPU worker uses "device" 0
        cfg.distributed_no_spawn = True

    infer_launch.kvattn_cpu_aware = True
    dist_utils._infer_torch_distributed_launch_init = infer_launch

    init = dist_utils.distributed_init

    @functools.wraps(init)
    def distributed_init(cfg):
        dt = cfg.distributed_training if hasattr(cfg, "distributed_training") else cfg
        if not torch.cuda.is_available() and getattr(dt, "distributed_backend", None) == "nccl":
            logging.getLogger(__name__).warning("no CUDA device: using the gloo backend instead of nccl")
            dt.distributed_backend = "gloo"
        return init(cfg)

    dist_utils.distributed_init = distributed_init

    ddp = distributed_fairseq_model.DistributedDataParallel

    class CPUAwareDDP(ddp):
        def __init__(self, module, *args, **kwargs):
            if next(module.parameters()).device.type == "cpu":  # DDP refuses device_ids for CPU modules
                kwargs.pop("device_ids", None)
                kwargs.pop("output_device", None)
            super().__init__(module, *args, **kwargs)

    distributed_fairseq_model.DistributedDataParallel = CPUAwareDDP


def bf16_without_tpu() -> None:
    """fairseq's argparse path turns --bf16 into --tpu (a 2020 TPU-era shortcut), which sends CPU and CUDA runs to
    torch_xla and crashes.  Without torch_xla there is no TPU to mean, so keep bf16 on the real device."""
    import importlib.util

    from fairseq.distributed import utils as dist_utils

    call_main = dist_utils.call_main
    if getattr(call_main, "kvattn_bf16_fixed", False) or importlib.util.find_spec("torch_xla") is not None:
        return

    @functools.wraps(call_main)
    def fixed(cfg, main, **kwargs):
        from omegaconf import open_dict

        common = getattr(cfg, "common", None)
        if common is not None and getattr(common, "bf16", False) and getattr(common, "tpu", False):
            with open_dict(cfg):
                common.tpu = False
        return call_main(cfg, main, **kwargs)

    fixed.kvattn_bf16_fixed = True
    dist_utils.call_main = fixed


def apply() -> None:
    allow_fairseq_checkpoint_globals()
    restore_np_compat()
    keep_last_batch()
    refuse_unsafe_checkpoints_clearly()
    distributed_on_cpu()
    bf16_without_tpu()
    from . import checkpoint_files, checkpoint_plan, tool_refusals
    from .criterions import attention_transfer

    checkpoint_files.install()
    checkpoint_plan.install()
    tool_refusals.install()
    attention_transfer.install()
