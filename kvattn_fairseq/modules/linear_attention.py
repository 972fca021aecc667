"""Linear attention kinds with a constant-size decoding state: `factorized` (the projection-free Linformer
alternative) and `linear` (elu+1).  Both use fairseq's q/k/v/out projections per head; `linear` in decoder
self-attention takes `--short-conv K` (default 0: none), a short causal convolution on the q/k/v projections before
elu+1 (headwise_linear.py, short_conv.py)."""
from typing import Any, Dict

from ..ops import factorized as fops
from ..ops import linear as lops
from .headwise_linear import HeadwiseLinearAttention
from .registry import POSITION_FLAGS, POSITION_NAMES, AttentionConfigError, AttentionSite, register_attention_kind
from .short_conv import SHORT_CONV_OPTION, short_conv_size


class FactorizedAttention(HeadwiseLinearAttention):
    """softmax over features for queries, softmax over positions for keys, keys x values first."""

    family = fops
    state_keys = ("num", "den", "max")


class LinearAttention(HeadwiseLinearAttention):
    """phi(x) = elu(x) + 1 kernel attention."""

    family = lops
    state_keys = ("kv_sum",)
    lazy_reorder = True  # its step runs on kernels/step.py, which gathers by a pending reorder


def check_causal_short_conv(options: Dict[str, Any], position: str) -> None:
    """--short-conv K > 0 only where the kind is causal: a convolution over the preceding tokens has no meaning in a
    non-causal position (a centred one would be another layer)."""
    kernel = options.get(SHORT_CONV_OPTION.dest)
    if kernel and position != "decoder":
        raise AttentionConfigError(
            f"--short-conv {kernel}: the short convolution is causal, for decoder self-attention only, and "
            f"{POSITION_FLAGS[position]} puts linear attention at {POSITION_NAMES[position]}; use --short-conv 0 or "
            f"another kind there")


@register_attention_kind(
    "factorized", positions=("encoder", "decoder", "cross"), constant_state=True,
    summary="projection-free linear attention: softmax over features (queries) and positions (keys), keys x values "
            "first; our reading of Verma 2021, 'Revisiting Linformer' (arXiv 2101.10277)")
def build_factorized(site: AttentionSite) -> FactorizedAttention:
    return FactorizedAttention(site.embed_dim, site.num_heads, site.position, kdim=site.kdim, dropout=site.dropout)


@register_attention_kind(
    "linear", positions=("encoder", "decoder", "cross"), options=(SHORT_CONV_OPTION,), constant_state=True,
    validate=check_causal_short_conv, summary="elu+1 kernel linear attention (Katharopoulos et al., ICML 2020)")
def build_linear(site: AttentionSite) -> LinearAttention:
    return LinearAttention(site.embed_dim, site.num_heads, site.position, kdim=site.kdim, dropout=site.dropout,
                           short_conv=short_conv_size(site.options, 0))
