"""Distributed training on CPU (gloo): fairseq divides by torch.cuda.device_count() to pick a device, defaults to
the NCCL backend, and hands CPU modules to DistributedDataParallel with device_ids; launched with torchrun, CPU
workers now get device 0, gloo, and no device_ids.  Each function is a wrapper factory for patches.PATCHES."""
import logging
import os

import torch


def infer_launch(launch_init):
    """fairseq.distributed.utils._infer_torch_distributed_launch_init"""
    def infer(cfg):
        if torch.cuda.is_available():
            return launch_init(cfg)
        cfg.distributed_init_method = "env://"
        cfg.distributed_world_size = int(os.environ["WORLD_SIZE"])
        cfg.distributed_rank = int(os.environ["RANK"])
        cfg.device_id = 0  # no GPU to pick: every CPU worker uses "device" 0
        cfg.distributed_no_spawn = True

    return infer


def gloo_without_cuda(init):
    """fairseq.distributed.utils.distributed_init"""
    def distributed_init(cfg):
        dt = cfg.distributed_training if hasattr(cfg, "distributed_training") else cfg
        if not torch.cuda.is_available() and getattr(dt, "distributed_backend", None) == "nccl":
            logging.getLogger(__name__).warning("no CUDA device: using the gloo backend instead of nccl")
            dt.distributed_backend = "gloo"
        return init(cfg)

    return distributed_init


def cpu_aware_ddp(ddp):
    """fairseq.models.distributed_fairseq_model.DistributedDataParallel (a subclass replaces it)"""
    class CPUAwareDDP(ddp):
        def __init__(self, module, *args, **kwargs):
            if next(module.parameters()).device.type == "cpu":  # DDP refuses device_ids for CPU modules
                kwargs.pop("device_ids", None)
                kwargs.pop("output_device", None)
            super().__init__(module, *args, **kwargs)

    return CPUAwareDDP
