"""One decoding step of window attention over its ring of the W most recent keys and values, in one kernel launch
(Triton) per layer: write the new key and value into slot t mod W of new ring tensors, mark the slot's validity,
and read all W slots with a softmax, instead of the dozen launches of the PyTorch form (ops/window.ring_step, the
reference; tests/test_kernels.py checks them against each other)."""
from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _ring_kernel(q_ptr, k_ptr, v_ptr, key_ptr, value_ptr, valid_ptr, count_ptr, real_ptr, order_ptr,
                 key_out, value_out, valid_out, count_out, out_ptr, H, D, W, scale,
                 BW: tl.constexpr, BD: tl.constexpr, HAS_ORDER: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // H
    h = pid % H
    src = b  # the ring this hypothesis continues: the search's reorder, folded into the step
    if HAS_ORDER:
        src = tl.load(order_ptr + b).to(tl.int64)
    od = tl.arange(0, BD)
    md = od < D
    ow = tl.arange(0, BW)
    mw = ow < W
    count = tl.load(count_ptr + src)
    slot = count % W
    here = ow == slot
    real = tl.load(real_ptr + b) != 0
    q = tl.load(q_ptr + pid * D + od, mask=md, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + pid * D + od, mask=md, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + pid * D + od, mask=md, other=0.0).to(tl.float32)
    tile = ow[:, None] * D + od[None, :]
    old = (src * H + h) * W * D
    m2 = mw[:, None] & md[None, :]
    keys = tl.where(here[:, None], k[None, :], tl.load(key_ptr + old + tile, mask=m2, other=0.0))
    values = tl.where(here[:, None], v[None, :], tl.load(value_ptr + old + tile, mask=m2, other=0.0))
    valid = tl.where(here, real, tl.load(valid_ptr + src * W + ow, mask=mw, other=0) != 0) & mw
    tl.store(key_out + pid * W * D + tile, keys, mask=m2)
    tl.store(value_out + pid * W * D + tile, values, mask=m2)
    if h == 0:
        tl.store(valid_out + b * W + ow, valid, mask=mw)
        tl.store(count_out + b, count + 1)
    scores = tl.where(valid, tl.sum(keys * q[None, :], axis=1) * scale, float("-inf"))
    top = tl.max(scores, axis=0)
    probs = tl.where(valid, tl.exp(scores - tl.where(top == float("-inf"), 0.0, top)), 0.0)
    total = tl.sum(probs, axis=0)
    out = tl.sum(probs[:, None] * values, axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + pid * D + od, out, mask=md)


def ring_step(q: Tensor, k: Tensor, v: Tensor, ring: Dict[str, Tensor], scale: float,
              pad: Optional[Tensor] = None, order: Optional[Tensor] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
    """ops.window.ring_step's contract: q, k, v [B, H, 1, d]; ring key/value [M, H, W, d] fp32, valid [M, W] bool,
    count [M] long; pad [B] or None; order [B]: hypothesis b continues ring order[b] (a search's reorder; default
    b) -> (out [B, H, 1, d] in q's dtype, the new ring of B rows)."""
    bsz, heads, _, d = k.shape
    window = ring["key"].size(2)
    key = torch.empty(bsz, heads, window, d, dtype=ring["key"].dtype, device=k.device)
    value = torch.empty_like(key)
    valid = torch.empty(bsz, window, dtype=ring["valid"].dtype, device=k.device)
    count = torch.empty(bsz, dtype=ring["count"].dtype, device=k.device)
    out = torch.empty(bsz, heads, 1, d, dtype=q.dtype, device=q.device)
    real = torch.ones(bsz, dtype=torch.bool, device=k.device) if pad is None else ~pad
    _ring_kernel[(bsz * heads,)](
        q.contiguous(), k.contiguous(), v.contiguous(), ring["key"].contiguous(), ring["value"].contiguous(),
        ring["valid"].contiguous(), ring["count"].contiguous(), real.contiguous(),
        order.contiguous() if order is not None else real, key, value, valid, count, out, heads, d, window,
        float(scale), BW=triton.next_power_of_2(window), BD=triton.next_power_of_2(d), HAS_ORDER=order is not None)
    return out, {"key": key, "value": value, "valid": valid, "count": count}
