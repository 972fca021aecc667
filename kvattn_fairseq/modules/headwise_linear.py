"""The one causal path of the head-wise recurrent kinds (linear, factorized, MLK, delta): heads folded into the
batch for the ops (the contract in ops/__init__.py), the decoding state kept as [B, H, ...] so that fairseq's
reorder (index_select on dim 0) selects hypotheses, and the cross-attention memory built once per source
sentence."""
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .projected import ProjectedAttention


def _flat(t: Tensor) -> Tensor:
    """[B, H, ...] -> [B * H, ...]"""
    return t.reshape(t.size(0) * t.size(1), *t.shape[2:])


def _flat_pad(pad: Optional[Tensor], heads: int) -> Optional[Tensor]:
    return None if pad is None else pad.repeat_interleave(heads, dim=0)


class HeadwiseLinearAttention(ProjectedAttention):
    """A kind names its ops in `family` (an ops module, or a namespace of the same functions: causal_parallel,
    causal_step, and memory and read where it has a non-causal form), its state tensors in `state_keys`, and what
    the ops take in `query_input`, `key_input` or, with per-token inputs beside q, k, v, `inputs`."""

    family = None
    state_keys: Tuple[str, ...] = ()
    chunk: Optional[int] = None  # the chunk of the parallel path; None: the family's default

    def query_input(self, x: Tensor) -> Tensor:
        """What the ops take as queries, [B, H, T, d]."""
        return self.heads(self.q_proj, x)

    def key_input(self, src: Tensor) -> Tensor:
        """What the ops take as keys, [B, H, S, d]: projected keys here, mixed key features for MLK."""
        return self.heads(self.k_proj, src)

    def inputs(self, x: Tensor) -> Tuple[Tensor, ...]:
        """The causal ops' inputs, heads folded: q, k [B * H, T, dk], v [B * H, T, dv], then the family's own
        per-token inputs [B * H, T] (none here)."""
        return _flat(self.query_input(x)), _flat(self.key_input(x)), _flat(self.heads(self.v_proj, x))

    def attend_self(self, x: Tensor, pad: Optional[Tensor], state: Optional[Dict[str, Tensor]]) -> Tensor:
        bsz, h = x.size(0), self.num_heads
        inputs = self.inputs(x)
        fpad = _flat_pad(pad, h)
        if not self.causal:
            q, k, v = inputs
            out = self.family.read(q, self.family.memory(k, v, pad=fpad), x.dtype)
            return self.output(out.view(bsz, h, *out.shape[1:]), x.dtype)
        prev, order = None, None
        step = state is not None and x.size(1) == 1
        if state is not None:
            order = self.take_order(state, fused=step)  # a pending reorder: gathered by the fused step
        if state is not None and self.state_keys[0] in state:
            prev = tuple(_flat(state[key]) for key in self.state_keys)
            prev = prev[0] if len(prev) == 1 else prev
        if step:
            rows = None if order is None else \
                (order.view(-1, 1) * h + torch.arange(h, device=order.device)).view(-1)  # heads are rows
            out, new = self.family.causal_step(*(t[:, 0] for t in inputs), state=prev,
                                               pad=None if fpad is None else fpad[:, 0], order=rows)
            out = out.unsqueeze(1)
        else:
            chunk = {} if self.chunk is None else {"chunk": self.chunk}
            out, new = self.family.causal_parallel(*inputs, state=prev, pad=fpad, **chunk)
        if state is not None:
            for key, value in zip(self.state_keys, new if isinstance(new, tuple) else (new,)):
                state[key] = value.view(bsz, h, *value.shape[1:])
        return self.output(out.view(bsz, h, *out.shape[1:]), x.dtype)

    def attend_cross(self, x: Tensor, src: Tensor, src_pad: Optional[Tensor],
                     state: Optional[Dict[str, Tensor]]) -> Tensor:
        h = self.num_heads

        def build(s: Tensor, s_pad: Optional[Tensor]) -> Tuple[Tensor]:
            k, v = _flat(self.key_input(s)), _flat(self.heads(self.v_proj, s))
            mem = self.family.memory(k, v, pad=_flat_pad(s_pad, h))
            return (mem.view(s.size(0), h, *mem.shape[1:]),)

        mem, = self.static_memory(state, "memory", src, src_pad, build)
        q = self.fold(self.query_input(x), mem.size(0))
        out = self.family.read(_flat(q), _flat(mem), x.dtype)
        return self.output(self.unfold(out.view(mem.size(0), h, *out.shape[1:]), x.size(0)), x.dtype)
