"""Sliding-window softmax attention (`window`) and window + memory layers (`window_memsizer`, `window_linear`,
`window_factorized`, `window_delta`, `window_gated_delta`), the pairing of Based (Arora et al., 2024): exact
attention over the last W tokens gives the short-range precision a fixed-size memory lacks, and the memory carries
everything older.  docs/papers/sliding-window.md states the definitions and the parameters.

Decoding state: a ring of the min(t, W) most recent keys and values (fp32; ops/window.py), so a new token sees W
positions; constant in the output length from t = W, like the memory kinds' state.
"""
from typing import Dict, List, Optional

from torch import Tensor, nn

from ..ops import window as ops
from .base import PENDING_ORDER, KVAttentionBase
from .projected import ProjectedAttention
from .registry import AttentionSite, KindOption, build_attention, positive_int, register_attention_kind

DEFAULT_WINDOW = 64  # Based's sliding window


class WindowAttention(ProjectedAttention):
    """fairseq's q/k/v/out projections and scaled dot products, each query restricted to its window."""

    lazy_reorder = True  # its step runs on kernels/window_step.py, which gathers by a pending reorder

    def __init__(self, embed_dim: int, num_heads: int, position: str, window: int, dropout: float = 0.0):
        super().__init__(embed_dim, num_heads, position, dropout=dropout)
        self.window = window

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}"

    def attend_self(self, x: Tensor, pad: Optional[Tensor], state: Optional[Dict[str, Tensor]]) -> Tensor:
        q, k, v = (self.heads(p, x) for p in (self.q_proj, self.k_proj, self.v_proj))
        if state is None:
            out = ops.attention(q, k, v, self.window, self.causal, pad, self.scaling, self.dropout_p,
                                self.training)
            return self.output(out, x.dtype)
        order = self.take_order(state, fused=x.size(1) == 1)  # a pending reorder: gathered by the step
        ring = {name: state[f"ring_{name}"] for name in RING} if "ring_key" in state else None
        if x.size(1) == 1:
            out, ring = ops.ring_step(q, k, v, ring, self.window, self.scaling, None if pad is None else pad[:, 0],
                                      order)
        else:
            out, ring = ops.ring_prefill(q, k, v, ring, self.window, self.scaling, pad)
        state.update({f"ring_{name}": ring[name] for name in RING})
        return self.output(out, x.dtype)


RING = ("key", "value", "valid", "count")


class WindowMemoryAttention(KVAttentionBase):
    """out = window(x) + memory(x): two branches with their own parameters, summed (each branch keeps its own
    output map: the window's W_O, and the memory kind's own, none for MemSizer).  The memory reads every token,
    the window's too; their decoding states sit side by side in this module's buffer."""

    BRANCHES = ("local", "memory")

    def __init__(self, local: WindowAttention, memory: KVAttentionBase):
        super().__init__(local.embed_dim, local.num_heads, local.position)
        self.local, self.memory = local, memory
        self.lazy_reorder = local.lazy_reorder and memory.lazy_reorder  # each branch gathers by the pending order

    def init_from_softmax(self, softmax: Dict[str, Tensor]) -> List[str]:
        """The window takes the softmax attention's q/k/v/out; the memory's last map starts at zero (the output
        projection, or MemSizer's value LayerNorm), so the converted layer first computes exactly the teacher's
        attention cut to the window, and the memory grows in from there during finetuning."""
        done = [f"local.{name}" for name in self.local.init_from_softmax(softmax)]
        last = getattr(self.memory, "out_proj", None) or self.memory.v_layer_norm
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return done + ["memory: its output map zeroed"]

    def attend_self(self, x: Tensor, pad: Optional[Tensor], state: Optional[Dict[str, Tensor]]) -> Tensor:
        out = 0
        order = None if state is None else state.pop(PENDING_ORDER, None)
        for name in self.BRANCHES:
            sub = None if state is None else {k.split(".", 1)[1]: v for k, v in state.items()
                                              if k.startswith(name + ".")}
            if order is not None and sub:
                sub[PENDING_ORDER] = order
            out = out + getattr(self, name).attend_self(x, pad, sub)
            if state is not None:
                state.update({f"{name}.{k}": v for k, v in sub.items()})
        return out


WINDOW_OPTION = KindOption("--attention-window", DEFAULT_WINDOW, positive_int,
                           "positions W a query sees in window attention: the W most recent (decoder), distance < W "
                           "on each side (encoder)")
_NO_CROSS = {"cross": "a window is a span of the query's own sequence; cross-attention has no such span"}


@register_attention_kind(
    "window", positions=("encoder", "decoder"), options=(WINDOW_OPTION,), unsupported=_NO_CROSS, constant_state=True,
    summary="sliding-window softmax attention over the last W positions, O(T*W) training (Beltagy et al., 2020)")
def build_window(site: AttentionSite) -> WindowAttention:
    return WindowAttention(site.embed_dim, site.num_heads, site.position, site.options["attention_window"],
                           dropout=site.dropout)


def _register_window_memory(memory_kind: str) -> None:
    from .registry import ATTENTION_KINDS

    inner = ATTENTION_KINDS[memory_kind]
    options = (WINDOW_OPTION,) + tuple(o for o in inner.options if o.flag != WINDOW_OPTION.flag)
    positions = tuple(p for p in ("encoder", "decoder") if p in inner.positions)  # where both branches can sit

    def build(site: AttentionSite) -> WindowMemoryAttention:
        local = build_window(site)
        memory_site = AttentionSite(site.position, site.embed_dim, site.num_heads, site.kdim, site.dropout,
                                    {o.dest: site.options[o.dest] for o in inner.options}, site.max_positions)
        return WindowMemoryAttention(local, build_attention(memory_kind, memory_site))

    register_attention_kind(
        f"window_{memory_kind}", positions=positions, options=options, unsupported={**inner.unsupported, **_NO_CROSS},
        constant_state=True, validate=inner.validate,
        summary=f"window attention plus a {memory_kind} memory of the whole sequence, outputs summed "
                f"(Based's pairing, Arora et al., 2024)")(build)


for _memory in ("memsizer", "linear", "factorized", "delta", "gated_delta"):
    _register_window_memory(_memory)
