"""Sliding-window softmax attention, torch only (the window of Longformer, Beltagy et al. 2020, and of Based,
Arora et al. 2024).  See docs/papers/sliding-window.md.

Query i sees key j when their distance is below the window W:
    causal      0 <= i - j < W     (the W most recent positions, itself included)
    non-causal  |i - j| < W        (up to W - 1 on each side)
Distances count positions, so a left- or right-padded row (pads contiguous at one end) sees exactly the keys it
would see alone; padded keys are masked.  A query with no visible key gets zeros.

Shapes: q [B, H, Tq, d], k and v [B, H, Tk, d]; the queries are the last Tq of the Tk positions (Tk - Tq keys of an
earlier call precede them: decoding and prefill).  Scores, softmax and the weighted sum run in fp32.

Two implementations agree with the definition (`reference`): `attention` picks a dense product for a few queries
and otherwise the blocked path, which cuts the positions into blocks of W and lets each block of queries see only
its own block and its neighbours: O(T * W) time and memory, never a T x T matrix.  On a GPU the blocks go through
torch's fused scaled-dot-product attention (one kernel, backward included) instead of the unfused product.

Decoding keeps a ring of the min(t, W) most recent keys and values (`Ring`): it grows by one slot per token until it
holds W, then the new token's key and value overwrite the oldest slot (position t always goes to slot t mod W) and
the query reads every slot.  Softmax attention does not care in which order its keys come, so the ring is never
rotated: a step writes one slot and reads at most W, whatever t is, and a short generation keeps only its own t.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import kernels

FEW_QUERIES = 8


def _attend(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float, dropout_p: float,
            training: bool) -> Tensor:
    """softmax over the allowed keys (any leading dims; `allowed` broadcasts to the scores); empty rows give 0."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    empty = ~allowed.any(dim=-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")).masked_fill(empty, 0.0), dim=-1)
    probs = probs.masked_fill(empty | ~allowed, 0.0)
    if dropout_p > 0.0 and training:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, v.float())


def _band(q_pos: Tensor, k_pos: Tensor, window: int, causal: bool) -> Tensor:
    dist = q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)
    return ((dist >= 0) if causal else (dist > -window)) & (dist < window)


def attention(q: Tensor, k: Tensor, v: Tensor, window: int, causal: bool, key_pad: Optional[Tensor] = None,
              scale: float = 1.0, dropout_p: float = 0.0, training: bool = False) -> Tensor:
    """Windowed attention (see the module docstring); key_pad [B, Tk] True at padded keys.  Returns q's dtype."""
    tq, tk = q.size(-2), k.size(-2)
    if tq <= FEW_QUERIES or tk <= window:
        pos = torch.arange(tk, device=q.device)
        allowed = _band(pos[tk - tq:], pos, window, causal).view(1, 1, tq, tk)
        if key_pad is not None:
            allowed = allowed & ~key_pad.view(key_pad.size(0), 1, 1, tk)
        return _attend(q, k, v, allowed, scale, dropout_p, training).to(q.dtype)
    return _blocked(q, k, v, window, causal, key_pad, scale, dropout_p, training).to(q.dtype)


def _blocked(q, k, v, window, causal, key_pad, scale, dropout_p, training):
    bsz, heads, tq, d = q.shape
    tk, c = k.size(-2), window
    # queries aligned with their key positions: the Tk - Tq earlier positions get dummy queries, dropped at the end
    q = F.pad(q, (0, 0, tk - tq, 0))
    n = (tk + c - 1) // c
    extra = n * c - tk
    q, k, v = (F.pad(t, (0, 0, 0, extra)) for t in (q, k, v))
    valid = torch.ones(bsz, tk, dtype=torch.bool, device=q.device) if key_pad is None else ~key_pad
    valid = F.pad(valid, (0, extra), value=False)
    # keys of block i: blocks i-1 and i (causal), and i+1 too (non-causal); absent neighbours are invalid padding
    sides = (1, 0) if causal else (1, 1)

    def neighbours(t: Tensor, fill) -> Tensor:
        blocks = t.unflatten(2 if t.dim() == 4 else 1, (n, c))
        dim = 2 if t.dim() == 4 else 1
        padded = torch.cat([torch.full_like(blocks.narrow(dim, 0, 1), fill)] * sides[0] + [blocks] +
                           [torch.full_like(blocks.narrow(dim, 0, 1), fill)] * sides[1], dim=dim)
        span = [padded.narrow(dim, s, n) for s in range(sum(sides) + 1)]
        return torch.cat(span, dim=dim + 1)  # [.., n, (1 + sides) * c, ..]

    kb, vb = neighbours(k, 0.0), neighbours(v, 0.0)              # [B, H, n, S, d]
    valid_b = neighbours(valid, False)                           # [B, n, S]
    qb = q.unflatten(2, (n, c))                                  # [B, H, n, c, d]
    local = torch.arange(c, device=q.device)
    span = torch.arange(kb.size(3), device=q.device) - sides[0] * c
    allowed = _band(local, span, window, causal).view(1, 1, 1, c, -1) & valid_b.view(bsz, 1, n, 1, -1)
    if kernels.sdpa_ok(q):
        out = _fused_blocks(qb, kb, vb, allowed, sides[0] * c, scale, dropout_p, training)
    else:
        out = _attend(qb, kb, vb, allowed, scale, dropout_p, training)
    return out.flatten(2, 3)[:, :, tk - tq:tk]


