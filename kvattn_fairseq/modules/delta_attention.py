"""`delta`: DeltaNet's delta-rule memory (Schlag et al. 2021; Yang et al. 2024) as a decoder self-attention kind, and
`window_delta` (registered in window_attention.py) with a sliding window beside it.  docs/papers/delta.md.

Per head: q, k = L2-normalised SiLU of fairseq's q/k projections, v = the value projection, beta = sigmoid(W_b x)
(one writing strength per head and token), then ops/delta.py through the head-wise kinds' causal path
(headwise_linear.py); the heads go through fairseq's output projection.  `--short-conv K` (default 0: none) puts
DeltaNet's short causal convolution on the q/k/v projections first (short_conv.py).
The decoding state is one d_h x d_h fp32 matrix per head (and with K > 0 the convolution's last K-1 inputs), constant
in the output length.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import delta as ops
from ..ops.linear_scan import as_dtype
from .headwise_linear import HeadwiseLinearAttention
from .registry import AttentionSite, register_attention_kind
from .short_conv import SHORT_CONV_OPTION, short_conv_size


class DeltaAttention(HeadwiseLinearAttention):
    family = ops
    state_keys = ("S",)
    lazy_reorder = True  # its step runs on kernels/step.py, which gathers by a pending reorder

    def __init__(self, embed_dim: int, num_heads: int, position: str, dropout: float = 0.0,
                 chunk: int = ops.DEFAULT_CHUNK, short_conv: int = 0):
        if position != "decoder":  # the registry refuses other positions first; this guards direct construction
            raise ValueError("the delta rule is a causal recurrence: decoder self-attention only")
        super().__init__(embed_dim, num_heads, position, dropout=dropout, short_conv=short_conv)
        self.chunk = chunk
        self.b_proj = nn.Linear(embed_dim, num_heads)

    @staticmethod
    def features(t: Tensor) -> Tensor:
        """SiLU then unit length, in fp32."""
        return F.normalize(F.silu(as_dtype(t, torch.float32)), dim=-1, eps=1e-6)

    def inputs(self, x: Tensor, pad: Optional[Tensor] = None,
               state: Optional[Dict[str, Tensor]] = None) -> Tuple[Tensor, ...]:
        """q, k (features), v [B * H, T, d] and beta [B * H, T]."""
        bsz, tlen = x.shape[:2]
        q, k, v = self.projections(x, pad, state)
        beta = torch.sigmoid(as_dtype(self.b_proj(x), torch.float32))
        beta = beta.view(bsz * self.num_heads, 1) if tlen == 1 else beta.transpose(1, 2).reshape(-1, tlen)
        return self.features(q), self.features(k), v, beta


_CAUSAL_ONLY = {p: "the delta rule is a causal recurrence (each token corrects the memory the earlier ones wrote)"
                for p in ("encoder", "cross")}


@register_attention_kind(
    "delta", positions=("decoder",), options=(SHORT_CONV_OPTION,), unsupported=_CAUSAL_ONLY, constant_state=True,
    summary="delta-rule fast-weight memory with L2-normalised keys and a learned per-token beta, chunked WY "
            "training (DeltaNet: Schlag et al. 2021, Yang et al. 2024)")
def build_delta(site: AttentionSite) -> DeltaAttention:
    return DeltaAttention(site.embed_dim, site.num_heads, site.position, dropout=site.dropout,
                          short_conv=short_conv_size(site.options, 0))
