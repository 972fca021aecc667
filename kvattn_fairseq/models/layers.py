"""fairseq's transformer layers, encoder and decoder with the attention at each position taken from the registry.

Only the `build_*` hooks are overridden; everything else (residuals, norms, FFN, layerdrop, positions,
incremental decoding, beam reordering) is fairseq's own code.
"""
import argparse
import contextvars
from typing import Dict, Optional

from omegaconf import OmegaConf

from fairseq.distributed import fsdp_wrap
from fairseq.models.transformer import TransformerDecoderBase, TransformerEncoderBase
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase

from ..modules.plan import AttentionPlan, attention_plan
from ..modules.registry import AttentionConfigError, position_dest

# The plan validated by the model's build_model, for the encoder/decoder it builds through fairseq's classmethods
# (whose signatures leave no room for it).
BUILDING_PLAN: contextvars.ContextVar = contextvars.ContextVar("kvattn_building_plan", default=None)


def as_namespace(args):
    """Model args as an argparse.Namespace: fairseq's TransformerConfig.from_namespace keeps keys it does not know
    (ours) only from a Namespace, and hydra / the Python API may hand over a DictConfig."""
    if OmegaConf.is_config(args):
        return argparse.Namespace(**OmegaConf.to_container(args, resolve=True))
    return args


def layer_counts(args, positions) -> Dict[str, int]:
    return {p: args.encoder_layers if p == "encoder" else args.decoder_layers for p in positions}


def check_attention_args(args, positions) -> AttentionPlan:
    """Everything about the attention settings that can be wrong, checked before anything is built; the plan the
    builders take."""
    plan = attention_plan(args, layer_counts(args, positions))
    if getattr(args, "cross_self_attention", False) and plan.kinds() != {"softmax"}:
        raise AttentionConfigError("--cross-self-attention: only supported with softmax attention everywhere")
    for position in positions:
        part = "encoder" if position == "encoder" else "decoder"
        if getattr(args, f"{part}_layers_to_keep", None) and not plan[position].every_layer:
            raise AttentionConfigError(f"--{part}-layers-to-keep: cannot prune a per-layer "
                                       f"--{position_dest(position).replace('_', '-')} plan; give one kind for "
                                       f"every layer")
    return plan


def plan_for(cfg, positions) -> AttentionPlan:
    """The plan build_model validated, else (an encoder or decoder built on its own) one checked from cfg."""
    plan = BUILDING_PLAN.get()
    if plan is not None and all(p in plan.positions for p in positions):
        return plan
    layers = {p: cfg.encoder.layers if p == "encoder" else cfg.decoder.layers for p in positions}
    return attention_plan(cfg, layers)


def build_at(plan: AttentionPlan, cfg, position: str, layer: int):
    """The attention module of `layer` at `position`, sized from a TransformerConfig."""
    if position == "encoder":
        dim, heads, kdim = cfg.encoder.embed_dim, cfg.encoder.attention_heads, cfg.encoder.embed_dim
    else:
        dim, heads = cfg.decoder.embed_dim, cfg.decoder.attention_heads
        kdim = cfg.encoder.embed_dim if position == "cross" else dim
    limit = getattr(cfg, "max_target_positions" if position == "decoder" else "max_source_positions", None)
    return plan.build(position, layer, embed_dim=dim, num_heads=heads, kdim=kdim, dropout=cfg.attention_dropout,
                      max_positions=limit)


def _wrap(layer, cfg):
    """fairseq's activation checkpointing and FSDP wrapping, as its own build_*_layer does."""
    checkpoint = cfg.checkpoint_activations
    if checkpoint:
        layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
    return fsdp_wrap(layer, min_num_params=cfg.min_params_to_wrap if not checkpoint else 0)


class KVAttnEncoderLayer(TransformerEncoderLayerBase):
    def __init__(self, cfg, plan: AttentionPlan, layer: int, return_fc: bool = False):
        self.plan, self.layer_index = plan, layer  # read by build_self_attention during fairseq's __init__
        super().__init__(cfg, return_fc=return_fc)

    def build_self_attention(self, embed_dim, cfg):
        return build_at(self.plan, cfg, "encoder", self.layer_index)


class KVAttnDecoderLayer(TransformerDecoderLayerBase):
    def __init__(self, cfg, plan: AttentionPlan, layer: int, no_encoder_attn: bool = False):
        self.plan, self.layer_index = plan, layer
        super().__init__(cfg, no_encoder_attn)

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        return build_at(self.plan, cfg, "decoder", self.layer_index)

    def build_encoder_attention(self, embed_dim, cfg):
        return build_at(self.plan, cfg, "cross", self.layer_index)


class KVAttnTransformerEncoder(TransformerEncoderBase):
    def __init__(self, cfg, dictionary, embed_tokens, plan: Optional[AttentionPlan] = None, return_fc=False):
        self.plan = plan or plan_for(cfg, ("encoder",))
        self.built_layers = 0  # fairseq's __init__ builds the layers in order, without an index
        super().__init__(cfg, dictionary, embed_tokens, return_fc=return_fc)

    def build_encoder_layer(self, cfg):
        self.built_layers += 1
        return _wrap(KVAttnEncoderLayer(cfg, self.plan, self.built_layers - 1, return_fc=self.return_fc), cfg)


class KVAttnTransformerDecoder(TransformerDecoderBase):
    def __init__(self, cfg, dictionary, embed_tokens, plan: Optional[AttentionPlan] = None, no_encoder_attn=False,
                 output_projection=None):
        self.plan = plan or plan_for(cfg, ("decoder",) if no_encoder_attn else ("decoder", "cross"))
        self.built_layers = 0
        super().__init__(cfg, dictionary, embed_tokens, no_encoder_attn=no_encoder_attn,
                         output_projection=output_projection)

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        self.built_layers += 1
        return _wrap(KVAttnDecoderLayer(cfg, self.plan, self.built_layers - 1, no_encoder_attn), cfg)
