"""`kvattn_classifier`: fairseq's transformer encoder, with the plugin's attention in its self-attention, and a
classifier on every position (task kv_position_classification).

The head is the Key-Value Transformer paper's (`output_net` of aliborji/kv-transformer `Reverse_sort_pos.py`):
Linear(d, d), LayerNorm, ReLU, dropout, Linear(d, classes).  The encoder is fairseq's own (embeddings, positions,
layers, padding), built through the plugin's hooks, so `--encoder-attention-type` takes any kind that may sit in
encoder self-attention.
"""
import torch.nn.functional as F
from torch import Tensor, nn

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import FairseqEncoderModel, register_model, register_model_architecture
from fairseq.models.transformer import (DEFAULT_MAX_SOURCE_POSITIONS, Embedding, TransformerConfig,
                                        base_architecture)

from ..modules.registry import add_attention_args, apply_attention_defaults
from .layers import KVAttnTransformerEncoder, as_namespace, check_attention_args

ENCODER_ONLY = ("encoder",)


class PositionHead(nn.Module):
    def __init__(self, dim: int, classes: int, dropout: float):
        super().__init__()
        self.dense, self.norm, self.out = nn.Linear(dim, dim), nn.LayerNorm(dim), nn.Linear(dim, classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.dropout(F.relu(self.norm(self.dense(x)))))


@register_model("kvattn_classifier")
class KVAttnClassifier(FairseqEncoderModel):
    """fairseq's transformer encoder flags plus --encoder-attention-type and the options of each attention kind;
    returns logits [batch, positions, classes]."""

    attention_positions = ENCODER_ONLY

    def __init__(self, encoder, head):
        super().__init__(encoder)
        self.head = head

    @classmethod
    def add_args(cls, parser):
        # fairseq's transformer flags without argparse defaults, so that architecture defaults apply
        gen_parser_from_dataclass(parser, TransformerConfig(), delete_default=True, with_prefix="")
        add_attention_args(parser, ENCODER_ONLY)

    @classmethod
    def build_model(cls, args, task):
        args = as_namespace(args)
        kvattn_classifier_base(args)
        if getattr(args, "max_source_positions", None) is None:
            args.max_source_positions = DEFAULT_MAX_SOURCE_POSITIONS
        cfg = TransformerConfig.from_namespace(args)
        dictionary = task.source_dictionary
        embed = Embedding(len(dictionary), cfg.encoder.embed_dim, dictionary.pad())
        # the task's classes (kv_position_classification: the label symbols); a task without a class count
        # (building.DictionaryTask) gives its target dictionary's non-special symbols
        classes = getattr(task, "num_classes", None) or len(task.target_dictionary) - task.target_dictionary.nspecial
        return cls(KVAttnTransformerEncoder(cfg, dictionary, embed),
                   PositionHead(cfg.encoder.embed_dim, classes, cfg.dropout))

    def forward(self, src_tokens, src_lengths=None, **kwargs):
        out = self.encoder(src_tokens, src_lengths=src_lengths)
        return self.head(out["encoder_out"][0].transpose(0, 1))

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return F.log_softmax(net_output.float(), dim=-1) if log_probs else F.softmax(net_output.float(), dim=-1)


def _defaults(args, **values):
    for key, value in values.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


@register_model_architecture("kvattn_classifier", "kvattn_classifier")
def kvattn_classifier_base(args):
    apply_attention_defaults(args, ENCODER_ONLY)
    base_architecture(args)
    check_attention_args(args, ENCODER_ONLY)


@register_model_architecture("kvattn_classifier", "kv_position_classifier")
def kv_position_classifier(args):
    """The Key-Value Transformer paper's synthetic-task model (docs/papers/kv-transformer.md): post-norm layers of
    d_model 64 (its sweep: 64 and 256) with FFN 2 * d_model, 2 layers (2, 4), 4 heads (2, 4), dropout 0.1 in the
    layers and the head; inputs added to sinusoidal positions without scaling.  Dropout before the FFN's ReLU (the
    paper's order) equals fairseq's activation dropout after it."""
    _defaults(args, encoder_embed_dim=64, encoder_layers=2, encoder_attention_heads=4, dropout=0.1)
    _defaults(args, encoder_ffn_embed_dim=2 * args.encoder_embed_dim, activation_dropout=args.dropout,
              encoder_normalize_before=False, no_scale_embedding=True)
    kvattn_classifier_base(args)
