"""The causal prefix product shared by the linear kinds (MemSizer, elu+1 linear attention, MLK):

    out_t = q_t^T (S_0 + sum_{j<=t} k_j v_j^T)        q, k [N, T, dk], v [N, T, dv], S [N, dk, dv]

computed in chunks of C positions: inside a chunk in its attention form (C x C), across chunks through running
sums.  Work O(T*C*(dk+dv) + T*dk*dv), memory O(T*C + (T/C)*dk*dv): linear in T, and nothing T x T or
T x dk x dv is ever built.  Accumulation is fp32 (fp64 stays fp64).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import kernels

DEFAULT_CHUNK = 64


def acc_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """t.to(dtype), without the call when it is one already (a decoding step's ops are mostly such calls)."""
    return t if t.dtype == dtype else t.to(dtype)


def causal_dot_product(q: Tensor, k: Tensor, v: Tensor, *, state: Optional[Tensor] = None,
                       chunk: int = DEFAULT_CHUNK) -> Tuple[Tensor, Tensor]:
    """Returns (out [N, T, dv], final state S_T [N, dk, dv]), both in the accumulation dtype."""
    if kernels.fused_chunk("linear", k):
        from ..kernels.chunked import causal_dot_product as fused

        return fused(q, k, v, state)
    n, tlen, dk = k.shape
    dv = v.shape[-1]
    acc = acc_dtype(k)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    c = max(1, min(chunk, tlen))
    nc = (tlen + c - 1) // c
    if nc * c != tlen:
        extra = nc * c - tlen
        q, k, v = (F.pad(x, (0, 0, 0, extra)) for x in (q, k, v))
    qc, kc, vc = q.view(n, nc, c, dk), k.view(n, nc, c, dk), v.view(n, nc, c, dv)

    chunk_sums = torch.einsum("nctk,nctv->nckv", kc, vc)
    before = torch.cumsum(chunk_sums, dim=1) - chunk_sums  # the state entering each chunk
    if state is not None:
        before = before + state.to(acc).unsqueeze(1)
    inter = torch.einsum("nctk,nckv->nctv", qc, before)
    scores = torch.einsum("nctk,ncsk->ncts", qc, kc)
    mask = torch.ones(c, c, dtype=torch.bool, device=k.device).tril()
    intra = torch.einsum("ncts,ncsv->nctv", scores.masked_fill(~mask, 0.0), vc)
    out = (inter + intra).reshape(n, nc * c, dv)[:, :tlen]
    final = chunk_sums.sum(dim=1)
    if state is not None:
        final = final + state.to(acc)
    return out, final


def dot_product_step(q: Tensor, k: Tensor, v: Tensor, *, state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One position: q, k [N, dk], v [N, dv] -> (out [N, dv], new state [N, dk, dv]) in the accumulation dtype."""
    acc = acc_dtype(k)
    k, v = as_dtype(k, acc).unsqueeze(2), as_dtype(v, acc).unsqueeze(1)
    # one elementwise pass instead of baddbmm's tiny GEMM per row (about 2x faster on CPU for a 64x65 state)
    state = k * v if state is None else torch.addcmul(as_dtype(state, acc), k, v)
    return torch.bmm(as_dtype(q, acc).unsqueeze(1), state).squeeze(1), state


def causal_dot_product_reference(q: Tensor, k: Tensor, v: Tensor, *,
                                 state: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The definition, position by position, in fp64 (slow; for tests): (out, final state)."""
    n, tlen, _ = k.shape
    out = torch.zeros(n, tlen, v.shape[-1], dtype=torch.float64, device=k.device)
    s = torch.zeros(n, k.shape[-1], v.shape[-1], dtype=torch.float64, device=k.device) if state is None else \
        state.double()
    for t in range(tlen):
        s = s + k[:, t].double().unsqueeze(2) * v[:, t].double().unsqueeze(1)
        out[:, t] = torch.bmm(q[:, t].double().unsqueeze(1), s).squeeze(1)
    return out, s