def _fused_blocks(qb: Tensor, kb: Tensor, vb: Tensor, allowed: Tensor, offset: int, scale: float, dropout_p: float,
                  training: bool) -> Tensor:
    """The blocked product through F.scaled_dot_product_attention: blocks become the batch ([B * n, H, c, d]) so
    that one boolean mask per block broadcasts over the heads.  A row with no visible key (a padded query whose
    whole window is padding) would come out NaN from the fused softmax: it sees its own slot instead, and is zeroed
    afterwards, as the reference gives it zeros."""
    bsz, heads, n, c, d = qb.shape
    span = kb.size(3)
    empty = ~allowed.any(dim=-1, keepdim=True)                          # [B, 1, n, c, 1]
    diagonal = torch.arange(span, device=qb.device).view(1, span) == \
        (torch.arange(c, device=qb.device) + offset).view(c, 1)
    mask = (allowed | (empty & diagonal)).expand(bsz, 1, n, c, span)

    def blocks(t: Tensor) -> Tensor:
        return t.transpose(1, 2).reshape(bsz * n, heads, t.size(3), d)

    out = F.scaled_dot_product_attention(blocks(qb), blocks(kb.to(qb.dtype)), blocks(vb.to(qb.dtype)),
                                         attn_mask=mask.transpose(1, 2).reshape(bsz * n, 1, c, span),
                                         dropout_p=dropout_p if training else 0.0, scale=scale)
    out = out.view(bsz, n, heads, c, d).transpose(1, 2)
    return out.masked_fill(empty.view(bsz, 1, n, c, 1), 0.0)


Ring = Dict[str, Tensor]  # key, value [B, H, L, d] fp32; valid [B, L] (slot holds a real token); count [B] long
# L = min(count, W): every row has seen the same number of positions (pads included), so L is the tensors' own size


def ring_step(q: Tensor, k: Tensor, v: Tensor, ring: Optional[Ring], window: int, scale: float,
              pad: Optional[Tensor] = None, order: Optional[Tensor] = None) -> (Tensor, Ring):
    """One decoding step: q, k, v [B, H, 1, d], pad [B] (True: the new token is padding), order [B] (row b
    continues ring row order[b]: a search's reorder not yet applied) -> (out [B, H, 1, d] in q's dtype, the new
    ring, one slot longer until it holds `window`).  The rings are new tensors: fairseq's search may still reorder or
    drop the old."""
    bsz, heads, _, d = k.shape
    if ring is None:
        ring, order = ring_empty(bsz, heads, d, k.device), None
    if kernels.triton_ok(q) and q.dtype != torch.float64:
        from ..kernels.window_step import ring_step as fused

        return fused(q, k, v, ring, window, scale, pad, order)
    if order is not None:
        ring = {name: t.index_select(0, order) for name, t in ring.items()}
    old = ring["key"].size(2)
    new = min(old + 1, window)
    # growing, count == old and the slot is the new last one; full, the slot of position count is count mod W
    slot = (ring["count"] % new).view(bsz, 1, 1, 1)
    key = F.pad(ring["key"], (0, 0, 0, new - old)).scatter(2, slot.expand(bsz, heads, 1, d), k.float())
    value = F.pad(ring["value"], (0, 0, 0, new - old)).scatter(2, slot.expand(bsz, heads, 1, d), v.float())
    real = torch.ones(bsz, 1, dtype=torch.bool, device=k.device) if pad is None else ~pad.view(bsz, 1)
    valid = F.pad(ring["valid"], (0, new - old), value=False).scatter(1, slot.view(bsz, 1), real)
    out = _attend(q, key, value, valid.view(bsz, 1, 1, new), scale, 0.0, False)
    return out.to(q.dtype), {"key": key, "value": value, "valid": valid, "count": ring["count"] + 1}


