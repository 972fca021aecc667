"""Multi-head attention modules with fairseq MultiheadAttention's projections and initialisation."""
import math
from typing import Dict, List, Optional

from torch import Tensor, nn

from .base import KVAttentionBase, copy_linear


class ProjectedAttention(KVAttentionBase):
    """q/k/v/out projections as fairseq builds them; `query_projection=False` leaves W_Q out entirely and
    `key_projections` > 1 gives one key projection per mixture component (`k_proj` + `k_projs`).  `head_dim`
    decouples the heads' width from embed_dim / num_heads (fewer heads of the same width)."""

    def __init__(self, embed_dim: int, num_heads: int, position: str, kdim: Optional[int] = None,
                 dropout: float = 0.0, query_projection: bool = True, head_dim: Optional[int] = None,
                 key_projections: int = 1):
        super().__init__(embed_dim, num_heads, position, head_dim)
        kdim = kdim or embed_dim
        inner = num_heads * self.head_dim
        self.dropout_p = dropout
        self.scaling = self.head_dim ** -0.5
        self.q_proj = nn.Linear(embed_dim, inner) if query_projection else None
        self.k_proj = nn.Linear(kdim, inner)
        self.k_projs = nn.ModuleList(nn.Linear(kdim, inner) for _ in range(key_projections - 1))
        self.v_proj = nn.Linear(kdim, inner)
        self.out_proj = nn.Linear(inner, embed_dim)
        same_dim = kdim == embed_dim and inner == embed_dim
        for lin in (self.q_proj, self.k_proj, *self.k_projs, self.v_proj):
            if lin is not None:  # fairseq: gain 1/sqrt(2) when q, k, v share the input size
                nn.init.xavier_uniform_(lin.weight, gain=1 / math.sqrt(2) if same_dim else 1.0)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def init_from_softmax(self, softmax: Dict[str, Tensor]) -> List[str]:
        """The q/k/v/out projections carry over unchanged (a kind without W_Q drops it); extra key projections
        (mixture components) all start from the softmax keys.  Kind-specific parameters keep their own init."""
        done = []
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            if getattr(self, name) is not None:
                copy_linear(getattr(self, name), softmax, name)
                done.append(name)
        for i, lin in enumerate(self.k_projs):
            copy_linear(lin, softmax, "k_proj")
            done.append(f"k_projs.{i} <- k_proj")
        return done

    def heads(self, proj: nn.Linear, x: Tensor) -> Tensor:
        """[B, T, C] -> [B, H, T, d] through a projection."""
        return self.split_heads(proj(x))

    def output(self, out: Tensor, dtype) -> Tensor:
        """[B, H, T, d] -> [B, T, C] through the output projection."""
        return self.out_proj(self.merge_heads(out).to(dtype))

    @staticmethod
    def fold(q: Tensor, rows: int) -> Tensor:
        """[B, H, T, d] -> [rows, H, (B / rows) T, d]: hypotheses sharing one per-sentence memory row."""
        b, h, t, d = q.shape
        return q.view(rows, b // rows, h, t, d).transpose(1, 2).reshape(rows, h, (b // rows) * t, d)

    @staticmethod
    def unfold(out: Tensor, bsz: int) -> Tensor:
        rows, h, gt, d = out.shape
        t = gt // (bsz // rows)
        return out.view(rows, h, bsz // rows, t, d).transpose(1, 2).reshape(bsz, h, t, d)
