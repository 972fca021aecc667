"""Linear attention kinds with a constant-size decoding state: `factorized` (the projection-free Linformer
alternative) and `linear` (elu+1).  Both use fairseq's q/k/v/out projections per head."""
from ..ops import factorized as fops
from ..ops import linear as lops
from .headwise_linear import HeadwiseLinearAttention
from .registry import AttentionSite, register_attention_kind


class FactorizedAttention(HeadwiseLinearAttention):
    """softmax over features for queries, softmax over positions for keys, keys x values first."""

    family = fops
    state_keys = ("num", "den", "max")


class LinearAttention(HeadwiseLinearAttention):
    """phi(x) = elu(x) + 1 kernel attention."""

    family = lops
    state_keys = ("kv_sum",)
    lazy_reorder = True  # its step runs on kernels/step.py, which gathers by a pending reorder


@register_attention_kind(
    "factorized", positions=("encoder", "decoder", "cross"), constant_state=True,
    summary="projection-free linear attention: softmax over features (queries) and positions (keys), keys x values "
            "first; our reading of Verma 2021, 'Revisiting Linformer' (arXiv 2101.10277)")
def build_factorized(site: AttentionSite) -> FactorizedAttention:
    return FactorizedAttention(site.embed_dim, site.num_heads, site.position, kdim=site.kdim, dropout=site.dropout)


@register_attention_kind(
    "linear", positions=("encoder", "decoder", "cross"), constant_state=True,
    summary="elu+1 kernel linear attention (Katharopoulos et al., ICML 2020)")
def build_linear(site: AttentionSite) -> LinearAttention:
    return LinearAttention(site.embed_dim, site.num_heads, site.position, kdim=site.kdim, dropout=site.dropout)
