"""Linformer (Wang et al., 2020) after fairseq's examples/linformer: keys and values are compressed along the
sequence to k rows by learned projections E, F in R^{k x max_len}, sliced to the current length.

Differences from the fairseq example, on purpose: padding is zeroed before compression and every row is aligned to
its first real token, so a left-padded source is compressed exactly like the same source alone (the example mixes
padding into the compressed rows).  Linformer mixes all positions into every compressed row, so it cannot be
causal: it is offered for encoder self-attention and for cross-attention (over the source, compressed once).
"""
import math
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from ..ops import softmax_kv
from .projected import ProjectedAttention
from .registry import AttentionSite, KindOption, positive_int, register_attention_kind


class LinformerAttention(ProjectedAttention):
    def __init__(self, embed_dim: int, num_heads: int, position: str, max_positions: int, compressed: int,
                 kdim: Optional[int] = None, dropout: float = 0.0):
        if position == "decoder":
            raise ValueError("Linformer cannot be causal")
        super().__init__(embed_dim, num_heads, position, kdim=kdim, dropout=dropout)
        self.max_positions = max_positions
        self.compressed = compressed
        self.compress_k = nn.Linear(max_positions, compressed, bias=False)
        self.compress_v = nn.Linear(max_positions, compressed, bias=False)
        for lin in (self.compress_k, self.compress_v):
            nn.init.xavier_uniform_(lin.weight, gain=1 / math.sqrt(2))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.compressed}, max_positions={self.max_positions}"

    def _compress(self, src: Tensor, src_pad: Optional[Tensor]) -> Tensor:
        """[B, S, C] -> compressed keys and values stacked: [B, 2, k, C]."""
        length = src.size(1)
        if length > self.max_positions:
            raise ValueError(f"linformer: a source of {length} tokens is longer than the {self.max_positions} "
                             f"positions its projections were built for (--max-source-positions)")
        k, v = self.k_proj(src), self.v_proj(src)
        if src_pad is not None:
            # real tokens first, in order: the row then uses the projection columns it would use unpadded
            order = torch.sort(src_pad.to(torch.int8), dim=1, stable=True).indices
            keep = (~src_pad).gather(1, order).unsqueeze(-1)
            idx = order.unsqueeze(-1).expand_as(k)
            k = k.gather(1, idx).masked_fill(~keep, 0.0)
            v = v.gather(1, idx).masked_fill(~keep, 0.0)
        kc = torch.einsum("bsc,ks->bkc", k, self.compress_k.weight[:, :length])
        vc = torch.einsum("bsc,ks->bkc", v, self.compress_v.weight[:, :length])
        return torch.stack([kc, vc], dim=1)

    def _attend(self, x: Tensor, mem: Tensor) -> Tensor:
        q = self.fold(self.heads(self.q_proj, x), mem.size(0))
        out = softmax_kv.attention(q, self.split_heads(mem[:, 0]), self.split_heads(mem[:, 1]),
                                   scale=self.scaling, dropout_p=self.dropout_p, training=self.training)
        return self.output(self.unfold(out, x.size(0)), x.dtype)

    def attend_self(self, x: Tensor, pad: Optional[Tensor], state: Optional[Dict[str, Tensor]]) -> Tensor:
        return self._attend(x, self._compress(x, pad))

    def attend_cross(self, x: Tensor, src: Tensor, src_pad: Optional[Tensor],
                     state: Optional[Dict[str, Tensor]]) -> Tensor:
        mem, = self.static_memory(state, "compressed", src, src_pad, lambda s, m: (self._compress(s, m),))
        return self._attend(x, mem)


@register_attention_kind(
    "linformer", positions=("encoder", "cross"),
    unsupported={"decoder": "Linformer compresses along positions, so every output would see future tokens; it "
                            "cannot be causal"},
    options=(KindOption("--linformer-k", 256, positive_int,
                        "Linformer's compressed length k "
                        "(keys and values are projected from the source length to k)"),),
    summary="keys and values compressed along positions to k rows, non-causal (Wang et al., 2020)")
def build_linformer(site: AttentionSite) -> LinformerAttention:
    return LinformerAttention(site.embed_dim, site.num_heads, site.position, site.max_positions or 1024,
                              site.options["linformer_k"], kdim=site.kdim, dropout=site.dropout)
