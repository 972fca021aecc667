"""`delta`: DeltaNet's delta-rule memory (Schlag et al. 2021; Yang et al. 2024) as a decoder self-attention kind, and
`window_delta` (registered in window_attention.py) with a sliding window beside it.  docs/papers/delta.md.

Per head: q, k = L2-normalised SiLU of fairseq's q/k projections, v = the value projection, beta = sigmoid(W_b x)
(one writing strength per head and token), then ops/delta.py through the head-wise kinds' causal path
(headwise_linear.py); the heads go through fairseq's output projection.
The decoding state is one d_h x d_h fp32 matrix per head, constant in the output length.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import delta as ops
from ..ops.linear_scan import as_dtype
from .headwise_linear import HeadwiseLinearAttention
from .registry import AttentionSite, register_attention_kind


class DeltaAttention(HeadwiseLinearAttention):
    family = ops
    state_keys = ("S",)
    lazy_reorder = True  # its step runs on kernels/step.py, which gathers by a pending reorder

    def __init__(self, embed_dim: int, num_heads: int, position: str, dropout: float = 0.0,
                 chunk: int = ops.DEFAULT_CHUNK):
        if position != "decoder":  # the registry refuses other positions first; this guards direct construction
            raise ValueError("the delta rule is a causal recurrence: decoder self-attention only")
        super().__init__(embed_dim, num_heads, position, dropout=dropout)
        self.chunk = chunk
        self.b_proj = nn.Linear(embed_dim, num_heads)

    def features(self, proj: nn.Linear, x: Tensor) -> Tensor:
        """[B, T, C] -> [B * H, T, d], SiLU then unit length, in fp32."""
        return F.normalize(F.silu(as_dtype(self.flat_heads(proj, x), torch.float32)), dim=-1, eps=1e-6)

    def inputs(self, x: Tensor) -> Tuple[Tensor, ...]:
        """q, k (features), v [B * H, T, d] and beta [B * H, T]."""
        bsz, tlen = x.shape[:2]
        q, k = self.features(self.q_proj, x), self.features(self.k_proj, x)
        beta = torch.sigmoid(as_dtype(self.b_proj(x), torch.float32))
        beta = beta.view(bsz * self.num_heads, 1) if tlen == 1 else beta.transpose(1, 2).reshape(-1, tlen)
        return q, k, self.flat_heads(self.v_proj, x), beta


_CAUSAL_ONLY = {p: "the delta rule is a causal recurrence (each token corrects the memory the earlier ones wrote)"
                for p in ("encoder", "cross")}


@register_attention_kind(
    "delta", positions=("decoder",), unsupported=_CAUSAL_ONLY, constant_state=True,
    summary="delta-rule fast-weight memory with L2-normalised keys and a learned per-token beta, chunked WY "
            "training (DeltaNet: Schlag et al. 2021, Yang et al. 2024)")
def build_delta(site: AttentionSite) -> DeltaAttention:
    return DeltaAttention(site.embed_dim, site.num_heads, site.position, dropout=site.dropout)
