"""Fused GPU paths of the attention ops (the `gpu` extra: Triton, and flash-linear-attention's kernels).

The PyTorch ops in `kvattn_fairseq/ops` stay the definition, the CPU path and the reference; each fast path here
computes the same function and is parity-tested against them (tests/test_kernels.py: on a CUDA device, and on the
CPU through Triton's interpreter where it runs there).  Nothing here imports triton or fla unless a CUDA tensor
asks for a fast path, so a CPU-only machine never loads the GPU stack.

KVATTN_KERNELS (read at each call; checked when the plugin is imported, so a bad value stops every command and
every fairseq tool given --user-dir in one line before any work):
  auto       (default) the fast paths for CUDA tensors, when the GPU stack imports
  torch      never: the PyTorch ops everywhere (to compare, or to rule the kernels out)
  interpret  also for CPU tensors, through Triton's interpreter; fla's kernels do not run there (triton 3.6's
             interpreter cannot loop to a bound passed at run time, as they all do), so the chunked training path
             stays PyTorch.  The interpreter is chosen when a kernel is defined (triton.jit reads TRITON_INTERPRET
             then), and the plugin's kernels are defined at their first use: importing the plugin sets
             TRITON_INTERPRET=1 when it is unset; one set to another value is refused

compile_check.py compiles every kernel for the H100 and the A100 without a GPU (docs/bench/gpu/compile.md).
"""
import functools
import os
from typing import Dict, Optional, Tuple

import torch

from ..util.errors import OneLineError

MODES = ("auto", "torch", "interpret")


class KernelsSettingError(OneLineError, ValueError):
    """KVATTN_KERNELS (or TRITON_INTERPRET with it) holds a value the kernels cannot run with."""


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes", "y")


def mode() -> str:
    value = os.environ.get("KVATTN_KERNELS", "auto")
    if value not in MODES:
        raise KernelsSettingError(f"KVATTN_KERNELS: expected one of {', '.join(MODES)}, got {value!r} (unset: auto)")
    if value == "interpret" and not _interpreting():
        raise KernelsSettingError(f"KVATTN_KERNELS=interpret needs TRITON_INTERPRET=1 (it is "
                                  f"{os.environ.get('TRITON_INTERPRET', 'unset')!r}): without it triton compiles "
                                  f"for a GPU driver; set both, or KVATTN_KERNELS=torch")
    return value


def check_environment() -> None:
    """At the plugin's import: KVATTN_KERNELS=interpret with TRITON_INTERPRET unset sets it to 1 (no kernel of the
    plugin is defined yet), then mode() refuses what is left in one line."""
    if os.environ.get("KVATTN_KERNELS") == "interpret" and "TRITON_INTERPRET" not in os.environ:
        os.environ["TRITON_INTERPRET"] = "1"
    mode()


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


# --- the one place where an op's path is chosen ---------------------------------------------------------------------
# fp64 always takes the PyTorch ops (the references' dtype, and gradcheck's).  Which inputs each family's fla kernel
# takes (fla's delta rules: half precision only); a family absent here has no chunked kernel.
FLA_DTYPES: Dict[str, Tuple[torch.dtype, ...]] = {
    "linear": (torch.float32, torch.float16, torch.bfloat16),  # linear attention, MemSizer: kernels/chunked.py
    "delta": (torch.float16, torch.bfloat16),
    "gated_delta": (torch.float16, torch.bfloat16),  # its chunked and its recurrent kernel: kernels/gated_delta.py
}
# The families whose decoding step is fla's fused recurrent kernel (forward only, in the dtypes above) instead of one
# of the plugin's Triton steps; it gathers no pending reorder, so the op applies the order first.
FLA_STEP = ("gated_delta",)


def fused_step(t: torch.Tensor, family: Optional[str] = None) -> bool:
    """Whether a decoding step on tensors like `t` runs as one launch rather than the PyTorch ops: one of the plugin's
    Triton kernels (kernels/step.py, kernels/window_step.py), whose ops gather a search's pending reorder, so that
    the modules record reorders instead of applying them (modules/base.py); or, for a `family` in FLA_STEP, fla's
    recurrent kernel for it."""
    if family in FLA_STEP:
        return fused_chunk(family, t)
    return t.dtype != torch.float64 and triton_ok(t)


def fla_gated_backward_ok() -> bool:
    """Whether fla (installed, and asked for) computes the backward of its gated chunked kernels, gated_delta's: fla
    0.6.0 refuses it on Hopper with triton >= 3.4 and < 3.7.1, whose build of that kernel gives wrong gradients
    there (fla/ops/common/chunk_o.py: chunk_bwd_dqkwg), so gated_delta trains through the PyTorch chunked form on
    an H100 with such a triton (torch's CUDA builds bring 3.6); docs/bench/gpu/compile.md found it.  Its test, the
    same flags fla reads (so a tilelang backend that would serve is not used either)."""
    from fla.utils import IS_NVIDIA_HOPPER, TRITON_ABOVE_3_4_0, TRITON_ABOVE_3_7_1

    return not (IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1)


def fused_chunk(family: str, t: torch.Tensor) -> bool:
    """Whether a chunked pass (training, prefill) of `family` on inputs like `t` runs through fla's kernels
    (kernels/chunked.py) rather than the PyTorch chunked ops."""
    return t.dtype in FLA_DTYPES.get(family, ()) and fla_ok(t)
