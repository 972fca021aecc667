"""`kvattn_transformer`: fairseq's encoder-decoder transformer with a chosen attention plan at each position."""
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerModel, base_architecture

from ..modules.base import KVAttentionBase
from ..modules.registry import POSITIONS, add_attention_args, apply_attention_defaults
from .layers import (BUILDING_PLAN, KVAttnTransformerDecoder, KVAttnTransformerEncoder, as_namespace,
                     check_attention_args, plan_for)


@register_model("kvattn_transformer")
class KVAttnTransformerModel(TransformerModel):
    """fairseq's `transformer` plus --encoder-attention-type, --decoder-attention-type, --cross-attention-type
    (a kind, or one kind per layer) and the options of each attention kind."""

    attention_positions = POSITIONS

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        add_attention_args(parser, POSITIONS)

    @classmethod
    def build_model(cls, args, task):
        args = as_namespace(args)
        _fill(args)
        token = BUILDING_PLAN.set(check_attention_args(args, POSITIONS))
        try:
            return super().build_model(args, task)
        finally:
            BUILDING_PLAN.reset(token)

    def set_beam_size(self, beam_size: int) -> None:
        """fairseq's SequenceGenerator calls this on models that define it (in fairseq itself only BART does): the
        plugin's attention modules then keep the cross-attention memory once per sentence, not per hypothesis.

        Only they get it: they use it in incremental decoding alone, whereas fairseq's MultiheadAttention applies
        it to every later forward, training included (the setting outlives the search; fairseq-train --eval-bleu
        builds its search before training starts), and would keep only every beam-th sentence's encoder output.
        Its softmax cross-attention therefore keeps one memory per hypothesis, as in fairseq's own transformer."""
        for module in self.decoder.modules():
            if isinstance(module, KVAttentionBase):
                module.set_beam_size(beam_size)

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        cfg = TransformerConfig.from_namespace(args)
        return KVAttnTransformerEncoder(cfg, src_dict, embed_tokens, plan_for(cfg, ("encoder",)))

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        cfg = TransformerConfig.from_namespace(args)
        positions = ("decoder",) if cfg.no_cross_attention else ("decoder", "cross")
        return KVAttnTransformerDecoder(cfg, tgt_dict, embed_tokens, plan_for(cfg, positions),
                                        no_encoder_attn=cfg.no_cross_attention)


def attention_defaults(args, **values) -> None:
    """An architecture's attention settings, for whatever the command line left unset."""
    apply_attention_defaults(args, POSITIONS, **values)


def _fill(args) -> None:
    attention_defaults(args)
    base_architecture(args)


@register_model_architecture("kvattn_transformer", "kvattn_transformer")
def kvattn_transformer_base(args):
    _fill(args)
    check_attention_args(args, POSITIONS)  # at argument parsing: nothing is read or written before this fails
