"""The delta rule (DeltaNet), torch only: a d_k x d_v fast-weight memory that is corrected, not only added to.
See docs/papers/delta.md.

Per position t (batch first; keys L2-normalised by the caller, beta_t in [0, 1]):

    u_t = beta_t (v_t - S_{t-1}^T k_t)        what k_t should read minus what it reads now, scaled
    S_t = S_{t-1} + k_t u_t^T                 = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    o_t = S_t^T q_t

Shapes: q, k [N, T, dk], v [N, T, dv], beta [N, T], pad [N, T] (True at padding: beta is 0 there, so a padded
position leaves the state as it was), state S [N, dk, dv].  State and arithmetic are fp32 (fp64 stays fp64);
outputs come back in that dtype, the caller casts.

Three implementations agree: `causal_reference` (the recurrence, fp64), `causal_parallel` (chunked: training and
prefill) and `causal_step` (one token).  The chunked path is the WY/UT form of Yang et al. 2024: inside a chunk of C
positions, with S the state entering it, the u_t solve a unit lower-triangular system,

    (I + A) U = diag(beta) (V - K S),    A = strictly lower part of diag(beta) K K^T   (C x C)

so U = U0 - W S with W = (I + A)^{-1} diag(beta) K and U0 = (I + A)^{-1} diag(beta) V, computed for every chunk at
once before the scan; the scan over chunks is then O = Q S + tril(Q K^T) U and S <- S + K^T U.  Nothing T x T and
no per-position d_k x d_v state is formed: C x C blocks and one state per chunk.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import kernels
from .linear_scan import acc_dtype, as_dtype

DEFAULT_CHUNK = 64


def _masked(k: Tensor, beta: Tensor, pad: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    if pad is None:
        return k, beta
    return k.masked_fill(pad.unsqueeze(-1), 0.0), beta.masked_fill(pad, 0.0)


def causal_step(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, *, state: Optional[Tensor] = None,
                pad: Optional[Tensor] = None, order: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One position: q, k [N, dk], v [N, dv], beta [N], pad [N] -> (out [N, dv], new state [N, dk, dv]); `order`
    [N]: row n continues state row order[n] (a search's reorder not yet applied)."""
    if kernels.fused_step(k):  # one launch (kernels/step.py)
        from ..kernels.step import delta_step

        k, beta = _masked(k, beta, pad)
        return delta_step(q, k, v, beta.float(), state, order)
    if order is not None and state is not None:
        state = state.index_select(0, order)
    acc = acc_dtype(k)
    q, k, v, beta = as_dtype(q, acc), as_dtype(k, acc), as_dtype(v, acc), as_dtype(beta, acc)
    k, beta = _masked(k, beta, pad)
    if state is None:
        state = torch.zeros(k.size(0), k.size(1), v.size(1), dtype=acc, device=k.device)
    state = as_dtype(state, acc)
    u = beta.unsqueeze(1) * (v - torch.bmm(k.unsqueeze(1), state).squeeze(1))
    state = torch.addcmul(state, k.unsqueeze(2), u.unsqueeze(1))
    return torch.bmm(q.unsqueeze(1), state).squeeze(1), state


def causal_parallel(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, *, state: Optional[Tensor] = None,
                    pad: Optional[Tensor] = None, chunk: int = DEFAULT_CHUNK) -> Tuple[Tensor, Tensor]:
    """Whole sequences: -> (out [N, T, dv], final state [N, dk, dv]); `state` continues an earlier call."""
    if kernels.fused_chunk("delta", v):  # fla's kernel takes half precision only
        from ..kernels.chunked import causal_delta

        k, beta = _masked(k, beta, pad)
        return causal_delta(q.to(v.dtype), k.to(v.dtype), v, beta, state)
    n, tlen, dk = k.shape
    dv = v.size(-1)
    acc = acc_dtype(k)
    q, k, v, beta = q.to(acc), k.to(acc), v.to(acc), beta.to(acc)
    k, beta = _masked(k, beta, pad)
    c = max(1, min(chunk, tlen))
    nc = (tlen + c - 1) // c
    extra = nc * c - tlen
    if extra:  # padding at the end: beta = 0 and k = 0 there, so the final state is untouched
        q, k, v = (F.pad(x, (0, 0, 0, extra)) for x in (q, k, v))
        beta = F.pad(beta, (0, extra))
    qc, kc, vc, bc = q.view(n, nc, c, dk), k.view(n, nc, c, dk), v.view(n, nc, c, dv), beta.view(n, nc, c, 1)
    kb = kc * bc
    eye = torch.eye(c, dtype=acc, device=k.device)
    lower = torch.tril(torch.matmul(kb, kc.transpose(-1, -2)), diagonal=-1) + eye
    solved = torch.linalg.solve_triangular(lower, torch.cat([kb, vc * bc], dim=-1), upper=False,
                                           unitriangular=True)
    w, u0 = solved[..., :dk], solved[..., dk:]
    scores = torch.tril(torch.matmul(qc, kc.transpose(-1, -2)))  # within the chunk, diagonal included
    s = torch.zeros(n, dk, dv, dtype=acc, device=k.device) if state is None else state.to(acc)
    outs = []
    for i in range(nc):
        u = u0[:, i] - torch.bmm(w[:, i], s)
        outs.append(torch.bmm(qc[:, i], s) + torch.bmm(scores[:, i], u))
        s = s + torch.bmm(kc[:, i].transpose(1, 2), u)
    return torch.cat(outs, dim=1)[:, :tlen], s


def causal_reference(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, *, state: Optional[Tensor] = None,
                     pad: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The recurrence, position by position, in fp64 (slow; for tests; differentiable)."""
    n, tlen, dk = k.shape
    rows, finals = [], []
    for b in range(n):
        s = torch.zeros(dk, v.size(-1), dtype=torch.float64) if state is None else state[b].double()
        outs = []
        for t in range(tlen):
            if pad is None or not bool(pad[b, t]):
                kt = k[b, t].double()
                s = s + beta[b, t].double() * torch.outer(kt, v[b, t].double() - s.t() @ kt)
            outs.append(s.t() @ q[b, t].double())
        rows.append(torch.stack(outs))
        finals.append(s)
    return torch.stack(rows), torch.stack(finals)
