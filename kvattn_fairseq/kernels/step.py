"""One decoding step of the linear kinds in one kernel launch (Triton), instead of the half-dozen launches of the
PyTorch form (casts, the rank-1 update, the read, the normalisation), and of the delta rule (`delta_step`:
u = beta (v - S^T k), S' = S + k u^T, out = S'^T q; each value tile needs only its own columns of S):

    S' = S + keep * phi(k) v^T          (fp32, a new tensor: fairseq's search keeps or drops the old one)
    out = phi(q)^T S'                   [* scale]                        memsizer: scale = count^-1/2
    out = phi(q)^T S' / phi(q)^T z'     (z' = z + keep * phi(k) kept as S's last column)      linear attention

phi is elu + 1 (`feature`) or the identity (features computed by the caller).  The reference is
ops/linear_scan.dot_product_step and its callers; tests/test_kernels.py checks them against each other.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

EPS = 1e-6  # ops/linear.py's clamp of the denominator
TILE = 4096  # state entries per program: a d_k x d_v state wider than this is split over d_v (its columns are
# independent); a 128 x 128 tile in one program took 255 registers and spilled 724-736 B (fp16, sm_90)


def value_block(dk: int, dv: int) -> int:
    """Columns of the state per program: a power of two, at most TILE / d_k (and 128), at least 16."""
    return max(16, min(triton.next_power_of_2(dv), 128, TILE // triton.next_power_of_2(dk)))


@triton.jit
def _elu1(x):
    return tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))


@triton.jit
def _step_kernel(q_ptr, k_ptr, v_ptr, s_ptr, s_out_ptr, out_ptr, keep_ptr, scale_ptr, order_ptr, DK, DV, COLS,
                 BK: tl.constexpr, BV: tl.constexpr, FEATURE: tl.constexpr, AUGMENT: tl.constexpr,
                 HAS_STATE: tl.constexpr, HAS_KEEP: tl.constexpr, HAS_SCALE: tl.constexpr,
                 HAS_ORDER: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    row = n  # the state row this hypothesis continues: the search's reorder, folded into the step
    if HAS_ORDER:
        row = tl.load(order_ptr + n).to(tl.int64)
    vb = tl.program_id(1)
    ok = tl.arange(0, BK)
    mk = ok < DK
    ov = vb * BV + tl.arange(0, BV)
    mv = ov < DV
    q = tl.load(q_ptr + n * DK + ok, mask=mk, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + n * DK + ok, mask=mk, other=0.0).to(tl.float32)
    if FEATURE:
        q = tl.where(mk, _elu1(q), 0.0)
        k = tl.where(mk, _elu1(k), 0.0)
    if HAS_KEEP:
        k = k * tl.load(keep_ptr + n)
    v = tl.load(v_ptr + n * DV + ov, mask=mv, other=0.0).to(tl.float32)
    tile = ok[:, None] * COLS + ov[None, :]
    m2 = mk[:, None] & mv[None, :]
    s = k[:, None] * v[None, :]
    if HAS_STATE:
        s += tl.load(s_ptr + row * DK * COLS + tile, mask=m2, other=0.0)
    tl.store(s_out_ptr + n * DK * COLS + tile, s, mask=m2)
    num = tl.sum(q[:, None] * s, axis=0)
    if AUGMENT:
        z = k
        if HAS_STATE:
            z += tl.load(s_ptr + row * DK * COLS + ok * COLS + DV, mask=mk, other=0.0)
        if vb == 0:
            tl.store(s_out_ptr + n * DK * COLS + ok * COLS + DV, z, mask=mk)
        num = num / tl.maximum(tl.sum(q * z, axis=0), 1e-6)
    if HAS_SCALE:
        num = num * tl.load(scale_ptr + n)
    tl.store(out_ptr + n * DV + ov, num, mask=mv)


def dot_product_step(q: Tensor, k: Tensor, v: Tensor, state: Optional[Tensor] = None, *, feature: bool = False,
                     augment: bool = False, keep: Optional[Tensor] = None, scale: Optional[Tensor] = None,
                     order: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """q, k [N, dk], v [N, dv], state [M, dk, dv (+1 with `augment`)] fp32 or None; keep, scale [N] fp32 or None;
    order [N]: hypothesis n continues state row order[n] (a search's reorder; default n) -> (out [N, dv] fp32, new
    state [N, ...] fp32)."""
    n, dk = k.shape
    dv = v.shape[-1]
    cols = dv + 1 if augment else dv
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if state is not None:
        state = state.to(torch.float32).contiguous()
    new = torch.empty(n, dk, cols, device=k.device, dtype=torch.float32)
    out = torch.empty(n, dv, device=k.device, dtype=torch.float32)
    bv = value_block(dk, dv)
    dummy = out  # never read: its flag is off
    _step_kernel[(n, triton.cdiv(dv, bv))](
        q, k, v, state if state is not None else dummy, new, out,
        keep.to(torch.float32).contiguous() if keep is not None else dummy,
        scale.to(torch.float32).contiguous() if scale is not None else dummy,
        order.contiguous() if order is not None else dummy,
        dk, dv, cols, BK=triton.next_power_of_2(dk), BV=bv, FEATURE=feature, AUGMENT=augment,
        HAS_STATE=state is not None, HAS_KEEP=keep is not None, HAS_SCALE=scale is not None,
        HAS_ORDER=order is not None and state is not None)
    return out, new


@triton.jit
def _delta_kernel(q_ptr, k_ptr, v_ptr, beta_ptr, s_ptr, s_out_ptr, out_ptr, order_ptr, DK, DV,
                  BK: tl.constexpr, BV: tl.constexpr, HAS_STATE: tl.constexpr, HAS_ORDER: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    row = n
    if HAS_ORDER:
        row = tl.load(order_ptr + n).to(tl.int64)
    vb = tl.program_id(1)
    ok = tl.arange(0, BK)
    mk = ok < DK
    ov = vb * BV + tl.arange(0, BV)
    mv = ov < DV
    q = tl.load(q_ptr + n * DK + ok, mask=mk, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + n * DK + ok, mask=mk, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + n * DV + ov, mask=mv, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + n).to(tl.float32)
    tile = ok[:, None] * DV + ov[None, :]
    m2 = mk[:, None] & mv[None, :]
    if HAS_STATE:
        s = tl.load(s_ptr + row * DK * DV + tile, mask=m2, other=0.0)
    else:
        s = tl.zeros([BK, BV], dtype=tl.float32)
    u = beta * (v - tl.sum(k[:, None] * s, axis=0))   # what k should read minus what it reads, scaled
    s = s + k[:, None] * u[None, :]
    tl.store(s_out_ptr + n * DK * DV + tile, s, mask=m2)
    tl.store(out_ptr + n * DV + ov, tl.sum(q[:, None] * s, axis=0), mask=mv)


def delta_step(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, state: Optional[Tensor] = None,
               order: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One delta-rule step (ops/delta.causal_step's contract, padding folded into beta by the caller): q, k [N, dk],
    v [N, dv], beta [N], state [M, dk, dv] fp32 or None, order [N] as in dot_product_step -> (out [N, dv] fp32, new
    state fp32)."""
    n, dk = k.shape
    dv = v.shape[-1]
    q, k, v, beta = q.contiguous(), k.contiguous(), v.contiguous(), beta.contiguous()
    if state is not None:
        state = state.to(torch.float32).contiguous()
    new = torch.empty(n, dk, dv, device=k.device, dtype=torch.float32)
    out = torch.empty(n, dv, device=k.device, dtype=torch.float32)
    bv = value_block(dk, dv)
    _delta_kernel[(n, triton.cdiv(dv, bv))](q, k, v, beta, state if state is not None else out, new, out,
                                           order.contiguous() if order is not None else out, dk, dv,
                                           BK=triton.next_power_of_2(dk), BV=bv, HAS_STATE=state is not None,
                                           HAS_ORDER=order is not None and state is not None)
    return out, new
