"""The plumbing every head-wise linear kind shares (factorized, linear, MLK): heads flattened into the batch for the
torch-only ops, the decoding state kept as [B, H, ...] so that fairseq's reorder (index_select on dim 0) selects
hypotheses, and the cross-attention memory built once per source sentence."""
from typing import Dict, Optional

import torch
from torch import Tensor

from .projected import ProjectedAttention


def _flat(t: Tensor) -> Tensor:
    """[B, H, ...] -> [B * H, ...]"""
    return t.reshape(t.size(0) * t.size(1), *t.shape[2:])


def _flat_pad(pad: Optional[Tensor], heads: int) -> Optional[Tensor]:
    return None if pad is None else pad.repeat_interleave(heads, dim=0)


class HeadwiseLinearAttention(ProjectedAttention):
    """A kind implements `_memory`, `_read` and `_causal` on [B * H, ...] tensors and names its state tensors in
    `state_keys`."""

    state_keys = ()

    def key_input(self, src: Tensor) -> Tensor:
        """What the ops take as keys, [B, H, S, d]: projected keys here, mixed key features for MLK."""
        return self.heads(self.k_proj, src)

    def _memory(self, k: Tensor, v: Tensor, pad: Optional[Tensor]) -> Tensor:
        raise NotImplementedError

    def _read(self, q: Tensor, mem: Tensor, dtype) -> Tensor:
        raise NotImplementedError

    def _causal(self, q, k, v, pad, state, step: bool):
        raise NotImplementedError

    def attend_self(self, x: Tensor, pad: Optional[Tensor], state: Optional[Dict[str, Tensor]]) -> Tensor:
        bsz, h = x.size(0), self.num_heads
        q, k, v = _flat(self.heads(self.q_proj, x)), _flat(self.key_input(x)), _flat(self.heads(self.v_proj, x))
        fpad = _flat_pad(pad, h)
        if not self.causal:
            out = self._read(q, self._memory(k, v, fpad), x.dtype)
        else:
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
                extra = {} if rows is None else {"order": rows}
                out, new = self._causal(q[:, 0], k[:, 0], v[:, 0], None if fpad is None else fpad[:, 0], prev,
                                        step=True, **extra)
                out = out.unsqueeze(1)
            else:
                out, new = self._causal(q, k, v, fpad, prev, step=False)
            if state is not None:
                for key, value in zip(self.state_keys, new if isinstance(new, tuple) else (new,)):
                    state[key] = value.view(bsz, h, *value.shape[1:])
        return self.output(out.view(bsz, h, *out.shape[1:]), x.dtype)

    def attend_cross(self, x: Tensor, src: Tensor, src_pad: Optional[Tensor],
                     state: Optional[Dict[str, Tensor]]) -> Tensor:
        h = self.num_heads

        def build(s: Tensor, s_pad: Optional[Tensor]) -> Tensor:
            k, v = _flat(self.key_input(s)), _flat(self.heads(self.v_proj, s))
            mem = self._memory(k, v, _flat_pad(s_pad, h))
            return (mem.view(s.size(0), h, *mem.shape[1:]),)

        mem, = self.static_memory(state, "memory", src, src_pad, build)
        q = self.fold(self.heads(self.q_proj, x), mem.size(0))
        out = self._read(_flat(q), _flat(mem), x.dtype)
        return self.output(self.unfold(out.view(mem.size(0), h, *out.shape[1:]), x.size(0)), x.dtype)
