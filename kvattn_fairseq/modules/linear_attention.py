"""Linear attention kinds with a constant-size decoding state: `factorized` (the projection-free Linformer
alternative) and `linear` (elu+1).  Both use fairseq's q/k/v/out projections per head."""
from ..ops import factorized as fops
from ..ops import linear as lops
from .headwise_linear import HeadwiseLinearAttention
from .registry import AttentionSite, register_attention_kind


class FactorizedAttention(HeadwiseLinearAttention):
    """softmax over features for queries, softmax over positions for keys, keys x values first."""

    state_keys = ("num", "den", "max")

    def _memory(self, k, v, pad):
        return fops.context(k, v, pad)

    def _read(self, q, mem, dtype):
        return fops.read(fops.query_features(q), mem, dtype)

    def _causal(self, q, k, v, pad, state, step):
        if step:
            return fops.causal_step(q, k, v, state, pad)
        return fops.causal_parallel(q, k, v, pad, state)


class LinearAttention(HeadwiseLinearAttention):
    """phi(x) = elu(x) + 1 kernel attention."""

    state_keys = ("kv_sum",)
    lazy_reorder = True  # its step runs on kernels/step.py, which gathers by a pending reorder

    def _memory(self, k, v, pad):
        return lops.memory(k, v, pad)

    def _read(self, q, mem, dtype):
        return lops.read(q, mem, dtype)

    def _causal(self, q, k, v, pad, state, step, order=None):
        if step:
            return lops.causal_step(q, k, v, state, pad, order)
        return lops.causal_parallel(q, k, v, pad, state)


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