def ring_empty(bsz: int, heads: int, d: int, device) -> Ring:
    """The ring before the first token: no slot yet."""
    return {"key": torch.zeros(bsz, heads, 0, d, device=device),
            "value": torch.zeros(bsz, heads, 0, d, device=device),
            "valid": torch.zeros(bsz, 0, dtype=torch.bool, device=device),
            "count": torch.zeros(bsz, dtype=torch.long, device=device)}


def ring_prefill(q: Tensor, k: Tensor, v: Tensor, ring: Optional[Ring], window: int, scale: float,
                 pad: Optional[Tensor] = None) -> (Tensor, Ring):
    """Several tokens at once (a prompt): the ring's keys in the order of their positions, then the new ones,
    through `attention`; the ring then holds the last min(count, W) of them.  q, k, v [B, H, T, d], pad [B, T]."""
    bsz, heads, tlen, d = k.shape
    if ring is None:
        ring = ring_empty(bsz, heads, d, k.device)
    count, old = ring["count"], ring["key"].size(2)
    # positions of the ring's slots, oldest first, and the slot each sits in (position p lives in slot p mod W)
    pos = count.view(bsz, 1) - old + torch.arange(old, device=k.device).view(1, old)
    order = pos % window
    gather = order.view(bsz, 1, old, 1).expand(bsz, heads, old, d)
    keys = torch.cat([ring["key"].gather(2, gather), k.float()], dim=2)
    values = torch.cat([ring["value"].gather(2, gather), v.float()], dim=2)
    new_pad = torch.zeros(bsz, tlen, dtype=torch.bool, device=k.device) if pad is None else pad
    key_pad = torch.cat([~ring["valid"].gather(1, order), new_pad], dim=1)
    out = attention(q, keys, values, window, True, key_pad, scale)
    # the last min(count + T, W) positions go to their slots
    new = min(old + tlen, window)
    last = torch.cat([pos, count.view(bsz, 1) + torch.arange(tlen, device=k.device).view(1, tlen)], dim=1)[:, -new:]
    slots = (last % window).view(bsz, 1, new, 1).expand(bsz, heads, new, d)
    ring = {"key": keys.new_zeros(bsz, heads, new, d).scatter(2, slots, keys[:, :, -new:]),
            "value": values.new_zeros(bsz, heads, new, d).scatter(2, slots, values[:, :, -new:]),
            "valid": key_pad.new_zeros(bsz, new).scatter(1, last % window, ~key_pad[:, -new:]),
            "count": count + tlen}
    return out, ring


def grow_ring(ring: Ring, positions: int, window: int) -> Ring:
    """The shapes (and counter) a ring has after `positions` tokens, its slots filled by repeating this ring's
    (the benchmark's shortcut to a long decode: bench/decode.grown_state)."""
    new = min(positions, window)

    def tile(t: Tensor, dim: int) -> Tensor:
        reps = [1] * t.dim()
        reps[dim] = -(-new // t.size(dim))
        return t.repeat(*reps).narrow(dim, 0, new).contiguous()

    return {"key": tile(ring["key"], 2), "value": tile(ring["value"], 2), "valid": tile(ring["valid"], 1),
            "count": torch.full_like(ring["count"], positions)}


def reference(q: Tensor, k: Tensor, v: Tensor, window: int, causal: bool, key_pad: Optional[Tensor] = None,
              scale: float = 1.0) -> Tensor:
    """The definition, query by query, in fp64 (slow; for tests)."""
    bsz, heads, tq, _ = q.shape
    tk = k.size(-2)
    out = torch.zeros(bsz, heads, tq, v.size(-1), dtype=torch.float64)
    for b in range(bsz):
        for i in range(tq):
            pos = tk - tq + i
            js = [j for j in range(tk) if (0 <= pos - j if causal else -window < pos - j) and pos - j < window
                  and (key_pad is None or not bool(key_pad[b, j]))]
            if not js:
                continue
            for h in range(heads):
                s = torch.stack([q[b, h, i].double() @ k[b, h, j].double() * scale for j in js])
                w = torch.softmax(s, dim=0)
                out[b, h, i] = sum(w[n] * v[b, h, j].double() for n, j in enumerate(js))
    return out
