"""elu+1 linear attention (Katharopoulos et al., ICML 2020), torch only.

    phi(x) = elu(x) + 1,   out_i = phi(q_i)^T S / phi(q_i)^T z,   S = sum_j phi(k_j) v_j^T,  z = sum_j phi(k_j)

over all keys (non-causal) or the prefix j <= i (causal, state (S, z) constant in size, fp32).  S and z are kept as
one tensor [.., dk, dv + 1] (values augmented with a column of ones), so one prefix product gives both.
Denominators are clamped at EPS: phi > 0 makes them positive, but a row with no key at all would be 0/0.
"""
from types import SimpleNamespace
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import kernels
from .linear_scan import DEFAULT_CHUNK, acc_dtype, as_dtype, causal_dot_product, dot_product_step

EPS = 1e-6


def feature_map(x: Tensor) -> Tensor:
    return F.elu(as_dtype(x, acc_dtype(x))) + 1.0


def _values_with_ones(fk: Tensor, v: Tensor, pad: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    if pad is not None:
        fk = fk.masked_fill(pad.unsqueeze(-1), 0.0)
    return fk, F.pad(as_dtype(v, fk.dtype), (0, 1), value=1.0)  # [v, 1]


def _normalise(num_den: Tensor) -> Tensor:
    return num_den[..., :-1] / num_den[..., -1:].clamp(min=EPS)


# The *_features functions take phi(q), phi(k) already computed (MLK mixes several key feature maps); `ON_FEATURES`
# below names them as the family's usual four.
def memory_features(fk: Tensor, v: Tensor, *, pad: Optional[Tensor] = None) -> Tensor:
    """Non-causal (S | z): phi(k) [N, S, dk], v [N, S, dv] -> [N, dk, dv + 1] fp32."""
    fk, va = _values_with_ones(fk, v, pad)
    return torch.einsum("bsk,bsv->bkv", fk, va)


def read_features(fq: Tensor, mem: Tensor, out_dtype) -> Tensor:
    return _normalise(torch.bmm(fq.to(mem.dtype), mem)).to(out_dtype)


def causal_parallel_features(fq: Tensor, fk: Tensor, v: Tensor, *, state: Optional[Tensor] = None,
                             pad: Optional[Tensor] = None, chunk: int = DEFAULT_CHUNK) -> Tuple[Tensor, Tensor]:
    """phi(q), phi(k) [N, T, dk], v [N, T, dv] -> (out [N, T, dv], state [N, dk, dv + 1]), fp32."""
    if kernels.fused_chunk("linear", fk):
        from ..kernels.chunked import causal_linear

        return causal_linear(fq, fk if pad is None else fk.masked_fill(pad.unsqueeze(-1), 0.0), v, state)
    fk, va = _values_with_ones(fk, v, pad)
    num_den, state = causal_dot_product(fq, fk, va, state=state, chunk=chunk)
    return _normalise(num_den), state


def _fused_step(q, k, v, state, pad, feature: bool, order):
    from ..kernels.step import dot_product_step as fused

    return fused(q, k, v, state, feature=feature, augment=True, keep=None if pad is None else (~pad).float(),
                 order=order)


def causal_step_features(fq: Tensor, fk: Tensor, v: Tensor, *, state: Optional[Tensor] = None,
                         pad: Optional[Tensor] = None, order: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """phi(q), phi(k) [N, dk], v [N, dv] -> (out [N, dv], state [N, dk, dv + 1]), fp32."""
    if kernels.fused_step(fk):
        return _fused_step(fq, fk, v, state, pad, False, order)
    return _step_features(fq, fk, v, state, pad, order)


def _step_features(fq: Tensor, fk: Tensor, v: Tensor, state: Optional[Tensor], pad: Optional[Tensor],
                   order: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    if order is not None and state is not None:
        state = state.index_select(0, order)
    fk, va = _values_with_ones(fk, v, pad)
    num_den, state = dot_product_step(fq, fk, va, state=state)
    return _normalise(num_den), state


ON_FEATURES = SimpleNamespace(memory=memory_features, read=read_features, causal_parallel=causal_parallel_features,
                              causal_step=causal_step_features)


def memory(k: Tensor, v: Tensor, *, pad: Optional[Tensor] = None) -> Tensor:
    return memory_features(feature_map(k), v, pad=pad)


def read(q: Tensor, mem: Tensor, out_dtype) -> Tensor:
    return read_features(feature_map(q), mem, out_dtype)


def causal_parallel(q: Tensor, k: Tensor, v: Tensor, *, state: Optional[Tensor] = None, pad: Optional[Tensor] = None,
                    chunk: int = DEFAULT_CHUNK) -> Tuple[Tensor, Tensor]:
    return causal_parallel_features(feature_map(q), feature_map(k), v, state=state, pad=pad, chunk=chunk)


def causal_step(q: Tensor, k: Tensor, v: Tensor, *, state: Optional[Tensor] = None, pad: Optional[Tensor] = None,
                order: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    if kernels.fused_step(k):
        return _fused_step(q, k, v, state, pad, True, order)  # elu + 1 inside the kernel
    return _step_features(feature_map(q), feature_map(k), v, state, pad, order)


def reference(q: Tensor, k: Tensor, v: Tensor, *, pad: Optional[Tensor] = None, causal: bool = False) -> Tensor:
    """The definition as attention weights phi(q_i).phi(k_j), normalised, in fp64 (slow; for tests)."""
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


def causal_reference(q: Tensor, k: Tensor, v: Tensor, *, state: Optional[Tensor] = None,
                     pad: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The recurrence, position by position, in fp64 (slow; for tests): (out [N, T, dv], final (S | z))."""
    n, tlen, dk = k.shape
    fq, fk = F.elu(q.double()) + 1, F.elu(k.double()) + 1
    s = torch.zeros(n, dk, v.size(-1) + 1, dtype=torch.float64) if state is None else state.double()
    out = torch.zeros(n, tlen, v.size(-1), dtype=torch.float64)
    for t in range(tlen):
        keep = 1.0 if pad is None else (~pad[:, t]).double().view(n, 1, 1)
        va = torch.cat([v[:, t].double(), torch.ones(n, 1, dtype=torch.float64)], dim=-1)
        s = s + keep * fk[:, t].unsqueeze(2) * va.unsqueeze(1)
        num_den = torch.bmm(fq[:, t].unsqueeze(1), s).squeeze(1)
        out[:, t] = num_den[:, :-1] / num_den[:, -1:].clamp(min=EPS)
    return out, s
