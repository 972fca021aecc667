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
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import gated_delta as ops
from .headwise_linear import _flat
from .projected import ProjectedAttention
from .registry import AttentionSite, register_attention_kind
from .short_conv import SHORT_CONV_OPTION, ShortConvolution, short_conv_size

DEFAULT_SHORT_CONV = 4  # the paper's kernel size
NORM_EPS = 1e-5  # fla's GatedDeltaNet output norm
# The initial decay, as the paper's released layer sets it: A ~ U(0, 16) per head, dt = softplus(W_a x + dt_bias)
# log-uniform in [1e-3, 0.1] at W_a x = 0 (Mamba's range for dt); g = -A * dt.
A_RANGE = (0.0, 16.0)
DT_RANGE = (1e-3, 0.1)
DT_FLOOR = 1e-4


class GatedDeltaAttention(ProjectedAttention):
    lazy_reorder = False  # the state is gathered by fairseq's reorder like any buffer: two tensors per layer

    def __init__(self, embed_dim: int, num_heads: int, position: str, dropout: float = 0.0,
                 short_conv: int = DEFAULT_SHORT_CONV, chunk: int = ops.DEFAULT_CHUNK):
        if position != "decoder":  # the registry refuses other positions first; this guards direct construction
            raise ValueError("the gated delta rule is a causal recurrence: decoder self-attention only")
        super().__init__(embed_dim, num_heads, position, dropout=dropout)
        inner = num_heads * self.head_dim
        self.chunk = chunk
        self.conv = ShortConvolution.maybe(3 * inner, short_conv)  # over [W_Q x | W_K x | W_V x]
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
        return f"{super().extra_repr()}, short_conv={self.conv.kernel if self.conv is not None else 0}"

    def init_from_softmax(self, softmax: Dict[str, Tensor]) -> List[str]:
        """q/k/v/out carry over; the convolution starts as the identity so that each position's q, k, v are the
        teacher's projections of that position (then SiLU, and L2 norm for q, k).  Gates and norm keep their init."""
        done = super().init_from_softmax(softmax)
        if self.conv is not None:
            self.conv.reset_to_identity()
            done.append("conv: identity (last tap 1)")
        return done

    def gates(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """beta, g [B * H, T] in fp32."""
        bsz, tlen, h = x.size(0), x.size(1), self.num_heads
        beta = torch.sigmoid(self.b_proj(x).float())
        g = -torch.exp(self.A_log.float()) * F.softplus(self.a_proj(x).float() + self.dt_bias.float())
        beta, g = (t.transpose(1, 2).reshape(bsz * h, tlen) for t in (beta, g))
        return beta, g

    def attend_self(self, x: Tensor, pad: Optional[Tensor], state: Optional[Dict[str, Tensor]]) -> Tensor:
        bsz, tlen, h = x.size(0), x.size(1), self.num_heads
        if state is not None:
            self.take_order(state, fused=False)  # a pending reorder (none is recorded here) would be applied
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        work = qkv.dtype  # the projections' precision (bf16 under autocast or a bf16 model): what v goes in as
        qkv = qkv.float() if self.conv is None else self.conv.run(qkv, pad, state)
        q, k, v = (_flat(self.split_heads(t)) for t in F.silu(qkv).chunk(3, dim=-1))
        # the released layer's read scale 1/sqrt(d_h) on the unit q: the output norm's eps then damps near-zero
        # reads as it does there (docs/papers/gated-delta.md, "The output")
        q = F.normalize(q, dim=-1, eps=1e-6) * self.head_dim ** -0.5
        k = F.normalize(k, dim=-1, eps=1e-6)
        v = v.to(work)
        beta, g = self.gates(x)
        fpad = None if pad is None else pad.repeat_interleave(h, dim=0)
        prev = None if state is None or "S" not in state else _flat(state["S"])
        if state is not None and tlen == 1:
            out, s = ops.causal_step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], g[:, 0], state=prev,
                                     pad=None if fpad is None else fpad[:, 0])
            out = out.unsqueeze(1)
        else:
            out, s = ops.causal_parallel(q, k, v, beta, g, state=prev, pad=fpad, chunk=self.chunk)
        if state is not None:
            state["S"] = s.view(bsz, h, *s.shape[1:])
        out = out.float()
        out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + NORM_EPS) * self.norm_weight.float()
        gate = F.silu(self.split_heads(self.g_proj(x)).float())  # [B, H, T, d]
        return self.output(out.view(bsz, h, tlen, -1) * gate, x.dtype)


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
