"""The one causal path of the head-wise recurrent kinds (linear, factorized, MLK, delta, gated delta): heads folded
into the batch for the ops (the contract in ops/__init__.py), the decoding state kept as [B, H, ...] so that fairseq's
reorder (index_select on dim 0) selects hypotheses, and the cross-attention memory built once per source sentence.

The kinds that take `--short-conv K` (linear, delta, gated delta) get their short convolution here, once: it runs
over the concatenated q/k/v projections before each kind's feature maps, causal positions only, with its last K-1
inputs beside the kind's state (short_conv.py).  K = 0 builds nothing: no module, no parameter, no state entry.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .projected import ProjectedAttention
from .short_conv import STATE_KEY as CONV_KEY
from .short_conv import ShortConvolution


def _flat(t: Tensor) -> Tensor:
    """[B, H, ...] -> [B * H, ...]"""
    return t.reshape(t.size(0) * t.size(1), *t.shape[2:])


def _flat_pad(pad: Optional[Tensor], heads: int) -> Optional[Tensor]:
    return None if pad is None else pad.repeat_interleave(heads, dim=0)


class HeadwiseLinearAttention(ProjectedAttention):
    """A kind names its ops in `family` (an ops module, or a namespace of the same functions: causal_parallel,
    causal_step, and memory and read where it has a non-causal form), its state tensors in `state_keys`, and what
    the ops take in `query_input`, `key_input` or, with per-token inputs beside q, k, v, `inputs`; `value_map` and
    `finish` are what it does to the values before the memory and to the memory's output after it."""

    family = None
    state_keys: Tuple[str, ...] = ()
    chunk: Optional[int] = None  # the chunk of the parallel path; None: the family's default

    def __init__(self, embed_dim: int, num_heads: int, position: str, *, short_conv: int = 0, **kwargs):
        super().__init__(embed_dim, num_heads, position, **kwargs)
        if short_conv and not self.causal:  # the registry refuses it first; this guards direct construction
            raise ValueError(f"--short-conv {short_conv}: the short convolution is causal, decoder self-attention "
                             f"only (got {position})")
        self.conv = ShortConvolution.maybe(3 * num_heads * self.head_dim, short_conv)  # over [W_Q x | W_K x | W_V x]

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.conv is None else f", short_conv={self.conv.kernel}")

    def init_from_softmax(self, softmax: Dict[str, Tensor]) -> List[str]:
        """The projections carry over (ProjectedAttention); a short convolution starts as the identity, so that each
        position's q, k, v are the teacher's projections of that position."""
        done = super().init_from_softmax(softmax)
        if self.conv is not None:
            self.conv.reset_to_identity()
            done.append("conv: identity (last tap 1)")
        return done

    def query_input(self, x: Tensor) -> Tensor:
        """What the ops take as queries, [B * H, T, d]."""
        return self.flat_heads(self.q_proj, x)

    def key_input(self, src: Tensor) -> Tensor:
        """What the ops take as keys, [B * H, S, d]: projected keys here, mixed key features for MLK."""
        return self.flat_heads(self.k_proj, src)

    def value_map(self, v: Tensor, dtype: torch.dtype) -> Tensor:
        """The values as the memory takes them, from v [B * H, T, d] (fp32 after a short convolution); `dtype` is the
        projections' precision, the one v goes in with (bf16 under autocast, for the fused kernels)."""
        return v if v.dtype == dtype else v.to(dtype)

    def projections(self, x: Tensor, pad: Optional[Tensor] = None,
                    state: Optional[Dict[str, Tensor]] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """q, k, v [B * H, T, d] before the kind's feature maps: `query_input`, `key_input` and the value projection,
        or, with a short convolution, the three projections convolved together (q and k in fp32, the convolution's
        precision; its last inputs kept in the decoding buffer `state`), then `value_map` on v."""
        if self.conv is None:
            v = self.flat_heads(self.v_proj, x)
            return self.query_input(x), self.key_input(x), self.value_map(v, v.dtype)
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        q, k, v = (_flat(self.split_heads(t)) for t in self.conv.run(qkv, pad, state).chunk(3, dim=-1))
        return q, k, self.value_map(v, qkv.dtype)

    def inputs(self, x: Tensor, pad: Optional[Tensor] = None,
               state: Optional[Dict[str, Tensor]] = None) -> Tuple[Tensor, ...]:
        """The causal ops' inputs, heads folded: q, k [B * H, T, dk], v [B * H, T, dv], then the family's own
        per-token inputs [B * H, T] (none here).  `pad` and `state` are the short convolution's."""
        return self.projections(x, pad, state)

    def flat_heads(self, proj: nn.Module, x: Tensor) -> Tensor:
        """[B, T, C] -> [B * H, T, d] through a projection; one view for a decoding step's single token."""
        y = proj(x)
        if y.size(1) == 1:
            return y.view(y.size(0) * self.num_heads, 1, -1)
        return _flat(self.split_heads(y))

    def finish(self, out: Tensor, x: Tensor) -> Tensor:
        """The ops' output [B * H, T, dv] (a decoding step's: [B * H, dv]) -> the layer's [B, T, C]: the output
        projection over the heads."""
        if out.dim() == 2:  # one token: the heads are in order already, one view
            out = out.view(x.size(0), 1, -1)
            return self.out_proj(out if out.dtype == x.dtype else out.to(x.dtype))
        return self.output(out.view(x.size(0), self.num_heads, *out.shape[1:]), x.dtype)

    def attend_self(self, x: Tensor, pad: Optional[Tensor], state: Optional[Dict[str, Tensor]]) -> Tensor:
        if state is not None and x.size(1) == 1:
            return self._step(x, pad, state)
        bsz, h = x.size(0), self.num_heads
        fpad = _flat_pad(pad, h)
        if not self.causal:
            q, k, v = self.inputs(x)
            return self.finish(self.family.read(q, self.family.memory(k, v, pad=fpad), x.dtype), x)
        prev = None
        if state is not None:
            self.take_order(state, fused=False)  # a pending reorder is applied before a prompt reads the state
            prev = self._state_rows(state)
        chunk = {} if self.chunk is None else {"chunk": self.chunk}
        out, new = self.family.causal_parallel(*self.inputs(x, pad, state), state=prev, pad=fpad, **chunk)
        if state is not None:
            self._keep_state(state, new, bsz)
        return self.finish(out, x)

    def _step(self, x: Tensor, pad: Optional[Tensor], state: Dict[str, Tensor]) -> Tensor:
        """One decoding token: the family's step on [B * H, ...] rows, with as few operations around it as may be
        (on the CPU each costs microseconds of dispatch, whatever its size: tens of them per layer and token)."""
        bsz, h = x.size(0), self.num_heads
        order = self.take_order(state, fused=True)  # a pending reorder: gathered by the fused step
        rows = None
        if order is not None:
            rows = (order.view(-1, 1) * h + torch.arange(h, device=order.device)).view(-1)  # heads are rows
            if CONV_KEY in state:  # the convolution's last inputs are gathered here, before it reads them
                state[CONV_KEY] = state[CONV_KEY].index_select(0, order)
        inputs = self.inputs(x, pad, state)
        out, new = self.family.causal_step(*(t.select(1, 0) for t in inputs), state=self._state_rows(state),
                                           pad=None if pad is None else pad[:, 0].repeat_interleave(h), order=rows)
        self._keep_state(state, new, bsz)
        return self.finish(out, x)

    def _state_rows(self, state: Dict[str, Tensor]):
        """The state kept in `state` ([B, H, ...] entries; B the rows before a pending reorder) as the ops take it,
        [B * H, ...]; None before the first token."""
        if self.state_keys[0] not in state:
            return None
        if len(self.state_keys) == 1:
            return state[self.state_keys[0]].flatten(0, 1)
        return tuple(state[key].flatten(0, 1) for key in self.state_keys)

    def _keep_state(self, state: Dict[str, Tensor], new, bsz: int) -> None:
        for key, value in zip(self.state_keys, new if isinstance(new, tuple) else (new,)):
            state[key] = value.view(bsz, -1, *value.shape[1:])

    def attend_cross(self, x: Tensor, src: Tensor, src_pad: Optional[Tensor],
                     state: Optional[Dict[str, Tensor]]) -> Tensor:
        h = self.num_heads

        def build(s: Tensor, s_pad: Optional[Tensor]) -> Tuple[Tensor]:
            k, v = self.key_input(s), self.flat_heads(self.v_proj, s)
            mem = self.family.memory(k, v, pad=_flat_pad(s_pad, h))
            return (mem.view(s.size(0), h, *mem.shape[1:]),)

        mem, = self.static_memory(state, "memory", src, src_pad, build)
        q = self.query_input(x)
        q = self.fold(q.view(x.size(0), h, *q.shape[1:]), mem.size(0))
        out = self.family.read(_flat(q), _flat(mem), x.dtype)
        return self.output(self.unfold(out.view(mem.size(0), h, *out.shape[1:]), x.size(0)), x.dtype)
