"""Fused GPU paths of the attention ops (the `gpu` extra: Triton, and flash-linear-attention's kernels).

The PyTorch ops in `kvattn_fairseq/ops` stay the definition, the CPU path and the reference; each fast path here
computes the same function and is parity-tested against them (tests/test_kernels.py: on a CUDA device, and on the
CPU through Triton's interpreter where it runs there).  Nothing here imports triton or fla unless a CUDA tensor
asks for a fast path, so a CPU-only machine never loads the GPU stack.

KVATTN_KERNELS (read at each call):
  auto       (default) the fast paths for CUDA tensors, when the GPU stack imports
  torch      never: the PyTorch ops everywhere (to compare, or to rule the kernels out)
  interpret  also for CPU tensors, through Triton's interpreter (tests; TRITON_INTERPRET=1 must be set before
             triton is first imported); fla's kernels do not run there (triton 3.6's interpreter cannot loop to a
             bound passed at run time, as they all do), so the chunked training path stays PyTorch

compile_check.py compiles every kernel for the H100 and the A100 without a GPU (docs/bench/gpu/compile.md).
"""
import functools
import os

import torch

MODES = ("auto", "torch", "interpret")


def mode() -> str:
    value = os.environ.get("KVATTN_KERNELS", "auto")
    if value not in MODES:
        raise ValueError(f"KVATTN_KERNELS: expected one of {', '.join(MODES)}, got {value!r}")
    return value


@functools.lru_cache(maxsize=None)
def _importable(module: str) -> bool:
    try:
        __import__(module)
    except Exception:  # noqa: BLE001  (a broken install is as good as none: the PyTorch path runs)
        return False
    return True


def triton_ok(t: torch.Tensor) -> bool:
    """Whether the plugin's own Triton kernels serve tensors like `t`."""
    m = mode()
    if m == "torch":
        return False
    if t.is_cuda:
        return _importable("triton")
    return m == "interpret" and t.device.type == "cpu" and _importable("triton")


def fla_ok(t: torch.Tensor) -> bool:
    """Whether flash-linear-attention's chunked kernels serve tensors like `t` (CUDA only)."""
    return t.is_cuda and mode() != "torch" and _importable("fla.ops.simple_gla")


def sdpa_ok(t: torch.Tensor) -> bool:
    """Whether torch's fused scaled-dot-product attention replaces the unfused PyTorch form (CUDA only: on the CPU
    the unfused form stays the reference the tests compare everything with)."""
    return t.is_cuda and mode() != "torch"
