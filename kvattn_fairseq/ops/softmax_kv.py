"""Query-less softmax attention of the Key-Value Transformer (Borji, 2023), torch only.

Symmetric (`kv`): each token's query is its own key, s_ij = tau * k_i.k_j (tau = 1/sqrt(d_head)), before masking.
Asymmetric (`kv_asym`): the paper adds a 2D sinusoidal grid P in R^{N x N x C} and a learned map w in R^C, b:
    s'_ij = sum_c w_c (s_ij + P_ijc) + b.
The package's grid is a concatenation of a row (query) encoding and a column (key) encoding, so
    s'_ij = alpha * s_ij + u(i) + r(j) + b,    alpha = sum_c w_c,   r(j) = sum_{c in key channels} w_c e_c(j),
and u(i) + b cancels along a softmax row: the exact cheap form is alpha * s_ij + r(j) (docs/papers/kv-transformer.md).
`positional_grid_2d` builds the literal grid for tests; the sinusoids are defined for every position, so the
cheap form extends past any table size.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


FEW_QUERIES = 8


def attend_scores(scores: Tensor, v: Tensor, *, pad: Optional[Tensor] = None, causal: bool = False,
                  dropout_p: float = 0.0, training: bool = False) -> Tensor:
    """softmax_j(scores [B, H, Tq, Tk] + masks) @ v, explicitly (for scores with no dot-product form, and for the
    few queries of a decoding step).  Causal queries are the last Tq positions; a query with no visible key gets
    zeros."""
    tq, tk = scores.shape[-2:]
    blocked = torch.zeros(1, 1, tq, tk, dtype=torch.bool, device=scores.device)
    if causal:
        blocked = torch.ones(tq, tk, dtype=torch.bool, device=scores.device).triu(tk - tq + 1).view(1, 1, tq, tk)
    if pad is not None:
        blocked = blocked | pad.view(pad.size(0), 1, 1, tk)
    empty = blocked.all(dim=-1, keepdim=True)
    probs = torch.softmax(scores.float().masked_fill(blocked, float("-inf")).masked_fill(empty, 0.0), dim=-1)
    probs = probs.masked_fill(empty, 0.0)
    if dropout_p > 0.0 and training:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, v.float()).to(v.dtype)


def attention(q: Tensor, k: Tensor, v: Tensor, *, pad: Optional[Tensor] = None, causal: bool = False,
              key_bias: Optional[Tensor] = None, scale=1.0, dropout_p: float = 0.0, training: bool = False,
              key_blocks: int = 1) -> Tensor:
    """Softmax attention through torch's fused scaled_dot_product_attention (no T x T matrices kept for backward).

    q [B, H, Tq, dq]; k [B, H, R*Tk, dq] and v [B, H, R*Tk, dv] hold `key_blocks` = R blocks of keys for the same
    Tk positions (R = 1 but for MGK's mixture components); pad [B, Tk] True at padded keys; key_bias [B, Tk] or
    [B, H, Tk] added to every query's scores; `scale` multiplies the scores and may be a tensor.
    Causal queries are the last Tq of the Tk positions (decoding continues a cache).  A query with no visible key
    gets zeros (fused kernels would give NaN).
    """
    tq, tk = q.size(-2), k.size(-2) // key_blocks
    if torch.is_tensor(scale):  # a learned scale: fold it into the queries, the kernel takes a float
        q, scale = q * scale.to(q.dtype), 1.0
    drop = dropout_p if training else 0.0
    if tq <= FEW_QUERIES:  # decoding: a plain product is cheaper than building the fused kernel's inputs
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
        if key_bias is not None:
            bias = key_bias.unsqueeze(1) if key_bias.dim() == 2 else key_bias
            scores = scores + bias.float().repeat(1, 1, key_blocks).unsqueeze(-2)
        if key_blocks > 1:  # the R blocks are alternatives for the same position: sum their weights
            scores = torch.logsumexp(scores.unflatten(-1, (key_blocks, tk)), dim=-2)
            v = v[..., :tk, :]
        return attend_scores(scores, v, pad=pad, causal=causal, dropout_p=drop, training=training)
    dq, dv = q.size(-1), v.size(-1)
    if dq != dv:  # torch's CPU flash kernel needs one head width; zero padding changes neither scores nor values
        width = max(dq, dv)
        q, k, v = (F.pad(t, (0, width - t.size(-1))) for t in (q, k, v))
        return attention(q, k, v, pad=pad, causal=causal, key_bias=key_bias, scale=scale, dropout_p=dropout_p,
                         training=training, key_blocks=key_blocks)[..., :dv]
    if pad is None and key_bias is None and (not causal or tq == tk) and key_blocks == 1:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=causal, scale=scale)
    blocked = torch.zeros(1, 1, tq, tk, dtype=torch.bool, device=q.device)
    if causal:
        blocked = torch.ones(tq, tk, dtype=torch.bool, device=q.device).triu(tk - tq + 1).view(1, 1, tq, tk)
    if pad is not None:
        blocked = blocked | pad.view(pad.size(0), 1, 1, tk)
    empty = blocked.all(dim=-1, keepdim=True)
    blocked = (blocked & ~empty).repeat(1, 1, 1, key_blocks)  # let such rows see everything, then zero them below
    if key_bias is None:
        mask = ~blocked
    else:
        bias = key_bias.unsqueeze(1) if key_bias.dim() == 2 else key_bias
        mask = bias.unsqueeze(-2).to(q.dtype).repeat(1, 1, 1, key_blocks).masked_fill(blocked, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, scale=scale)
    return out.masked_fill(empty, 0.0)  # unconditionally: testing for empty rows would stall a GPU


def reference(q: Tensor, k: Tensor, v: Tensor, *, pad: Optional[Tensor] = None, causal: bool = False,
              key_bias: Optional[Tensor] = None, scale: float = 1.0) -> Tensor:
    """The definition, query by query, in fp64 (slow; for tests)."""
    bsz, heads, tq, _ = q.shape
    tk = k.size(-2)
    out = torch.zeros(bsz, heads, tq, v.size(-1), dtype=torch.float64)
    for b in range(bsz):
        for h in range(heads):
            for i in range(tq):
                pos = tk - tq + i
                js = [j for j in range(tk) if (not causal or j <= pos) and (pad is None or not pad[b, j])]
                if not js:
                    continue
                s = torch.stack([q[b, h, i].double() @ k[b, h, j].double() * scale for j in js])
                if key_bias is not None:
                    bias = key_bias[b] if key_bias.dim() == 2 else key_bias[b, h]
                    s = s + bias[js].double()
                w = torch.exp(s - s.max())
                w = w / w.sum()
                out[b, h, i] = sum(w[n] * v[b, h, j].double() for n, j in enumerate(js))
    return out.to(v.dtype)


# --- the asymmetric variant's 2D positional term ---------------------------------------------------------------
def _axis_channels(channels: int) -> int:
    """Channels per axis of the `positional-encodings` package's PositionalEncoding2D(C)."""
    return 2 * math.ceil(channels / 4)


def _sinusoids(positions: Tensor, width: int) -> Tensor:
    """Interleaved sin/cos at frequencies 10000^(-2m/width), as the package lays them out: [..., width]."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, width, 2, dtype=torch.float64, device=positions.device) / width))
    angles = positions.double().unsqueeze(-1) * inv_freq
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


def positional_grid_2d(n: int, channels: int) -> Tensor:
    """The literal grid P [n, n, C]: row (query) encoding first, column (key) encoding after, truncated to C."""
    width = _axis_channels(channels)
    emb = _sinusoids(torch.arange(n), width)
    grid = torch.zeros(n, n, 2 * width, dtype=torch.float64)
    grid[:, :, :width] = emb.unsqueeze(1)
    grid[:, :, width:] = emb.unsqueeze(0)
    return grid[..., :channels]


def key_channel_slice(channels: int) -> slice:
    """Which of the C channels depend on the key position only."""
    return slice(_axis_channels(channels), channels)


def key_position_features(positions: Tensor, channels: int) -> Tensor:
    """e_c(j) for the key channels of the grid: [..., C - C_row] (empty when C <= 2)."""
    width = _axis_channels(channels)
    return _sinusoids(positions, width)[..., : max(channels - width, 0)]
