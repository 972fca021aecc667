"""The baseline: fairseq's own MultiheadAttention (same parameters, state, checkpoints and decoding), whose
full-sequence forward on a GPU goes through torch's fused scaled-dot-product attention with the causal flag, so
that the softmax a user would pick today (FlashAttention) is what the other kinds are measured against.

fairseq passes its decoder a float matrix of -inf above the diagonal, which torch's kernels take as an arbitrary
mask (the memory-efficient kernel, not FlashAttention's causal one).  A decoder self-attention knows it is causal,
so there the mask becomes `is_causal`; with padding the two masks are combined into one boolean mask.  Everything
else (incremental decoding, attention weights, the CPU) is fairseq's code, unchanged.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fairseq.modules import MultiheadAttention

from .. import kernels
from .registry import AttentionSite, register_attention_kind


class SoftmaxAttention(MultiheadAttention):
    def __init__(self, *args, causal: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.causal = causal

    def forward(self, query: Tensor, key: Optional[Tensor], value: Optional[Tensor],
                key_padding_mask: Optional[Tensor] = None, incremental_state=None, need_weights: bool = True,
                static_kv: bool = False, attn_mask: Optional[Tensor] = None, before_softmax: bool = False,
                need_head_weights: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        if self._fusable(query, key, incremental_state, need_weights or need_head_weights or before_softmax,
                         attn_mask):
            return self.fused_forward(query, key, value, key_padding_mask, attn_mask is not None), None
        return super().forward(query, key, value, key_padding_mask, incremental_state, need_weights, static_kv,
                               attn_mask, before_softmax, need_head_weights)

    def _fusable(self, query, key, incremental_state, weights: bool, attn_mask) -> bool:
        if incremental_state is not None or weights or not kernels.sdpa_ok(query):
            return False
        if self.bias_k is not None or self.add_zero_attn or self.skip_embed_dim_check or self.onnx_trace:
            return False
        # the only mask fairseq gives a decoder self-attention is its future mask, square
        return attn_mask is None or (self.causal and key is not None and
                                     tuple(attn_mask.shape) == (query.size(0), key.size(0)))

    def fused_forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor],
                      causal: bool) -> Tensor:
        tgt, bsz, dim = query.shape
        src = key.size(0)

        def heads(x: Tensor, length: int) -> Tensor:
            return x.view(length, bsz, self.num_heads, self.head_dim).permute(1, 2, 0, 3)

        q, k, v = heads(self.q_proj(query), tgt), heads(self.k_proj(key), src), heads(self.v_proj(value), src)
        mask = None
        if key_padding_mask is not None:
            mask = ~key_padding_mask.bool().view(bsz, 1, 1, src)
            if causal:
                mask = mask & torch.ones(tgt, src, dtype=torch.bool, device=q.device).tril()
            if tgt == src:  # a padded query whose visible keys are all padding sees itself, never a NaN row
                mask = mask | torch.eye(tgt, dtype=torch.bool, device=q.device)
        drop = self.dropout_module.p if self.training or self.dropout_module.apply_during_inference else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop,
                                             is_causal=causal and mask is None)
        return self.out_proj(out.permute(2, 0, 1, 3).reshape(tgt, bsz, dim))


@register_attention_kind("softmax", positions=("encoder", "decoder", "cross"),
                         summary="fairseq's scaled dot-product multi-head attention (Vaswani et al., 2017)")
def build_softmax(site: AttentionSite) -> MultiheadAttention:
    if site.position == "cross":
        return SoftmaxAttention(site.embed_dim, site.num_heads, kdim=site.kdim, vdim=site.kdim,
                                dropout=site.dropout, encoder_decoder_attention=True)
    return SoftmaxAttention(site.embed_dim, site.num_heads, dropout=site.dropout, self_attention=True,
                            causal=site.position == "decoder")
