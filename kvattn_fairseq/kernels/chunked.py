"""The causal prefix product of the linear kinds (ops/linear_scan.py) through flash-linear-attention's chunked
kernels (`fla.ops.simple_gla.chunk_simple_gla` without a gate: plain linear attention), forward and backward.

MemSizer maps onto it with its k slots as the key dimension: the read p_t as query, LN(W_l x_i) as key, the values
as values, the t^-1/2 scale applied after (ops/memsizer.py).  Inputs go in as fp32: the unnormalised sums grow with
t (a MemSizer numerator reaches about t * k), past fp16's range at long contexts; fla accumulates in fp32 either
way.  Keys narrower than 16 (MemSizer's 4 slots) are zero-padded: the tensor cores' smallest tile, and zero
features add nothing.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_KEY = 16


def _chunk():
    from fla.ops.simple_gla import chunk_simple_gla

    return chunk_simple_gla


def causal_dot_product(q: Tensor, k: Tensor, v: Tensor, state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """ops.linear_scan.causal_dot_product's contract: q, k [N, T, dk], v [N, T, dv], state [N, dk, dv] or None ->
    (out [N, T, dv] fp32, final state [N, dk, dv] fp32)."""
    dk = k.shape[-1]
    width = max(MIN_KEY, -(-dk // MIN_KEY) * MIN_KEY)
    q4, k4 = (F.pad(x.float(), (0, width - dk)).unsqueeze(2) for x in (q, k))
    h0 = None if state is None else F.pad(state.float(), (0, 0, 0, width - dk)).unsqueeze(1)
    out, final = _chunk()(q4, k4, v.float().unsqueeze(2), scale=1.0, initial_state=h0, output_final_state=True)
    return out.squeeze(2).float(), final.squeeze(1)[:, :dk].float()


def causal_linear(fq: Tensor, fk: Tensor, v: Tensor, state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """ops/linear.py's causal form on features (fk already zero at padding): the numerator through the kernel, the
    denominator phi(q_t) . sum_{j<=t} phi(k_j) as a cumulative sum beside it, rather than a column of ones in the
    values (65 columns would take two 64-wide value tiles).  state [N, dk, dv + 1] = (S | z) -> (out [N, T, dv],
    final state [N, dk, dv + 1]), fp32."""
    s0, z0 = (None, None) if state is None else (state[..., :-1], state[..., -1].float())
    num, s_last = causal_dot_product(fq, fk, v, s0)
    z = torch.cumsum(fk.float(), dim=1)
    if z0 is not None:
        z = z + z0.unsqueeze(1)
    den = (fq.float() * z).sum(-1, keepdim=True).clamp(min=1e-6)  # ops/linear.py's EPS
    return num / den, torch.cat([s_last, z[:, -1].unsqueeze(-1)], dim=-1)


def _delta_chunk():
    from fla.ops.delta_rule import chunk_delta_rule

    return chunk_delta_rule


def causal_delta(q: Tensor, k: Tensor, v: Tensor, beta: Tensor,
                 state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """ops/delta.causal_parallel's contract, padding already folded into k and beta (zero there): q, k [N, T, dk]
    (k L2-normalised), v [N, T, dv], beta [N, T], state [N, dk, dv] -> (out [N, T, dv] fp32, final state fp32),
    through fla's chunked delta-rule kernel (the WY form of Yang et al. 2024, forward and backward).  fla takes half
    precision only: the callers send fp16/bf16 inputs (bounded: unit keys, beta in [0, 1]); the state stays fp32."""
    dtype = q.dtype
    q4, k4, v4 = (x.to(dtype).unsqueeze(2) for x in (q, k, v))
    h0 = None if state is None else state.float().unsqueeze(1)
    out, final = _delta_chunk()(q4, k4, v4, beta.to(dtype).unsqueeze(2), scale=1.0, initial_state=h0,
                                output_final_state=True)
    return out.squeeze(2).float(), final.squeeze(1).float()
