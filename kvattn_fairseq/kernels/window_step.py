"""One decoding step of window attention over its ring of the min(t, W) most recent keys and values, in one kernel
launch (Triton) per layer: copy the ring into new ring tensors one slot longer until they hold W, write the new key
and value into slot t mod W, mark the slot's validity, and read every slot with a softmax, instead of the dozen
launches of the PyTorch form (ops/window.ring_step, the reference; tests/test_kernels.py checks them against each
other).

The slots go through in tiles of `BW` with an online softmax (a running maximum, sum and weighted sum, rescaled per
tile), so a program holds BW x d keys and values at a time whatever W is: with the whole W x d ring in registers it
spilled from W * d = 16K on (352 B at W = 256, d = 64; 7 KB at W = 512; fp16, sm_90).  docs/bench/gpu/compile.md
has what each kernel compiles to now.
"""
from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

TILE = 2048  # keys (or values) per tile: BW * BD


@triton.jit(do_not_specialize=["OLD", "NEW"])  # the ring's length changes while it grows
def _ring_kernel(q_ptr, k_ptr, v_ptr, key_ptr, value_ptr, valid_ptr, count_ptr, real_ptr, order_ptr,
                 key_out, value_out, valid_out, count_out, out_ptr, H, D, OLD, NEW, scale,
                 BW: tl.constexpr, BD: tl.constexpr, TILES: tl.constexpr, HAS_ORDER: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // H
    h = pid % H
    src = b  # the ring this hypothesis continues: the search's reorder, folded into the step
    if HAS_ORDER:
        src = tl.load(order_ptr + b).to(tl.int64)
    od = tl.arange(0, BD)
    md = od < D
    count = tl.load(count_ptr + src)
    slot = count % NEW  # growing (NEW = OLD + 1, count = OLD): the new last slot; full: position count's slot
    real = tl.load(real_ptr + b) != 0
    q = tl.load(q_ptr + pid * D + od, mask=md, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + pid * D + od, mask=md, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + pid * D + od, mask=md, other=0.0).to(tl.float32)
    old = (src * H + h) * OLD * D
    new = pid * NEW * D
    top = tl.full([], float("-inf"), tl.float32)  # the running maximum of the scores
    total = tl.zeros([], dtype=tl.float32)  # sum of exp(score - top)
    acc = tl.zeros([BD], dtype=tl.float32)  # sum of exp(score - top) * value
    # a constant bound (triton 3.6's interpreter cannot loop to a run-time one): enough tiles for W slots; while
    # the ring grows, those past it are masked out
    for i in range(TILES):
        ow = i * BW + tl.arange(0, BW)
        mw = ow < NEW
        here = ow == slot
        kept = (ow < OLD) & ~here
        tile = ow[:, None] * D + od[None, :]
        m2 = mw[:, None] & md[None, :]
        m_old = kept[:, None] & md[None, :]
        keys = tl.where(here[:, None], k[None, :], tl.load(key_ptr + old + tile, mask=m_old, other=0.0))
        values = tl.where(here[:, None], v[None, :], tl.load(value_ptr + old + tile, mask=m_old, other=0.0))
        valid = tl.where(here, real, tl.load(valid_ptr + src * OLD + ow, mask=kept, other=0) != 0) & mw
        tl.store(key_out + new + tile, keys, mask=m2)
        tl.store(value_out + new + tile, values, mask=m2)
        if h == 0:
            tl.store(valid_out + b * NEW + ow, valid, mask=mw)
        scores = tl.where(valid, tl.sum(keys * q[None, :], axis=1) * scale, float("-inf"))
        top_new = tl.maximum(top, tl.max(scores, axis=0))
        shift = tl.where(top_new == float("-inf"), 0.0, top_new)  # no valid slot yet: nothing to rescale
        probs = tl.where(valid, tl.exp(scores - shift), 0.0)
        rescale = tl.exp(top - shift)
        total = total * rescale + tl.sum(probs, axis=0)
        acc = acc * rescale + tl.sum(probs[:, None] * values, axis=0)
        top = top_new
    if h == 0:
        tl.store(count_out + b, count + 1)
    tl.store(out_ptr + pid * D + od, acc / tl.where(total > 0, total, 1.0), mask=md)


def tile_slots(window: int, d: int) -> int:
    """Slots per tile: TILE elements of keys at this head width, no more than the window has."""
    bd = triton.next_power_of_2(d)
    return max(1, min(triton.next_power_of_2(window), TILE // bd))


def ring_step(q: Tensor, k: Tensor, v: Tensor, ring: Dict[str, Tensor], window: int, scale: float,
              pad: Optional[Tensor] = None, order: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
    """ops.window.ring_step's contract: q, k, v [B, H, 1, d]; ring key/value [M, H, L, d] fp32, valid [M, L] bool,
    count [M] long, L = min(count, window); pad [B] or None; order [B]: hypothesis b continues ring order[b] (a
    search's reorder; default b) -> (out [B, H, 1, d] in q's dtype, the new ring of B rows and min(L + 1, window)
    slots)."""
    bsz, heads, _, d = k.shape
    old = ring["key"].size(2)
    slots = min(old + 1, window)
    key = torch.empty(bsz, heads, slots, d, dtype=ring["key"].dtype, device=k.device)
    value = torch.empty_like(key)
    valid = torch.empty(bsz, slots, dtype=ring["valid"].dtype, device=k.device)
    count = torch.empty(bsz, dtype=ring["count"].dtype, device=k.device)
    out = torch.empty(bsz, heads, 1, d, dtype=q.dtype, device=q.device)
    real = torch.ones(bsz, dtype=torch.bool, device=k.device) if pad is None else ~pad
    bw = tile_slots(window, d)
    _ring_kernel[(bsz * heads,)](
        q.contiguous(), k.contiguous(), v.contiguous(), ring["key"].contiguous(), ring["value"].contiguous(),
        ring["valid"].contiguous(), ring["count"].contiguous(), real.contiguous(),
        order.contiguous() if order is not None else real, key, value, valid, count, out, heads, d, old, slots,
        float(scale), BW=bw, BD=triton.next_power_of_2(d), TILES=triton.cdiv(window, bw), HAS_ORDER=order is not None)
    return out, {"key": key, "value": value, "valid": valid, "count": count}
