"""The causal prefix product of the linear kinds (ops/linear_scan.py) through flash-linear-attention's chunked
kernels (`fla.ops.simple_gla.chunk_simple_gla` without a gate: plain linear attention), forward and backward.

MemSizer maps onto it with its k slots as the key dimension: the read p_t as query, LN(W_l x_i) as key, the values
as values, the t^-1/2 scale applied after (ops/memsizer.py).  Keys narrower than 16 (MemSizer's 4 slots) are
zero-padded: the tensor cores' smallest tile, and zero features add nothing.

Precision: the inputs go in the values' dtype, the model's (fp16 or bf16 under fairseq's --fp16 / --bf16, so that
fla's matrix products run on the tensor cores; fp32 otherwise); fla accumulates in fp32 and keeps the final state
in fp32, but stores the state entering each chunk, the intra-chunk scores q.k and the outputs in the input dtype.
The state is an unnormalised sum that grows with t (a MemSizer numerator reaches about t * k): past fp16's range
(65504) at long contexts, never near bf16's (fp32's exponent).  In fp16, `fla_inputs` therefore scales q and v
per sequence by powers of two (exact) chosen from worst-case bounds, so that every stored value stays below 2^14,
and the outputs and the final state are scaled back in fp32; the linear kind's denominator, the other unbounded
sum, stays in fp32 beside the kernel (`causal_linear`).  tests/test_numerics.py checks the bounds and the result
at 16K positions.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_KEY = 16
HALF = (torch.float16, torch.bfloat16)
LIMIT = 2.0 ** 14  # fp16's largest finite value is 65504: worst-case bounds kept under 2^14 leave room to spare


def _chunk():
    from fla.ops.simple_gla import chunk_simple_gla

    return chunk_simple_gla


def _power_of_two_at_most(x: Tensor) -> Tensor:
    """The largest power of two <= x, at most 1 (scaling only ever shrinks); an unbounded x (zero inputs) gives 1."""
    return torch.exp2(torch.floor(torch.log2(x))).clamp(min=2.0 ** -60, max=1.0)


def fla_inputs(q: Tensor, k: Tensor, v: Tensor, state: Optional[Tensor]
               ) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor], Tensor, Tensor]:
    """What `causal_dot_product` hands fla: q, k, v [N, T, d] in the dtype fla runs in (v's if half, else fp32),
    the initial state fp32, and the per-sequence scales a, c [N, 1, 1] of q and v (1 outside fp16): the kernel's
    output is a * c * out and its final state c * S.

    Bounds, per sequence n (exact arithmetic, whatever the signs): a score |q_t . k_j| <= max_t |q_t|_1 max_j |k_j|_inf
    = B_qk; an entry of a state, S_t = S_0 + sum_{j<=t} k_j v_j^T, is at most B_s = max |S_0| + sum_j |k_j|_inf
    |v_j|_inf; an output entry q_t^T S_t at most max_t |q_t|_1 * B_s.  With q scaled by a and v by c, the stored
    values are bounded by a B_qk, c B_s and a c max|q|_1 B_s: a and c are the largest powers of two keeping all
    three under LIMIT."""
    dtype = v.dtype if v.dtype in HALF else torch.float32
    one = torch.ones(k.size(0), 1, 1, device=k.device)
    if dtype != torch.float16:
        return q.to(dtype), k.to(dtype), v.to(dtype), state, one, one
    with torch.no_grad():
        q1 = q.detach().float().abs().sum(-1).amax(-1)                          # [N] max_t |q_t|_1
        k_inf = k.detach().float().abs().amax(-1)                               # [N, T]
        sums = (k_inf * v.detach().float().abs().amax(-1)).sum(-1)              # [N] sum_j |k_j|_inf |v_j|_inf
        if state is not None:
            sums = sums + state.detach().float().abs().flatten(1).amax(-1)
        a = _power_of_two_at_most(LIMIT / (q1 * k_inf.amax(-1)))
        c = _power_of_two_at_most(LIMIT / (sums * torch.clamp(a * q1, min=1.0)))
        a, c = a.view(-1, 1, 1), c.view(-1, 1, 1)
    h0 = None if state is None else state.float() * c
    return (q.float() * a).to(dtype), k.to(dtype), (v.float() * c).to(dtype), h0, a, c


def causal_dot_product(q: Tensor, k: Tensor, v: Tensor, state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """ops.linear_scan.causal_dot_product's contract: q, k [N, T, dk], v [N, T, dv], state [N, dk, dv] or None ->
    (out [N, T, dv] fp32, final state [N, dk, dv] fp32)."""
    dk = k.shape[-1]
    width = max(MIN_KEY, -(-dk // MIN_KEY) * MIN_KEY)
    q, k, v, state, a, c = fla_inputs(q, k, v, state)
    q4, k4 = (F.pad(x, (0, width - dk)).unsqueeze(2) for x in (q, k))
    h0 = None if state is None else F.pad(state.float(), (0, 0, 0, width - dk)).unsqueeze(1)
    out, final = _chunk()(q4, k4, v.unsqueeze(2), scale=1.0, initial_state=h0, output_final_state=True)
    return out.squeeze(2).float() / (a * c), final.squeeze(1)[:, :dk].float() / c


def causal_linear(fq: Tensor, fk: Tensor, v: Tensor, state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """ops/linear.py's causal form on features (fk already zero at padding): the numerator through the kernel, the
    denominator phi(q_t) . sum_{j<=t} phi(k_j) as a cumulative sum beside it, in fp32, rather than a column of ones
    in the values (65 columns would take two 64-wide value tiles, and the sum would be stored in the values' dtype).
    state [N, dk, dv + 1] = (S | z) -> (out [N, T, dv], final state [N, dk, dv + 1]), fp32."""
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
