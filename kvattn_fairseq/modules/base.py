"""What every attention module of the plugin shares: fairseq's MultiheadAttention calling convention, its
incremental-state buffer, and beam reordering.

Subclasses implement `attend_self(x, pad, state)` (x batch first) for self-attention positions and
`attend_cross(x, src, src_pad, state)` for cross-attention; `state` is the module's buffer in `incremental_state` (a
dict of tensors with the batch first) or None when not decoding incrementally.
"""
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from fairseq.incremental_decoding_utils import with_incremental_state

from .. import kernels

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


PER_SENTENCE = "_per_sentence"  # suffix of state entries kept once per source sentence under beam search
PENDING_ORDER = "pending_order"  # a search's reorder not yet applied: the next fused step gathers its rows by it


@with_incremental_state
class KVAttentionBase(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, position: str, head_dim: Optional[int] = None):
        super().__init__()
        if head_dim is None and embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim or embed_dim // num_heads  # also read by fairseq's decoder layer
        self.position = position
        self.causal = position == "decoder"
        self.beam_size = 1

    def extra_repr(self) -> str:
        return f"position={self.position}, embed_dim={self.embed_dim}, heads={self.num_heads}"

    def forward(self, query: Tensor, key: Optional[Tensor] = None, value: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None, incremental_state: Optional[IncrementalState] = None,
                need_weights: bool = True, static_kv: bool = False, attn_mask: Optional[Tensor] = None,
                before_softmax: bool = False, need_head_weights: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """Time first like fairseq: query [T, B, C], key/value [S, B, C_k]; returns ([T, B, C], None).

        `attn_mask` is ignored: causality is a property of the position (fairseq passes the future mask only
        in training), and no weights are returned (the kinds here never form an attention matrix).
        """
        x = query.transpose(0, 1)
        state = None
        if incremental_state is not None:
            state = self._get_input_buffer(incremental_state)
        if self.position == "cross":
            if key is None:
                raise ValueError("cross-attention needs the encoder output as key")
            out = self.attend_cross(x, key.transpose(0, 1), key_padding_mask, state)
        else:
            out = self.attend_self(x, key_padding_mask, state)
        if incremental_state is not None and state is not None:
            self._set_input_buffer(incremental_state, state)
        return out.transpose(0, 1), None

    def attend_self(self, x: Tensor, pad: Optional[Tensor], state: Optional[Dict[str, Tensor]]) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no self-attention form")

    def attend_cross(self, x: Tensor, src: Tensor, src_pad: Optional[Tensor],
                     state: Optional[Dict[str, Tensor]]) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no cross-attention form")

    def init_from_softmax(self, softmax: Dict[str, Tensor]) -> Optional[List[str]]:
        """Start from the trained fairseq MultiheadAttention this module replaces (`softmax`: its state dict), for
        converting a trained model; returns what was carried over, or None where no mapping keeps a meaning (the
        module then keeps its own initialisation).  docs/conversion.md lists each kind's mapping."""
        return None

    # --- helpers for the kinds -----------------------------------------------------------------------------------
    def split_heads(self, x: Tensor) -> Tensor:
        """[B, T, H * d] -> [B, H, T, d]"""
        return x.view(x.size(0), x.size(1), self.num_heads, -1).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """[B, H, T, d] -> [B, T, H * d]"""
        return x.transpose(1, 2).reshape(x.size(0), x.size(2), -1)

    def static_memory(self, state: Optional[Dict[str, Tensor]], name: str, src: Tensor, src_pad: Optional[Tensor],
                      build: Callable[[Tensor, Optional[Tensor]], Tuple[Tensor, ...]]) -> Tuple[Tensor, ...]:
        """Cross-attention tensors built from the encoder output by `build`, cached on the first decoding step.

        Under fairseq's beam search (set_beam_size > 1) all beams of a sentence get the same encoder output, so the
        tensors are built and kept once per sentence, like fairseq's beamable MultiheadAttention; their batch is
        then the number of sentences, and `x.size(0) // rows` hypotheses share each row.
        """
        if state is None:
            return build(src, src_pad)
        for suffix in (PER_SENTENCE, ""):
            cached = []
            while f"{name}{len(cached)}{suffix}" in state:
                cached.append(state[f"{name}{len(cached)}{suffix}"])
            if cached:
                return tuple(cached)
        suffix = ""
        beam = self.beam_size
        # The beam size is a setting that outlives one search (fairseq sets it only for beam > 1), so the rows are
        # checked to be beam copies before sharing them: one comparison per search, on its first step.
        if beam > 1 and src.size(0) % beam == 0 and torch.equal(src, src[::beam].repeat_interleave(beam, dim=0)):
            src, src_pad, suffix = src[::beam], None if src_pad is None else src_pad[::beam], PER_SENTENCE
        built = build(src, src_pad)
        for i, t in enumerate(built):
            state[f"{name}{i}{suffix}"] = t
        return built

    # --- incremental state -------------------------------------------------------------------------------------
    def _get_input_buffer(self, incremental_state: Optional[IncrementalState]) -> Dict[str, Optional[Tensor]]:
        result = self.get_incremental_state(incremental_state, "attn_state")
        return result if result is not None else {}

    def _set_input_buffer(self, incremental_state: Optional[IncrementalState], buffer: Dict[str, Optional[Tensor]]):
        return self.set_incremental_state(incremental_state, "attn_state", buffer)

    def set_beam_size(self, beam_size: int) -> None:
        self.beam_size = beam_size

    # A causal kind whose fused decoding step (kvattn_fairseq/kernels) reads its state rows through an index sets
    # this: on the kernels' devices, a search's reorder is then recorded, not applied, and the next step gathers the
    # rows it reads (one launch instead of an index_select per state tensor and layer).
    lazy_reorder = False

    def take_order(self, state: Dict[str, Tensor], fused: bool) -> Optional[Tensor]:
        """The reorder pending in `state`, removed from it: returned for a fused step to gather by, or (`fused`
        False: a step of the PyTorch ops, a prompt, a read of the state) applied here to every entry first."""
        order = state.pop(PENDING_ORDER, None)
        if order is None or fused:
            return order
        for k, v in state.items():
            if v is not None:
                state[k] = v.index_select(0, order)
        return None

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor):
        """Select hypotheses: `new_order` may permute them and may be shorter (finished sentences dropped)."""
        buffer = self._get_input_buffer(incremental_state)
        if not buffer:
            return incremental_state
        first = next((v for v in buffer.values() if v is not None), None)
        if self.lazy_reorder and self.causal and first is not None and kernels.fused_step(first):
            pending = buffer.get(PENDING_ORDER)
            buffer[PENDING_ORDER] = new_order if pending is None else pending.index_select(0, new_order)
            return self._set_input_buffer(incremental_state, buffer)
        # Skipping the copy for an identity order (greedy search) needs the order's values: free on the CPU, but on
        # a GPU reading them back would stall every decoding step, so there the state is always gathered.
        if first is not None and new_order.device.type == "cpu" and first.size(0) == new_order.numel() and \
                torch.equal(new_order, torch.arange(new_order.numel())):
            return incremental_state
        for k, v in buffer.items():
            if v is None:
                continue
            if k.endswith(PER_SENTENCE) and self.beam_size > 1:
                # One row per sentence: beams of a sentence are contiguous in fairseq's search, so only dropped
                # sentences change anything.
                if v.size(0) * self.beam_size == new_order.numel():
                    continue
                buffer[k] = v.index_select(0, new_order.view(-1, self.beam_size)[:, 0] // self.beam_size)
            else:
                buffer[k] = v.index_select(0, new_order)
        return self._set_input_buffer(incremental_state, buffer)


def copy_linear(target: nn.Linear, softmax: Dict[str, Tensor], name: str, weight: Optional[Tensor] = None,
                bias: Optional[Tensor] = None) -> None:
    """target <- softmax's `name` projection (or the given weight and bias), refusing a shape that does not fit."""
    weight = softmax[f"{name}.weight"] if weight is None else weight
    bias = softmax.get(f"{name}.bias") if bias is None else bias
    if tuple(weight.shape) != tuple(target.weight.shape):
        raise ValueError(f"{name}.weight is {list(target.weight.shape)} here but {list(weight.shape)} in the "
                         f"softmax attention it replaces")
    with torch.no_grad():
        target.weight.copy_(weight)
        if target.bias is not None:
            target.bias.copy_(bias) if bias is not None else target.bias.zero_()
