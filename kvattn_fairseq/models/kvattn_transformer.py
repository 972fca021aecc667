"""`kvattn_transformer`: fairseq's encoder-decoder transformer with a chosen attention kind at each position."""
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerModel, base_architecture

from ..modules.registry import POSITIONS, add_attention_args, apply_attention_defaults
from .layers import KVAttnTransformerDecoder, KVAttnTransformerEncoder, as_namespace, check_attention_args


@register_model("kvattn_transformer")
class KVAttnTransformerModel(TransformerModel):
    """fairseq's `transformer` plus --encoder-attention-type, --decoder-attention-type, --cross-attention-type
    and the options of each attention kind."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        add_attention_args(parser, POSITIONS)

    @classmethod
    def build_model(cls, args, task):
        args = as_namespace(args)
        kvattn_transformer_base(args)
        return super().build_model(args, task)

    def set_beam_size(self, beam_size: int) -> None:
        """fairseq's SequenceGenerator calls this on models that define it (in fairseq itself only BART does): the
        decoder's attention modules then keep the cross-attention memory once per sentence, not per hypothesis."""
        self.decoder.set_beam_size(beam_size)

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return KVAttnTransformerEncoder(TransformerConfig.from_namespace(args), src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        cfg = TransformerConfig.from_namespace(args)
        return KVAttnTransformerDecoder(cfg, tgt_dict, embed_tokens, no_encoder_attn=cfg.no_cross_attention)


def attention_defaults(args, **values) -> None:
    """An architecture's attention settings, for whatever the command line left unset."""
    apply_attention_defaults(args, POSITIONS, **values)


@register_model_architecture("kvattn_transformer", "kvattn_transformer")
def kvattn_transformer_base(args):
    attention_defaults(args)
    base_architecture(args)
    check_attention_args(args, POSITIONS)
