"""The gated delta rule (Gated DeltaNet), torch only: the delta rule's d_k x d_v memory, decayed by a gate
alpha_t = exp(g_t) in (0, 1] before each correction.  See docs/papers/gated-delta.md.

Per position t (batch first; keys L2-normalised by the caller, beta_t in [0, 1], g_t <= 0):

    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
        = alpha_t S_{t-1} + k_t u_t^T,      u_t = beta_t (v_t - alpha_t S_{t-1}^T k_t)
    o_t = S_t^T q_t

Shapes: heads folded into the batch; q, k [N, T, dk], v [N, T, dv], beta, g [N, T], pad [N, T] (True at padding:
alpha = 1 and beta = 0 there, so a padded position leaves the state as it was), state S [N, dk, dv].  State and
arithmetic are fp32 (fp64 stays fp64); outputs come back in that dtype, the caller casts.

Three implementations agree: `causal_reference` (the recurrence, fp64), `causal_parallel` (training and prefill)
and `causal_step` (one token).  The parallel path is the delta rule's WY/UT chunk form (ops/delta.py) with the decay
folded in: inside a chunk of C positions entering with state S, with gamma_t = g_1 + ... + g_t (the chunk's
cumulative log-decay, <= 0 and falling) and D_tj = exp(gamma_t - gamma_j) for j <= t (0 above the diagonal),

    (I + A) U = diag(beta) (V - diag(exp gamma) K S),     A = strictly lower part of diag(beta) (K K^T * D)
    O = diag(exp gamma) Q S + (Q K^T * D) U
    S <- exp(gamma_C) S + (diag(exp(gamma_C - gamma)) K)^T U

Every exponent is a difference gamma_t - gamma_j with j <= t, or gamma itself: never positive (the upper triangle is
masked before exp), so strong decay underflows to 0 instead of overflowing.  Nothing T x T and no per-position
d_k x d_v state is formed: C x C blocks and one state per chunk.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import kernels
from .linear_scan import acc_dtype

DEFAULT_CHUNK = 64


def _masked(k: Tensor, beta: Tensor, g: Tensor, pad: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """k = 0, beta = 0 and g = 0 (alpha = 1) at padding."""
    if pad is None:
        return k, beta, g
    return k.masked_fill(pad.unsqueeze(-1), 0.0), beta.masked_fill(pad, 0.0), g.masked_fill(pad, 0.0)


def _wants_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def causal_step(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor, *, state: Optional[Tensor] = None,
                pad: Optional[Tensor] = None, order: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One position: q, k [N, dk], v [N, dv], beta, g, pad [N] -> (out [N, dv], new state [N, dk, dv]); `order`
    [N]: row n continues state row order[n] (a search's reorder not yet applied)."""
    if order is not None and state is not None:
        state = state.index_select(0, order)
    if kernels.fused_step(v, "gated_delta") and not _wants_grad(q, k, v, beta, g):
        # fla's fused recurrent kernel (kernels/gated_delta.py): forward only
        from ..kernels.gated_delta import step as fused

        k, beta, g = _masked(k, beta, g, pad)
        return fused(q, k, v, beta, g, state)
    acc = acc_dtype(k)
    q, k, v, beta, g = (t.to(acc) for t in (q, k, v, beta, g))
    k, beta, g = _masked(k, beta, g, pad)
    if state is None:
        state = torch.zeros(k.size(0), k.size(1), v.size(1), dtype=acc, device=k.device)
    s = state.to(acc) * torch.exp(g).view(-1, 1, 1)
    u = beta.unsqueeze(1) * (v - torch.bmm(k.unsqueeze(1), s).squeeze(1))
    s = torch.addcmul(s, k.unsqueeze(2), u.unsqueeze(1))
    return torch.bmm(q.unsqueeze(1), s).squeeze(1), s


def causal_parallel(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor, *, state: Optional[Tensor] = None,
                    pad: Optional[Tensor] = None, chunk: int = DEFAULT_CHUNK) -> Tuple[Tensor, Tensor]:
    """Whole sequences: -> (out [N, T, dv], final state [N, dk, dv]); `state` continues an earlier call."""
    grad = _wants_grad(q, k, v, beta, g, *(() if state is None else (state,)))
    if kernels.fused_chunk("gated_delta", v) and (not grad or kernels.fla_gated_backward_ok()):
        # fla's chunked kernel, forward and backward (kernels/gated_delta.py)
        from ..kernels.gated_delta import chunked as fused

        k, beta, g = _masked(k, beta, g, pad)
        return fused(q, k, v, beta, g, state)
    n, tlen, dk = k.shape
    dv = v.size(-1)
    acc = acc_dtype(k)
    q, k, v, beta, g = (t.to(acc) for t in (q, k, v, beta, g))
    k, beta, g = _masked(k, beta, g, pad)
    c = max(1, min(chunk, tlen))
    nc = (tlen + c - 1) // c
    extra = nc * c - tlen
    if extra:  # padding at the end: beta = 0, g = 0 and k = 0 there, so the final state is untouched
        q, k, v = (F.pad(x, (0, 0, 0, extra)) for x in (q, k, v))
        beta, g = F.pad(beta, (0, extra)), F.pad(g, (0, extra))
    qc, kc, vc = q.view(n, nc, c, dk), k.view(n, nc, c, dk), v.view(n, nc, c, dv)
    bc, gamma = beta.view(n, nc, c, 1), g.view(n, nc, c).cumsum(-1)
    causal = torch.ones(c, c, dtype=torch.bool, device=k.device).tril()
    # D_tj = exp(gamma_t - gamma_j) for j <= t; the upper triangle (a positive exponent) is masked before exp
    decay = (gamma.unsqueeze(-1) - gamma.unsqueeze(-2)).masked_fill(~causal, float("-inf")).exp()
    eye = torch.eye(c, dtype=acc, device=k.device)
    lower = torch.tril(torch.matmul(kc, kc.transpose(-1, -2)) * decay, diagonal=-1) * bc + eye
    first = torch.exp(gamma).unsqueeze(-1)  # exp(gamma_t): the entering state's decay up to t
    solved = torch.linalg.solve_triangular(lower, torch.cat([kc * (bc * first), vc * bc], dim=-1), upper=False,
                                           unitriangular=True)
    w, u0 = solved[..., :dk], solved[..., dk:]
    scores = torch.matmul(qc, kc.transpose(-1, -2)) * decay  # within the chunk, diagonal included
    q_in = qc * first
    k_out = kc * torch.exp(gamma[..., -1:] - gamma).unsqueeze(-1)  # decay from j to the chunk's end
    last = torch.exp(gamma[..., -1]).view(n, nc, 1, 1)
    s = torch.zeros(n, dk, dv, dtype=acc, device=k.device) if state is None else state.to(acc)
    outs = []
    for i in range(nc):
        u = u0[:, i] - torch.bmm(w[:, i], s)
        outs.append(torch.bmm(q_in[:, i], s) + torch.bmm(scores[:, i], u))
        s = last[:, i] * s + torch.bmm(k_out[:, i].transpose(1, 2), u)
    return torch.cat(outs, dim=1)[:, :tlen], s


def causal_reference(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor, *, state: Optional[Tensor] = None,
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
                s = torch.exp(g[b, t].double()) * s
                s = s + beta[b, t].double() * torch.outer(kt, v[b, t].double() - s.t() @ kt)
            outs.append(s.t() @ q[b, t].double())
        rows.append(torch.stack(outs))
        finals.append(s)
    return torch.stack(rows), torch.stack(finals)
