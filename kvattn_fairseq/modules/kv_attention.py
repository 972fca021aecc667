"""The Key-Value Transformer's query-less attention (Borji, 2023): symmetric `kv` and asymmetric `kv_asym`.

There is no W_Q: each token's query is its own key.  Cross-attention is refused at build time: its queries come
from another sequence, so a query-less form is undefined there (the reference notebooks decide self vs cross by
comparing lengths, which silently ignores the decoder state when the lengths happen to match).
The incremental state is the usual key/value cache (no memory saving over softmax, only parameters).
"""
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from ..ops import softmax_kv as ops
from .projected import ProjectedAttention
from .registry import AttentionSite, KindOption, positive_int, register_attention_kind


class KVAttention(ProjectedAttention):
    def __init__(self, embed_dim: int, num_heads: int, position: str, dropout: float = 0.0,
                 asymmetric: bool = False, pos_channels: int = 10):
        if position == "cross":
            raise ValueError("query-less attention is undefined for cross-attention")
        super().__init__(embed_dim, num_heads, position, dropout=dropout, query_projection=False)
        self.asymmetric = asymmetric
        self.pos_channels = pos_channels
        if asymmetric:
            # the paper's map from the 2D grid's C channels to a score: s' = w . (s + P_ij) + b
            self.pos_map = nn.Linear(pos_channels, 1)
            nn.init.xavier_uniform_(self.pos_map.weight)
            nn.init.zeros_(self.pos_map.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", asymmetric, pos_channels={self.pos_channels}" if self.asymmetric else "")

    def key_bias(self, positions: Tensor) -> Tensor:
        """r(j) = sum over the key channels of w_c e_c(j): [B, T] for absolute key positions [B, T]."""
        feats = ops.key_position_features(positions, self.pos_channels).to(self.pos_map.weight.dtype)
        return feats @ self.pos_map.weight[0, ops.key_channel_slice(self.pos_channels)]

    def attend_self(self, x: Tensor, pad: Optional[Tensor], state: Optional[Dict[str, Tensor]]) -> Tensor:
        k = self.heads(self.k_proj, x)
        v = self.heads(self.v_proj, x)
        new_pad = pad if pad is not None else torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        keys, values, key_pad = k, v, new_pad
        cached = state is not None and "prev_key" in state
        if cached:
            keys = torch.cat([state["prev_key"], k], dim=2)
            values = torch.cat([state["prev_value"], v], dim=2)
            key_pad = torch.cat([state["prev_key_padding_mask"], new_pad], dim=1)
        bias = None
        if self.asymmetric:
            # absolute positions counted over real tokens: a left-padded row sees the positions it would alone
            before = (~state["prev_key_padding_mask"]).sum(1, keepdim=True) if cached else 0
            positions = (before + torch.cumsum((~new_pad).long(), dim=1) - 1).clamp(min=0)
            new_bias = self.key_bias(positions)
            bias = torch.cat([state["prev_key_bias"], new_bias], dim=1) if cached else new_bias
        if state is not None:
            state["prev_key"], state["prev_value"], state["prev_key_padding_mask"] = keys, values, key_pad
            if bias is not None:
                state["prev_key_bias"] = bias
        # Without padding the fused kernel runs mask-free; a decoding step just takes the mask (checking for padding
        # would read a value back from the device on every step).
        pad_arg = key_pad if x.size(1) <= ops.FEW_QUERIES or bool(key_pad.any()) else None
        if bias is None or x.size(1) <= ops.FEW_QUERIES:
            scale = self.scaling if bias is None else self.scaling * self.pos_map.weight.sum()
            out = ops.attention(k, keys, values, pad=pad_arg, causal=self.causal, key_bias=bias, scale=scale,
                                dropout_p=self.dropout_p, training=self.training)
        else:
            # alpha tau k_i.k_j + r(j) as one dot product, [alpha k_i, 1] . [k_j, r(j) / tau] * tau, so that the
            # fused kernel runs (a learned additive mask would make it keep T x T matrices for backward)
            q_aug = torch.cat([k * self.pos_map.weight.sum(), torch.ones_like(k[..., :1])], dim=-1)
            k_aug = torch.cat([keys, (bias / self.scaling).unsqueeze(1).expand(-1, keys.size(1), -1)
                               .unsqueeze(-1).to(keys.dtype)], dim=-1)
            out = ops.attention(q_aug, k_aug, values, pad=pad_arg, causal=self.causal, scale=self.scaling,
                                dropout_p=self.dropout_p, training=self.training)
        return self.output(out, x.dtype)


_QUERYLESS = {"cross": "a query-less attention takes each query from its own key, and cross-attention's queries "
                       "come from another sequence"}


@register_attention_kind("kv", positions=("encoder", "decoder"), unsupported=_QUERYLESS,
                         summary="query-less softmax attention, query = key, symmetric scores (Borji, 2023)")
def build_kv(site: AttentionSite) -> KVAttention:
    return KVAttention(site.embed_dim, site.num_heads, site.position, dropout=site.dropout)


@register_attention_kind(
    "kv_asym", positions=("encoder", "decoder"), unsupported=_QUERYLESS,
    options=(KindOption("--kv-pos-channels", 10, positive_int,
                        "channels C of kv_asym's 2D positional term (paper: 10 for synthetic tasks and MT)"),),
    summary="query-less attention plus the paper's 2D positional term, computed exactly as a learned score scale "
            "and key-position bias (Borji, 2023)")
def build_kv_asym(site: AttentionSite) -> KVAttention:
    return KVAttention(site.embed_dim, site.num_heads, site.position, dropout=site.dropout, asymmetric=True,
                       pos_channels=site.options["kv_pos_channels"])
