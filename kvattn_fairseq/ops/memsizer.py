"""MemSizer attention math (Zhang & Cai, EMNLP 2022), torch only.

Notation (batch first):
  p  [B, T, k]  read distribution over the k slots, already averaged over heads (see `slot_distribution`)
  a  [B, S, k]  LayerNormed key features of the sources (W_l x), one weight per slot
  u  [B, S, d]  LayerNormed values of the sources (W_r x)
  pad [B, S]    True at padded positions; they contribute nothing and are not counted

Non-causal: M = n^{-1/2} sum_i a_i u_i^T (k x d), out = M^T p.
Causal:     out_t = t^{-1/2} (sum_{i<=t} a_i u_i^T)^T p_t, t counting the non-pad tokens so far.

Running sums and counters are fp32 (the official code's fp16 counter stops at 2048); outputs come back in the
input dtype.  Three implementations of the causal form agree: `causal_reference` (loops, the definition, fp64),
`causal_parallel` (chunked, linear in T, the training path and prefill) and `causal_step` (one token).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import kernels
from .linear_scan import DEFAULT_CHUNK, acc_dtype as _acc_dtype, as_dtype, causal_dot_product, dot_product_step

State = Tuple[Tensor, Tensor]  # (S [B, k, d] fp32 unscaled running sum, count [B] int64)


def slot_distribution(logits: Tensor, num_heads: int, dropout_p: float = 0.0, training: bool = False) -> Tensor:
    """The lightweight multi-head read: [..., h*k] logits -> mean over heads of softmax over the k slots."""
    shape = logits.shape
    probs = torch.softmax(as_dtype(logits.view(*shape[:-1], num_heads, shape[-1] // num_heads), _acc_dtype(logits)),
                          dim=-1)
    if dropout_p > 0.0 and training:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return probs.mean(dim=-2)


def masked_keys(a: Tensor, pad: Optional[Tensor]) -> Tensor:
    return a if pad is None else a.masked_fill(pad.unsqueeze(-1), 0.0)


def memory(a: Tensor, u: Tensor, *, pad: Optional[Tensor] = None) -> Tensor:
    """Non-causal memory M = n^{-1/2} sum_i a_i u_i^T, [B, k, d] in fp32; n is the true (non-pad) length."""
    acc = _acc_dtype(a)
    a = masked_keys(a, pad).to(acc)
    if pad is None:
        n = torch.full((a.shape[0],), a.shape[1], dtype=acc, device=a.device)
    else:
        n = (~pad).sum(dim=1).to(acc).clamp(min=1.0)
    return torch.einsum("bsk,bsd->bkd", a, u.to(acc)) * n.rsqrt().view(-1, 1, 1)


def read(p: Tensor, mem: Tensor, out_dtype: torch.dtype) -> Tensor:
    """out = M^T p for every query: p [B, T, k], M [B, k, d] -> [B, T, d]."""
    return torch.bmm(p.to(mem.dtype), mem).to(out_dtype)


def causal_step(p: Tensor, a: Tensor, u: Tensor, *, state: Optional[State] = None, pad: Optional[Tensor] = None,
                order: Optional[Tensor] = None) -> Tuple[Tensor, State]:
    """One token: p [B, k], a [B, k], u [B, d], pad [B] -> out [B, d], new state; `order` [B]: row b continues
    state row order[b] (a search's reorder not yet applied)."""
    s, count = state if state is not None else (None, None)
    if order is not None and count is not None:
        count = count.index_select(0, order)
    fused = kernels.fused_step(a)
    if order is not None and s is not None and not fused:
        s = s.index_select(0, order)
    if pad is None:  # every row counts this token: the count is at least 1
        keep = None
        count = torch.ones(a.size(0), dtype=torch.long, device=a.device) if count is None else count + 1
        scale = count
    else:
        keep = (~pad).long()
        count = keep if count is None else count + keep
        scale = count.clamp(min=1)
    if fused:
        from ..kernels import step as kernel

        out, s = kernel.dot_product_step(p, a, u, s, keep=None if keep is None else keep.float(),
                                         scale=scale.float().rsqrt(), order=order)
        return as_dtype(out, u.dtype), (s, count)
    if pad is not None:
        a = a.masked_fill(pad.unsqueeze(-1), 0.0)
    out, s = dot_product_step(p, a, u, state=s)
    out = out * scale.to(out.dtype).rsqrt().unsqueeze(1)
    return as_dtype(out, u.dtype), (s, count)


def causal_parallel(p: Tensor, a: Tensor, u: Tensor, *, state: Optional[State] = None, pad: Optional[Tensor] = None,
                    chunk: int = DEFAULT_CHUNK) -> Tuple[Tensor, State]:
    """Whole sequence at once, linear in T (see linear_scan): p [B, T, k], a [B, T, k], u [B, T, d] -> (out
    [B, T, d], final state).  `state` continues an earlier call (prefill after a prompt); the final state equals the
    one stepping token by token reaches.
    """
    acc = _acc_dtype(a)
    s0, c0 = state if state is not None else (None, None)
    num, s_last = causal_dot_product(p, masked_keys(a, pad), u, state=s0, chunk=chunk)
    keep = torch.ones(a.shape[:2], dtype=acc, device=a.device) if pad is None else (~pad).to(acc)
    count = torch.cumsum(keep, dim=1)
    if c0 is not None:
        count = count + c0.to(acc).unsqueeze(1)
    out = (num * count.clamp(min=1.0).rsqrt().unsqueeze(-1)).to(u.dtype)
    c_last = keep.sum(dim=1).long() + (c0 if c0 is not None else 0)
    return out, (s_last, c_last)


def causal_reference(p: Tensor, a: Tensor, u: Tensor, *, state: Optional[State] = None,
                     pad: Optional[Tensor] = None) -> Tuple[Tensor, State]:
    """The definition, position by position, in fp64 (slow; for tests): (out, final (S, count))."""
    bsz, tlen, k = a.shape
    out = torch.zeros(bsz, tlen, u.shape[-1], dtype=torch.float64, device=a.device)
    sums, counts = [], []
    for b in range(bsz):
        mem = torch.zeros(k, u.shape[-1], dtype=torch.float64, device=a.device) if state is None else \
            state[0][b].double()
        n = 0 if state is None else int(state[1][b])
        for t in range(tlen):
            if pad is None or not bool(pad[b, t]):
                mem = mem + torch.outer(a[b, t].double(), u[b, t].double())
                n += 1
            out[b, t] = (mem / max(n, 1) ** 0.5).t() @ p[b, t].double()
        sums.append(mem)
        counts.append(n)
    return out, (torch.stack(sums), torch.tensor(counts, dtype=torch.long, device=a.device))


def reference(p: Tensor, a: Tensor, u: Tensor, *, pad: Optional[Tensor] = None, causal: bool = False) -> Tensor:
    """The definition, query by query, in fp64 (slow; for tests): the non-causal read, or (`causal`) the causal
    one."""
    if causal:
        return causal_reference(p, a, u, pad=pad)[0]
    bsz, tlen, _ = p.shape
    out = torch.zeros(bsz, tlen, u.shape[-1], dtype=torch.float64, device=a.device)
    for b in range(bsz):
        idx = [i for i in range(a.shape[1]) if pad is None or not bool(pad[b, i])]
        mem = sum(torch.outer(a[b, i].double(), u[b, i].double()) for i in idx) / max(len(idx), 1) ** 0.5
        for t in range(tlen):
            out[b, t] = mem.t() @ p[b, t].double()
    return out
