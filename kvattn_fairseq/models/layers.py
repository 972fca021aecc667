"""fairseq's transformer layers, encoder and decoder with the attention at each position taken from the registry.

Only the `build_*` hooks are overridden; everything else (residuals, norms, FFN, layerdrop, positions,
incremental decoding, beam reordering) is fairseq's own code.
"""
import argparse

from omegaconf import OmegaConf

from fairseq.distributed import fsdp_wrap
from fairseq.models.transformer import TransformerDecoderBase, TransformerEncoderBase
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase

from ..modules.registry import AttentionConfigError, AttentionSite, attention_plan, build_attention


def as_namespace(args):
    """Model args as an argparse.Namespace: fairseq's TransformerConfig.from_namespace keeps keys it does not know
    (ours) only from a Namespace, and hydra / the Python API may hand over a DictConfig."""
    if OmegaConf.is_config(args):
        return argparse.Namespace(**OmegaConf.to_container(args, resolve=True))
    return args


def check_attention_args(args, positions) -> None:
    """Everything about the attention settings that can be wrong, checked before anything is built."""
    plan = attention_plan(args, positions)
    if getattr(args, "cross_self_attention", False) and any(kind != "softmax" for kind, _ in plan.values()):
        raise AttentionConfigError("--cross-self-attention: only supported with softmax attention everywhere")


def build_at(cfg, position: str):
    """The attention module for `position` from a TransformerConfig carrying the plugin's flags."""
    name, options = attention_plan(cfg, [position])[position]
    if position == "encoder":
        dim, heads, kdim = cfg.encoder.embed_dim, cfg.encoder.attention_heads, cfg.encoder.embed_dim
    else:
        dim, heads = cfg.decoder.embed_dim, cfg.decoder.attention_heads
        kdim = cfg.encoder.embed_dim if position == "cross" else dim
    limit = getattr(cfg, "max_target_positions" if position == "decoder" else "max_source_positions", None)
    site = AttentionSite(position=position, embed_dim=dim, num_heads=heads, kdim=kdim,
                         dropout=cfg.attention_dropout, options=options, max_positions=limit)
    return build_attention(name, site)


def _wrap(layer, cfg):
    """fairseq's activation checkpointing and FSDP wrapping, as its own build_*_layer does."""
    checkpoint = cfg.checkpoint_activations
    if checkpoint:
        layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
    return fsdp_wrap(layer, min_num_params=cfg.min_params_to_wrap if not checkpoint else 0)


class KVAttnEncoderLayer(TransformerEncoderLayerBase):
    def build_self_attention(self, embed_dim, cfg):
        return build_at(cfg, "encoder")


class KVAttnDecoderLayer(TransformerDecoderLayerBase):
    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        return build_at(cfg, "decoder")

    def build_encoder_attention(self, embed_dim, cfg):
        return build_at(cfg, "cross")


class KVAttnTransformerEncoder(TransformerEncoderBase):
    def build_encoder_layer(self, cfg):
        return _wrap(KVAttnEncoderLayer(cfg, return_fc=self.return_fc), cfg)


class KVAttnTransformerDecoder(TransformerDecoderBase):
    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        return _wrap(KVAttnDecoderLayer(cfg, no_encoder_attn), cfg)
