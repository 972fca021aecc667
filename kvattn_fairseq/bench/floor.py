"""The attention-free floor: a benchmark model with every attention module replaced by one that returns zeros and
keeps no state.  Embeddings, layer norms, residuals, FFNs, the output projection, fairseq's decoder and search all
still run, so its step time is what no attention kind can beat; a kind's time over the floor's is what its
attention costs.

Benchmark-only on purpose: it is not a registered kind, so no architecture or command-line flag can select it.
"""
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase

from ..modules.base import KVAttentionBase

FLOOR = "floor"


class NoAttention(KVAttentionBase):
    """fairseq's attention calling convention, output zeros (the residual carries the input through), no state."""

    def attend_self(self, x: Tensor, pad: Optional[Tensor], state: Optional[Dict[str, Tensor]]) -> Tensor:
        return torch.zeros_like(x)

    def attend_cross(self, x: Tensor, src: Tensor, src_pad: Optional[Tensor],
                     state: Optional[Dict[str, Tensor]]) -> Tensor:
        return torch.zeros_like(x)


def strip_attention(model: nn.Module) -> nn.Module:
    """Replace every attention module of fairseq's encoder and decoder layers in place; returns the model."""
    for layer in list(model.modules()):
        if isinstance(layer, TransformerEncoderLayerBase):
            slots = {"self_attn": "encoder"}
        elif isinstance(layer, TransformerDecoderLayerBase):
            slots = {"self_attn": "decoder", "encoder_attn": "cross"}
        else:
            continue
        for name, position in slots.items():
            attn = getattr(layer, name, None)
            if attn is not None:
                setattr(layer, name, NoAttention(attn.embed_dim, attn.num_heads, position, attn.head_dim))
    return model
