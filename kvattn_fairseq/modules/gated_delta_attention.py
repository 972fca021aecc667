"""`gated_delta`: Gated DeltaNet's layer (Yang, Kautz and Hatamizadeh, ICLR 2025) as a decoder self-attention kind,
and `window_gated_delta` (registered in window_attention.py) with a sliding window beside it.
docs/papers/gated-delta.md.

Per head (fairseq's q/k/v/out projections, everything after them in fp32):

    q, k, v = SiLU(ShortConv_K(W_Q x)), SiLU(ShortConv_K(W_K x)), SiLU(ShortConv_K(W_V x));  q, k L2-normalised,
    q scaled by 1/sqrt(d_h)
    beta_t = sigmoid(W_beta x_t),  g_t = -exp(A_log) softplus(W_a x_t + dt_bias)  (alpha_t = exp(g_t))
    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t        (ops/gated_delta.py)
    out = W_O [RMSNorm(o_t) * SiLU(W_G x_t) over heads]

The decoding state is one d_h x d_h fp32 matrix per head and the convolution's last K-1 projected inputs
(short_conv.py), both constant in the output length.
"""
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import gated_delta as ops
from .headwise_linear import HeadwiseLinearAttention
from .registry import AttentionSite, register_attention_kind
from .short_conv import SHORT_CONV_OPTION, short_conv_size

DEFAULT_SHORT_CONV = 4  # the paper's kernel size
NORM_EPS = 1e-5  # fla's GatedDeltaNet output norm
# The initial decay, as the paper's released layer sets it: A ~ U(0, 16) per head, dt = softplus(W_a x + dt_bias)
# log-uniform in [1e-3, 0.1] at W_a x = 0 (Mamba's range for dt); g = -A * dt.
A_RANGE = (0.0, 16.0)
DT_RANGE = (1e-3, 0.1)
DT_FLOOR = 1e-4


class GatedDeltaAttention(HeadwiseLinearAttention):
    """The head-wise kinds' causal path (headwise_linear.py) with the short convolution on by default, SiLU on q, k, v
    after it, beta and g as per-token inputs beside q, k, v, and the gated output norm before W_O."""

    family = ops
    state_keys = ("S",)
    lazy_reorder = False  # the state is gathered by fairseq's reorder like any buffer: two tensors per layer

    def __init__(self, embed_dim: int, num_heads: int, position: str, dropout: float = 0.0,
                 short_conv: int = DEFAULT_SHORT_CONV, chunk: int = ops.DEFAULT_CHUNK):
        if position != "decoder":  # the registry refuses other positions first; this guards direct construction
            raise ValueError("the gated delta rule is a causal recurrence: decoder self-attention only")
        super().__init__(embed_dim, num_heads, position, dropout=dropout, short_conv=short_conv)
        inner = num_heads * self.head_dim
        self.chunk = chunk
        self.b_proj = nn.Linear(embed_dim, num_heads, bias=False)
        self.a_proj = nn.Linear(embed_dim, num_heads, bias=False)
        a = torch.empty(num_heads).uniform_(*A_RANGE).clamp(min=1e-6)  # a draw of exactly 0 would give log 0
        self.A_log = nn.Parameter(torch.log(a))
        dt = torch.exp(torch.empty(num_heads).uniform_(math.log(DT_RANGE[0]), math.log(DT_RANGE[1])))
        dt = dt.clamp(min=DT_FLOOR)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.g_proj = nn.Linear(embed_dim, inner, bias=False)
        self.norm_weight = nn.Parameter(torch.ones(self.head_dim))  # shared by the heads, as fla's o_norm

    def extra_repr(self) -> str:
        return super().extra_repr() + (", short_conv=0" if self.conv is None else "")

    def gates(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """beta, g [B * H, T] in fp32."""
        bsz, tlen, h = x.size(0), x.size(1), self.num_heads
        beta = torch.sigmoid(self.b_proj(x).float())
        g = -torch.exp(self.A_log.float()) * F.softplus(self.a_proj(x).float() + self.dt_bias.float())
        beta, g = (t.transpose(1, 2).reshape(bsz * h, tlen) for t in (beta, g))
        return beta, g

    def value_map(self, v: Tensor, dtype: torch.dtype) -> Tensor:
        """SiLU in fp32, then the projections' precision (bf16 under autocast or a bf16 model)."""
        return F.silu(v.float()).to(dtype)

    def inputs(self, x: Tensor, pad: Optional[Tensor] = None,
               state: Optional[Dict[str, Tensor]] = None) -> Tuple[Tensor, ...]:
        """q, k (SiLU, unit length, q / sqrt(d_h)), v (SiLU) [B * H, T, d], beta and g [B * H, T]."""
        q, k, v = self.projections(x, pad, state)
        # the released layer's read scale 1/sqrt(d_h) on the unit q: the output norm's eps then damps near-zero
        # reads as it does there (docs/papers/gated-delta.md, "The output")
        q = F.normalize(F.silu(q.float()), dim=-1, eps=1e-6) * self.head_dim ** -0.5
        k = F.normalize(F.silu(k.float()), dim=-1, eps=1e-6)
        return (q, k, v) + self.gates(x)

    def finish(self, out: Tensor, x: Tensor) -> Tensor:
        """RMSNorm of each head's read (a weight shared by the heads), gated by SiLU(W_G x), then W_O."""
        bsz, tlen = x.size(0), x.size(1)
        out = out.float()
        out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + NORM_EPS) * self.norm_weight.float()
        gate = F.silu(self.split_heads(self.g_proj(x)).float())  # [B, H, T, d]
        return self.output(out.view(bsz, self.num_heads, tlen, -1) * gate, x.dtype)


_CAUSAL_ONLY = {p: "the gated delta rule is a causal recurrence (each token decays and corrects the memory the "
                   "earlier ones wrote)" for p in ("encoder", "cross")}


@register_attention_kind(
    "gated_delta", positions=("decoder",), options=(SHORT_CONV_OPTION,), unsupported=_CAUSAL_ONLY,
    constant_state=True,
    summary="gated delta rule: a decaying delta-rule memory with short convolutions on q/k/v and a gated output "
            "norm, chunked WY training (Gated DeltaNet: Yang, Kautz, Hatamizadeh, ICLR 2025)")
def build_gated_delta(site: AttentionSite) -> GatedDeltaAttention:
    return GatedDeltaAttention(site.embed_dim, site.num_heads, site.position, dropout=site.dropout,
                               short_conv=short_conv_size(site.options, DEFAULT_SHORT_CONV))
