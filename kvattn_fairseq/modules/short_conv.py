"""A short causal depthwise convolution over time, the local token mixing that Gated DeltaNet (and DeltaNet, Mamba)
put on the q, k, v projections before the memory.  docs/papers/gated-delta.md, "The short convolution".

    y_t[c] = sum_{j=0}^{K-1} w[c, j] x_{t-K+1+j}[c]          (tap K-1 is the current input)

Computed in fp32 as K shifted multiply-adds, the same arithmetic in the full pass and in a decoding step, so
incremental decoding reproduces the full pass exactly (an autocast conv1d would run in bf16 on the CPU).  Its
decoding state is the last K-1 inputs, [B, K-1, C] fp32 with the batch first: constant in the output length, and
fairseq's reorder (index_select on dim 0) selects hypotheses like every other state tensor.

Padding (True in `pad`) is skipped, as the memories skip it: a padded position is not an input, so the convolution
at a real position sees the K-1 real inputs before it, the state after a call holds the last K-1 real inputs, and a
padded position's output is 0.

The kinds that take it (gated_delta, delta, linear) register SHORT_CONV_OPTION and pass `short_conv_size(...)` to
the head-wise kinds' causal path (headwise_linear.py), which builds the convolution over the concatenated q/k/v
projections and runs it before each kind's feature maps.
"""
import argparse
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from .registry import KindOption

MAX_KERNEL = 64
STATE_KEY = "conv"


def short_conv_kernel(text: str) -> int:
    """argparse type of --short-conv: an integer from 0 (no convolution) to MAX_KERNEL."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a kernel size from 0 (none) to {MAX_KERNEL}, got {text!r}") \
            from None
    if not 0 <= value <= MAX_KERNEL:
        raise argparse.ArgumentTypeError(f"expected a kernel size from 0 (none) to {MAX_KERNEL} (a short "
                                         f"convolution; longer-range mixing is a window's job), got {value}")
    return value


SHORT_CONV_OPTION = KindOption(
    "--short-conv", None, short_conv_kernel,
    "kernel size K of the causal depthwise convolution on the q, k, v projections of the recurrent kinds (decoder "
    "self-attention), 0 for none; unset: the kind's own (gated_delta: 4; delta, linear: 0)")


def short_conv_size(options: Dict[str, Any], default: int) -> int:
    """The kernel size a kind gets: --short-conv if given, else the kind's own default."""
    value = options.get(SHORT_CONV_OPTION.dest)
    return default if value is None else value


class ShortConvolution(nn.Module):
    """Causal depthwise convolution over [B, T, C] inputs, kernel `kernel` >= 1, no bias (fla's ShortConvolution
    default); weights [C, K] initialised like torch's Conv1d for a depthwise convolution (U(-1/sqrt(K), 1/sqrt(K)))."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        if kernel < 1:
            raise ValueError(f"a short convolution needs a kernel size >= 1, got {kernel}")
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(channels, kernel))
        nn.init.uniform_(self.weight, -kernel ** -0.5, kernel ** -0.5)

    @classmethod
    def maybe(cls, channels: int, kernel: int) -> Optional["ShortConvolution"]:
        """The convolution, or None for kernel 0."""
        return cls(channels, kernel) if kernel > 0 else None

    def extra_repr(self) -> str:
        return f"channels={self.weight.size(0)}, kernel={self.kernel}"

    def reset_to_identity(self) -> None:
        """y_t = x_t: the last tap 1, the others 0 (a converted layer keeps its teacher's projections)."""
        with torch.no_grad():
            self.weight.zero_()
            self.weight[:, -1] = 1.0

    def forward(self, x: Tensor, pad: Optional[Tensor] = None,
                state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """x [B, T, C], pad [B, T], state [B, K-1, C] (None: nothing before) -> (y [B, T, C] fp32, the state after
        the call [B, K-1, C] fp32)."""
        bsz, tlen, channels = x.shape
        x = x.float()
        keep = None
        if pad is not None:  # real inputs first, in order; the convolution runs over them alone
            keep = ~pad
            first = torch.sort(pad.to(torch.uint8), dim=1, stable=True).indices
            x = x.gather(1, first.unsqueeze(-1).expand_as(x)) * keep.gather(1, first).unsqueeze(-1)
        if state is None:
            state = x.new_zeros(bsz, self.kernel - 1, channels)
        xp = torch.cat([state.float(), x], dim=1)  # [B, K-1+T, C]
        w = self.weight.float()
        y = xp[:, :tlen] * w[:, 0]
        for j in range(1, self.kernel):
            y = y + xp[:, j:j + tlen] * w[:, j]
        if keep is None:
            return y, xp[:, tlen:]
        real = keep.sum(1, keepdim=True)  # the last K-1 real inputs are xp[real : real + K-1]
        last = real + torch.arange(self.kernel - 1, device=x.device)
        new_state = xp.gather(1, last.unsqueeze(-1).expand(-1, -1, channels))
        rank = (keep.long().cumsum(1) - 1).clamp(min=0)  # a real position's place among the real ones
        return y.gather(1, rank.unsqueeze(-1).expand_as(y)) * keep.unsqueeze(-1), new_state

    def run(self, x: Tensor, pad: Optional[Tensor], state: Optional[Dict[str, Tensor]],
            key: str = STATE_KEY) -> Tensor:
        """forward() with its state in a kind's decoding buffer `state` (None: a full pass, nothing kept)."""
        y, new = self(x, pad, None if state is None else state.get(key))
        if state is not None:
            state[key] = new
        return y
