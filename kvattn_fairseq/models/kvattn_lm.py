"""`kvattn_lm`: fairseq's decoder-only transformer language model with a chosen decoder self-attention kind."""
from fairseq import options
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig
from fairseq.models.transformer_lm import (DEFAULT_MAX_TARGET_POSITIONS, TransformerLanguageModel,
                                           TransformerLanguageModelConfig, base_lm_architecture)
from fairseq.modules import AdaptiveInput

from ..modules.registry import AttentionConfigError, add_attention_args, apply_attention_defaults
from .layers import KVAttnTransformerDecoder, as_namespace, check_attention_args

LM_POSITIONS = ("decoder",)


@register_model("kvattn_lm")
class KVAttnLanguageModel(TransformerLanguageModel):
    """fairseq's `transformer_lm` plus --decoder-attention-type and the options of each attention kind."""

    @classmethod
    def add_args(cls, parser):
        # fairseq's LM flags without argparse defaults, so that architecture defaults apply (as fairseq does).
        gen_parser_from_dataclass(parser, TransformerLanguageModelConfig(), delete_default=True)
        add_attention_args(parser, LM_POSITIONS)

    @classmethod
    def build_model(cls, args, task):
        args = as_namespace(args)
        kvattn_lm_base(args)
        if args.decoder_layers_to_keep:
            args.decoder_layers = len(args.decoder_layers_to_keep.split(","))
        if getattr(args, "max_target_positions", None) is None:
            args.max_target_positions = getattr(args, "tokens_per_sample", DEFAULT_MAX_TARGET_POSITIONS)
        if args.character_embeddings:
            raise AttentionConfigError("--character-embeddings: not supported by kvattn_lm; use fairseq's transformer_lm")
        dictionary = task.source_dictionary
        if args.adaptive_input:
            embed_tokens = AdaptiveInput(len(dictionary), dictionary.pad(), args.decoder_input_dim,
                                         args.adaptive_input_factor, args.decoder_embed_dim,
                                         options.eval_str_list(args.adaptive_input_cutoff, type=int),
                                         args.quant_noise_pq, args.quant_noise_pq_block_size)
        else:
            embed_tokens = cls.build_embedding(args, dictionary, args.decoder_input_dim)
        if args.tie_adaptive_weights:
            _check_tied_adaptive(args)
        decoder = KVAttnTransformerDecoder(TransformerConfig.from_namespace(args), task.target_dictionary,
                                           embed_tokens, no_encoder_attn=True)
        return cls(decoder)


def _check_tied_adaptive(args) -> None:
    if not args.adaptive_input:
        raise AttentionConfigError("--tie-adaptive-weights: needs --adaptive-input")
    if args.adaptive_input_factor != args.adaptive_softmax_factor:
        raise AttentionConfigError("--tie-adaptive-weights: --adaptive-input-factor must equal --adaptive-softmax-factor")
    if args.adaptive_softmax_cutoff != args.adaptive_input_cutoff:
        raise AttentionConfigError("--tie-adaptive-weights: --adaptive-input-cutoff must equal --adaptive-softmax-cutoff")
    if args.decoder_input_dim != args.decoder_output_dim:
        raise AttentionConfigError("--tie-adaptive-weights: --decoder-input-dim must equal --decoder-output-dim")


def lm_attention_defaults(args, **values) -> None:
    apply_attention_defaults(args, LM_POSITIONS, **values)


@register_model_architecture("kvattn_lm", "kvattn_lm")
def kvattn_lm_base(args):
    lm_attention_defaults(args)
    base_lm_architecture(args)
    check_attention_args(args, LM_POSITIONS)
