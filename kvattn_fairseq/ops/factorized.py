"""Projection-free factorized attention: our reading of "Revisiting Linformer with a modified self-attention with
linear complexity" (Verma, arXiv 2101.10277), whose body could not be retrieved; its abstract promises linear time
and space and no projection dimension to tune.  This is the form of docs/papers/factorized.md (the "efficient attention"
factorisation):

    out_i = softmax_features(q_i)^T  sum_j softmax_positions(k)_j v_j^T

per head: queries are normalised over their d_head features, keys over positions (separately per feature), and
keys x values are contracted first (O(n d^2)).  The causal form normalises keys over the prefix j <= t; it keeps,
per head, N = sum_j exp(k_j - m) v_j^T [dk, dv], Z = sum_j exp(k_j - m) [dk] and the running maximum m [dk], all
fp32: exact (no underflow from a global shift) and constant in size.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .linear_scan import acc_dtype, as_dtype

DEFAULT_CHUNK = 32
NEG_INF = float("-inf")
State = Tuple[Tensor, Tensor, Tensor]  # (N [B, dk, dv], Z [B, dk], m [B, dk]); B may be batch x heads


def query_features(q: Tensor) -> Tensor:
    return torch.softmax(as_dtype(q, acc_dtype(q)), dim=-1)


def _mask_keys(k: Tensor, pad: Optional[Tensor]) -> Tensor:
    k = k.to(acc_dtype(k))
    return k if pad is None else k.masked_fill(pad.unsqueeze(-1), NEG_INF)


def _finite(m: Tensor) -> Tensor:
    """m with -inf (no key seen yet) replaced by 0, so that exp(x - m) never computes -inf - -inf."""
    return torch.where(torch.isinf(m), 0.0, m)


def memory(k: Tensor, v: Tensor, *, pad: Optional[Tensor] = None) -> Tensor:
    """Non-causal context: softmax over positions of k [B, S, dk], contracted with v [B, S, dv] -> [B, dk, dv]
    (fp32)."""
    k = _mask_keys(k, pad)
    weights = torch.softmax(k, dim=1)
    if pad is not None:  # a row of padding only gives zeros, not NaN
        weights = torch.nan_to_num(weights, nan=0.0)
    return torch.einsum("bsk,bsv->bkv", weights, v.to(weights.dtype))


def read(q: Tensor, mem: Tensor, out_dtype) -> Tensor:
    """out = softmax_features(q)^T mem: q [B, T, dk], mem [B, dk, dv] -> [B, T, dv]."""
    return torch.bmm(query_features(q).to(mem.dtype), mem).to(out_dtype)


def causal_step(q: Tensor, k: Tensor, v: Tensor, *, state: Optional[State] = None, pad: Optional[Tensor] = None,
                order: Optional[Tensor] = None) -> Tuple[Tensor, State]:
    """One position: q, k [B, dk], v [B, dv], pad [B] -> out [B, dv] and the new state; `order` [B]: row b continues
    state row order[b] (a search's reorder not yet applied)."""
    acc = acc_dtype(k)
    k, v = as_dtype(k, acc), as_dtype(v, acc)
    if state is not None and order is not None:
        state = tuple(t.index_select(0, order) for t in state)
    if state is None:
        bsz, dk = k.shape
        state = (k.new_zeros(bsz, dk, v.size(-1)), k.new_zeros(bsz, dk), k.new_full((bsz, dk), NEG_INF))
    num, den, m = state
    m_new = torch.maximum(m, k)
    shift = _finite(m_new)
    decay = torch.exp(m - shift)
    w = torch.exp(k - shift)
    new = (num * decay.unsqueeze(-1) + w.unsqueeze(-1) * v.unsqueeze(1), den * decay + w, m_new)
    if pad is not None:
        keep = (~pad).view(-1, 1)
        new = (torch.where(keep.unsqueeze(-1), new[0], num), torch.where(keep, new[1], den),
               torch.where(keep, new[2], m))
    num, den, m = new
    qf = query_features(q)
    out = torch.bmm((qf / den.clamp(min=1e-30)).unsqueeze(1), num).squeeze(1)
    return out, new


# Within a chunk whose finite keys span less than this, exp(k_j - R) and exp(R - m_t) (R: the chunk's maximum) stay
# inside fp32's range, so the exact prefix weights factor into a C x C matrix product.
SAFE_RANGE = 60.0


def causal_parallel(q: Tensor, k: Tensor, v: Tensor, *, state: Optional[State] = None, pad: Optional[Tensor] = None,
                    chunk: int = DEFAULT_CHUNK) -> Tuple[Tensor, State]:
    """Whole sequence: q, k [B, T, dk], v [B, T, dv] -> (out [B, T, dv] fp32, final state).

    Chunks of C positions; inside a chunk each position t normalises by its exact prefix maximum m_t, across chunks
    the running state carries (N, Z, m).  Inside a chunk, exp(k_j - m_t) = exp(k_j - R) exp(R - m_t) factors into a
    C x C product when the chunk's keys span < SAFE_RANGE (checked once per call); otherwise a [C, C, dk] tensor of
    weights is formed.  Linear in T; the loop runs over T / C chunks.
    """
    bsz, tlen, dk = k.shape
    acc = acc_dtype(k)
    qf, k, v = query_features(q), _mask_keys(k, pad), v.to(acc)
    if state is None:
        state = (k.new_zeros(bsz, dk, v.size(-1)), k.new_zeros(bsz, dk), k.new_full((bsz, dk), NEG_INF))
    num, den, m = state
    factored = _chunk_range(k, chunk) < SAFE_RANGE
    outs = []
    for start in range(0, tlen, chunk):
        qc, kc, vc = qf[:, start:start + chunk], k[:, start:start + chunk], v[:, start:start + chunk]
        c = kc.size(1)
        prefix_max = torch.maximum(m.unsqueeze(1), torch.cummax(kc, dim=1).values)  # [B, C, dk]
        pm = _finite(prefix_max)
        decay = torch.exp(m.unsqueeze(1) - pm)  # carries the earlier chunks to each position's maximum
        causal = torch.ones(c, c, dtype=torch.bool, device=k.device).tril()
        if factored:
            top = pm[:, -1:]  # R
            b = torch.exp(kc - top)  # [B, C, dk]
            lift = torch.exp(top - pm)  # [B, C, dk]
            z = lift * torch.cumsum(b, dim=1) + den.unsqueeze(1) * decay
            qz = qc / z.clamp(min=1e-30)
            scores = torch.bmm(qz * lift, b.transpose(1, 2)).masked_fill(~causal, 0.0)  # [B, t, j]
            intra = torch.bmm(scores, vc)
        else:
            w = torch.exp(kc.unsqueeze(1) - pm.unsqueeze(2)).masked_fill(~causal.view(1, c, c, 1), 0.0)
            z = w.sum(dim=2) + den.unsqueeze(1) * decay
            qz = qc / z.clamp(min=1e-30)
            intra = torch.einsum("btk,btjk,bjv->btv", qz, w, vc)
        inter = torch.einsum("btk,bkv->btv", qz * decay, num)
        outs.append(intra + inter)
        m_end = pm[:, -1]
        carry = torch.exp(m - m_end)
        w_end = torch.exp(kc - m_end.unsqueeze(1))
        num = num * carry.unsqueeze(-1) + torch.einsum("bjk,bjv->bkv", w_end, vc)
        den = den * carry + w_end.sum(dim=1)
        m = prefix_max[:, -1]
    return torch.cat(outs, dim=1), (num, den, m)


def _chunk_range(k: Tensor, chunk: int) -> float:
    """The largest spread of finite key values inside any chunk (one number: one host sync per call)."""
    bsz, tlen, dk = k.shape
    n = (tlen + chunk - 1) // chunk
    kp = torch.nn.functional.pad(k.detach(), (0, 0, 0, n * chunk - tlen), value=NEG_INF).view(bsz, n, chunk, dk)
    finite = torch.isfinite(kp)
    hi = kp.masked_fill(~finite, NEG_INF).amax(dim=2)
    lo = kp.masked_fill(~finite, float("inf")).amin(dim=2)
    spread = (hi - lo).masked_fill(~finite.any(dim=2), 0.0)
    return float(spread.max()) if spread.numel() else 0.0


def causal_reference(q: Tensor, k: Tensor, v: Tensor, *, state: Optional[State] = None,
                     pad: Optional[Tensor] = None) -> Tuple[Tensor, State]:
    """The definition, position by position, in fp64 (slow; for tests): each output normalises every key seen so
    far over positions, those `state` summarises included; the final state is (N, Z, m) of all of them."""
    bsz, tlen, dk = k.shape
    out = torch.zeros(bsz, tlen, v.size(-1), dtype=torch.float64)
    finals = []
    for b in range(bsz):
        num, den, m = (k.new_zeros(dk, v.size(-1)).double(), k.new_zeros(dk).double(),
                       k.new_full((dk,), NEG_INF).double()) if state is None else (x[b].double() for x in state)
        for t in range(tlen):
            js = [j for j in range(t + 1) if pad is None or not pad[b, j]]
            kb, vb = k[b, js].double(), v[b, js].double()
            top = torch.maximum(m, kb.amax(dim=0)) if js else m
            shift = torch.where(torch.isinf(top), torch.zeros_like(top), top)
            w = torch.exp(kb - shift)  # over positions, per feature
            n_t = num * torch.exp(m - shift).unsqueeze(-1) + w.t() @ vb
            z_t = den * torch.exp(m - shift) + w.sum(dim=0)
            out[b, t] = torch.softmax(q[b, t].double(), dim=-1) @ (n_t / z_t.clamp(min=1e-300).unsqueeze(-1))
            if t == tlen - 1:
                num, den, m = n_t, z_t, top
        finals.append((num, den, m))
    return out, tuple(torch.stack(x) for x in zip(*finals))


def reference(q: Tensor, k: Tensor, v: Tensor, *, pad: Optional[Tensor] = None, causal: bool = False) -> Tensor:
    """The definition, query by query, in fp64 (slow; for tests): the non-causal read, or (`causal`) the causal
    one."""
    if causal:
        return causal_reference(q, k, v, pad=pad)[0]
    bsz, tq, _ = q.shape
    out = torch.zeros(bsz, tq, v.size(-1), dtype=torch.float64)
    for b in range(bsz):
        js = [j for j in range(k.size(1)) if pad is None or not pad[b, j]]
        if not js:
            continue
        ctx = torch.softmax(k[b, js].double(), dim=0).t() @ v[b, js].double()
        for t in range(tq):
            out[b, t] = torch.softmax(q[b, t].double(), dim=-1) @ ctx
    return out
