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
(decoding) and otherwise the blocked path, which cuts the positions into blocks of W and lets each block of queries
see only its own block and its neighbours: O(T * W) time and memory, never a T x T matrix.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

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
    out = _attend(qb, kb, vb, allowed, scale, dropout_p, training)
    return out.flatten(2, 3)[:, :, tk - tq:tk]


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
