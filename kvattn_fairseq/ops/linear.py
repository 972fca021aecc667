"""elu+1 linear attention (Katharopoulos et al., ICML 2020), torch only.

    phi(x) = elu(x) + 1,   out_i = phi(q_i)^T S / phi(q_i)^T z,   S = sum_j phi(k_j) v_j^T,  z = sum_j phi(k_j)

over all keys (non-causal) or the prefix j <= i (causal, state (S, z) constant in size, fp32).  S and z are kept as
one tensor [.., dk, dv + 1] (values augmented with a column of ones), so one prefix product gives both.
Denominators are clamped at EPS: phi > 0 makes them positive, but a row with no key at all would be 0/0.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import kernels
from .linear_scan import DEFAULT_CHUNK, acc_dtype, causal_dot_product, dot_product_step

EPS = 1e-6


def feature_map(x: Tensor) -> Tensor:
    return F.elu(x.to(acc_dtype(x))) + 1.0


def _values_with_ones(fk: Tensor, v: Tensor, pad: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    if pad is not None:
        fk = fk.masked_fill(pad.unsqueeze(-1), 0.0)
    ones = torch.ones_like(v[..., :1], dtype=fk.dtype)
    return fk, torch.cat([v.to(fk.dtype), ones], dim=-1)


def _normalise(num_den: Tensor) -> Tensor:
    return num_den[..., :-1] / num_den[..., -1:].clamp(min=EPS)


# The *_features functions take phi(q), phi(k) already computed (MLK mixes several key feature maps).
def memory_features(fk: Tensor, v: Tensor, pad: Optional[Tensor] = None) -> Tensor:
    """Non-causal (S | z): phi(k) [B, S, dk], v [B, S, dv] -> [B, dk, dv + 1] fp32."""
    fk, va = _values_with_ones(fk, v, pad)
    return torch.einsum("bsk,bsv->bkv", fk, va)


def read_features(fq: Tensor, mem: Tensor, out_dtype) -> Tensor:
    return _normalise(torch.bmm(fq.to(mem.dtype), mem)).to(out_dtype)


def causal_parallel_features(fq: Tensor, fk: Tensor, v: Tensor, pad: Optional[Tensor] = None,
                             state: Optional[Tensor] = None, chunk: int = DEFAULT_CHUNK) -> Tuple[Tensor, Tensor]:
    """phi(q), phi(k) [B, T, dk], v [B, T, dv] -> (out [B, T, dv], state [B, dk, dv + 1]), fp32."""
    if kernels.fla_ok(fk) and fk.dtype != torch.float64:
        from ..kernels.chunked import causal_linear

        return causal_linear(fq, fk if pad is None else fk.masked_fill(pad.unsqueeze(-1), 0.0), v, state)
    fk, va = _values_with_ones(fk, v, pad)
    num_den, state = causal_dot_product(fq, fk, va, state, chunk)
    return _normalise(num_den), state


def _fused_step(q, k, v, state, pad, feature: bool, order):
    from ..kernels.step import dot_product_step as fused

    return fused(q, k, v, state, feature=feature, augment=True, keep=None if pad is None else (~pad).float(),
                 order=order)


def causal_step_features(fq: Tensor, fk: Tensor, v: Tensor, state: Optional[Tensor] = None,
                         pad: Optional[Tensor] = None, order: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """`order` [B]: row b continues state row order[b] (a search's reorder not yet applied)."""
    if kernels.triton_ok(fk) and fk.dtype != torch.float64:
        return _fused_step(fq, fk, v, state, pad, False, order)
    if order is not None and state is not None:
        state = state.index_select(0, order)
    fk, va = _values_with_ones(fk, v, pad)
    num_den, state = dot_product_step(fq, fk, va, state)
    return _normalise(num_den), state


def memory(k: Tensor, v: Tensor, pad: Optional[Tensor] = None) -> Tensor:
    return memory_features(feature_map(k), v, pad)


def read(q: Tensor, mem: Tensor, out_dtype) -> Tensor:
    return read_features(feature_map(q), mem, out_dtype)


def causal_parallel(q: Tensor, k: Tensor, v: Tensor, pad: Optional[Tensor] = None, state: Optional[Tensor] = None,
                    chunk: int = DEFAULT_CHUNK) -> Tuple[Tensor, Tensor]:
    return causal_parallel_features(feature_map(q), feature_map(k), v, pad, state, chunk)


def causal_step(q: Tensor, k: Tensor, v: Tensor, state: Optional[Tensor] = None,
                pad: Optional[Tensor] = None, order: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    if kernels.triton_ok(k) and k.dtype != torch.float64:
        return _fused_step(q, k, v, state, pad, True, order)  # elu + 1 inside the kernel
    return causal_step_features(feature_map(q), feature_map(k), v, state, pad, order)


def reference(q: Tensor, k: Tensor, v: Tensor, pad: Optional[Tensor] = None, causal: bool = True) -> Tensor:
    """The definition in fp64 (slow; for tests)."""
    bsz, tq, _ = q.shape
    out = torch.zeros(bsz, tq, v.size(-1), dtype=torch.float64)
    fq, fk = F.elu(q.double()) + 1, F.elu(k.double()) + 1
    for b in range(bsz):
        for t in range(tq):
            js = [j for j in range(k.size(1)) if (not causal or j <= t) and (pad is None or not pad[b, j])]
            if not js:
                continue
            w = torch.stack([fq[b, t] @ fk[b, j] for j in js])
            out[b, t] = (w.unsqueeze(-1) * v[b, js].double()).sum(0) / w.sum()
    return out
