"""The baseline: fairseq's own MultiheadAttention, unchanged."""
from fairseq.modules import MultiheadAttention

from .registry import AttentionSite, register_attention_kind


@register_attention_kind("softmax", positions=("encoder", "decoder", "cross"),
                         summary="fairseq's scaled dot-product multi-head attention (Vaswani et al., 2017)")
def build_softmax(site: AttentionSite) -> MultiheadAttention:
    if site.position == "cross":
        return MultiheadAttention(site.embed_dim, site.num_heads, kdim=site.kdim, vdim=site.kdim,
                                  dropout=site.dropout, encoder_decoder_attention=True)
    return MultiheadAttention(site.embed_dim, site.num_heads, dropout=site.dropout, self_attention=True)
