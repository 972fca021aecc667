"""MemSizer attention as a fairseq module, at every position.

Parameters (docs/papers/memsizer.md): Φ = q_proj (d -> h*k, the learned key slots of h heads), W_l = k_proj
(d_src -> k) and W_r = v_proj (d_src -> d), each followed by a LayerNorm (over k and over d).  No output projection.
"""
from typing import Dict, List, Optional

from torch import Tensor, nn

from fairseq.modules import LayerNorm

from ..ops import memsizer as ops
from .base import KVAttentionBase, copy_linear
from .registry import AttentionSite, KindOption, positive_float, positive_int, register_attention_kind


class MemSizerAttention(KVAttentionBase):
    lazy_reorder = True  # its step runs on kernels/step.py, which gathers by a pending reorder

    def __init__(self, embed_dim: int, num_heads: int, slots: int, position: str, kdim: Optional[int] = None,
                 dropout: float = 0.0, q_init_scale: float = 8.0, kv_init_scale: float = 8.0,
                 chunk: int = ops.DEFAULT_CHUNK):
        super().__init__(embed_dim, num_heads, position)
        kdim = kdim or embed_dim
        self.slots = slots
        self.dropout_p = dropout
        self.chunk = chunk
        self.q_init_scale = q_init_scale
        self.kv_init_scale = kv_init_scale
        self.q_proj = nn.Linear(embed_dim, num_heads * slots)
        self.k_proj = nn.Linear(kdim, slots)
        self.v_proj = nn.Linear(kdim, embed_dim)
        self.k_layer_norm = LayerNorm(slots)
        self.v_layer_norm = LayerNorm(embed_dim)
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, slots={self.slots}"

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.q_proj.weight, gain=self.q_init_scale ** -0.5)
        nn.init.xavier_uniform_(self.k_proj.weight, gain=self.kv_init_scale ** -0.5)
        nn.init.xavier_uniform_(self.v_proj.weight, gain=self.kv_init_scale ** -0.5)
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.zeros_(lin.bias)

    def init_from_softmax(self, softmax: Dict[str, Tensor]) -> List[str]:
        """W_r <- W_O W_V (with bias W_O b_V + b_O): MemSizer has no output projection, so the values must already
        live where softmax attention's output does; its output is a weighted sum of the values, and softmax's is
        W_O (sum_j a_j W_V x_j) + b_O, the same sum of W_O W_V x_j when the heads agree (MemSizer averages its
        heads before the one read).  Phi (q_proj) and W_l (k_proj) score k learned slots, which nothing in W_Q,
        W_K corresponds to: they keep MemSizer's own initialisation."""
        w_o, b_o = softmax["out_proj.weight"].double(), softmax["out_proj.bias"].double()
        w_v, b_v = softmax["v_proj.weight"].double(), softmax["v_proj.bias"].double()
        copy_linear(self.v_proj, softmax, "out_proj·v_proj", weight=w_o @ w_v, bias=w_o @ b_v + b_o)
        return ["v_proj (W_r) <- out_proj·v_proj"]

    # --- the three projections -------------------------------------------------------------------------------
    def read_weights(self, x: Tensor) -> Tensor:
        return ops.slot_distribution(self.q_proj(x), self.num_heads, self.dropout_p, self.training)

    def keys_values(self, src: Tensor):
        return self.k_layer_norm(self.k_proj(src)), self.v_layer_norm(self.v_proj(src))

    # --- positions ---------------------------------------------------------------------------------------------
    def attend_self(self, x: Tensor, pad: Optional[Tensor], state: Optional[Dict[str, Tensor]]) -> Tensor:
        p = self.read_weights(x)
        a, u = self.keys_values(x)
        if not self.causal:
            return ops.read(p, ops.memory(a, u, pad=pad), x.dtype)
        if state is None:
            out, _ = ops.causal_parallel(p, a, u, pad=pad, chunk=self.chunk)
            return out
        order = self.take_order(state, fused=x.size(1) == 1)  # a pending reorder: gathered by the step
        prev = (state["sum"], state["count"]) if "sum" in state else None
        if x.size(1) == 1:
            out, (s, count) = ops.causal_step(p[:, 0], a[:, 0], u[:, 0], state=prev,
                                              pad=None if pad is None else pad[:, 0], order=order)
            out = out.unsqueeze(1)
        else:  # prefill: a whole prompt in one call, same state as stepping through it
            out, (s, count) = ops.causal_parallel(p, a, u, state=prev, pad=pad, chunk=self.chunk)
        state["sum"], state["count"] = s, count
        return out

    def attend_cross(self, x: Tensor, src: Tensor, src_pad: Optional[Tensor],
                     state: Optional[Dict[str, Tensor]]) -> Tensor:
        p = self.read_weights(x)
        mem, = self.static_memory(state, "memory", src, src_pad, lambda s, m: (self._memory(s, m),))
        # one memory row may serve several hypotheses (beam search): fold them into its query axis
        out = ops.read(p.reshape(mem.size(0), -1, p.size(-1)), mem, x.dtype)
        return out.view(x.size(0), x.size(1), -1)

    def _memory(self, src: Tensor, src_pad: Optional[Tensor]) -> Tensor:
        a, u = self.keys_values(src)
        return ops.memory(a, u, pad=src_pad)


MEMSIZER_OPTIONS = (
    KindOption("--memsizer-self-slots", 4, positive_int,
               "MemSizer memory slots k of decoder self-attention (paper: 4 for MT, 32 for LM)"),
    KindOption("--memsizer-cross-slots", 32, positive_int, "MemSizer memory slots k of cross-attention"),
    KindOption("--memsizer-encoder-slots", 32, positive_int, "MemSizer memory slots k of encoder self-attention"),
    KindOption("--memsizer-q-init-scale", 8.0, positive_float,
               "MemSizer key slots (q_proj) Xavier init gain is scale^-1/2"),
    KindOption("--memsizer-kv-init-scale", 8.0, positive_float,
               "MemSizer k_proj/v_proj Xavier init gain is scale^-1/2"),
)
_SLOTS_BY_POSITION = {"decoder": "memsizer_self_slots", "cross": "memsizer_cross_slots",
                      "encoder": "memsizer_encoder_slots"}


@register_attention_kind(
    "memsizer", positions=("encoder", "decoder", "cross"), options=MEMSIZER_OPTIONS, constant_state=True,
    summary="learned key slots, source compressed into a k x d memory, heads averaged before one read "
            "(Zhang & Cai, EMNLP 2022)")
def build_memsizer(site: AttentionSite) -> MemSizerAttention:
    o = site.options
    return MemSizerAttention(site.embed_dim, site.num_heads, o[_SLOTS_BY_POSITION[site.position]], site.position,
                             kdim=site.kdim, dropout=site.dropout, q_init_scale=o["memsizer_q_init_scale"],
                             kv_init_scale=o["memsizer_kv_init_scale"])

