"""`kvattn_lm`: fairseq's decoder-only transformer language model with a chosen decoder self-attention plan."""
import threading
from contextlib import contextmanager

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models import transformer_lm
from fairseq.models.transformer import TransformerConfig
from fairseq.models.transformer_lm import (TransformerLanguageModel, TransformerLanguageModelConfig,
                                           base_lm_architecture)

from ..modules.registry import AttentionConfigError, add_attention_args, apply_attention_defaults
from .layers import KVAttnTransformerDecoder, as_namespace, check_attention_args

LM_POSITIONS = ("decoder",)
# Architectures with post-norm layers, as fairseq's plain `--arch transformer_lm` builds them (its dataclass default);
# base_lm_architecture, which fairseq's named LM architectures and kvattn_lm share, forces pre-norm.
POST_NORM_ARCHS = {"kvattn_lm_post_norm"}
_DECODER_SWAP = threading.Lock()


@register_model("kvattn_lm")
class KVAttnLanguageModel(TransformerLanguageModel):
    """fairseq's `transformer_lm` plus --decoder-attention-type (a kind, or one kind per layer) and the options of
    each attention kind."""

    attention_positions = LM_POSITIONS

    @classmethod
    def add_args(cls, parser):
        # fairseq's LM flags without argparse defaults, so that architecture defaults apply (as fairseq does).
        gen_parser_from_dataclass(parser, TransformerLanguageModelConfig(), delete_default=True)
        add_attention_args(parser, LM_POSITIONS)

    @classmethod
    def build_model(cls, args, task):
        args = as_namespace(args)
        _fill(args)
        plan = check_attention_args(args, LM_POSITIONS)
        if args.character_embeddings:
            raise AttentionConfigError("--character-embeddings: not supported by kvattn_lm; "
                                       "use fairseq's transformer_lm")
        if args.tie_adaptive_weights:
            _check_tied_adaptive(args)  # fairseq asserts these; a bad flag gets one line naming it instead

        def decoder(args, dictionary, embed_tokens, no_encoder_attn=False):
            return KVAttnTransformerDecoder(TransformerConfig.from_namespace(args), dictionary, embed_tokens, plan,
                                            no_encoder_attn=no_encoder_attn)

        # fairseq's own build (embeddings, adaptive input, positions) with only the decoder class replaced: its
        # build_model names TransformerDecoder directly and has no hook for it.
        with _decoder_class(decoder):
            return super().build_model(args, task)


@contextmanager
def _decoder_class(factory):
    with _DECODER_SWAP:
        saved = transformer_lm.TransformerDecoder
        transformer_lm.TransformerDecoder = factory
        try:
            yield
        finally:
            transformer_lm.TransformerDecoder = saved


def _check_tied_adaptive(args) -> None:
    if not args.adaptive_input:
        raise AttentionConfigError("--tie-adaptive-weights: needs --adaptive-input")
    if args.adaptive_input_factor != args.adaptive_softmax_factor:
        raise AttentionConfigError("--tie-adaptive-weights: "
                                   "--adaptive-input-factor must equal --adaptive-softmax-factor")
    if args.adaptive_softmax_cutoff != args.adaptive_input_cutoff:
        raise AttentionConfigError("--tie-adaptive-weights: "
                                   "--adaptive-input-cutoff must equal --adaptive-softmax-cutoff")
    if args.decoder_input_dim != args.decoder_output_dim:
        raise AttentionConfigError("--tie-adaptive-weights: --decoder-input-dim must equal --decoder-output-dim")


def lm_attention_defaults(args, **values) -> None:
    apply_attention_defaults(args, LM_POSITIONS, **values)


def _fill(args) -> None:
    lm_attention_defaults(args)
    base_lm_architecture(args)
    if getattr(args, "arch", None) in POST_NORM_ARCHS:
        args.decoder_normalize_before = False


@register_model_architecture("kvattn_lm", "kvattn_lm")
def kvattn_lm_base(args):
    _fill(args)
    check_attention_args(args, LM_POSITIONS)


@register_model_architecture("kvattn_lm", "kvattn_lm_post_norm")
def kvattn_lm_post_norm(args):
    """fairseq's plain `--arch transformer_lm` layout: post-norm layers (what convert makes of such a model)."""
    kvattn_lm_base(args)
