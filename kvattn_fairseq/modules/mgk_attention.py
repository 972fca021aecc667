"""Transformer-MGK, sMGK and the linear MLK (Nguyen et al., ICML 2022): keys as mixtures of Gaussians.

`mgk` has a key projection per component; `smgk` one projection plus a learned per-head shift per component
(initialised N(0, 0.5^2) with the first shift at 0, as the official code); `mlk` mixes elu+1 feature maps of
per-component keys before accumulating, so its state is linear attention's.  Fewer heads is the point: with
`--mgk-head-dim` the heads keep their width when their number drops (the paper's MGK-4 vs softmax-8, d_head 16).
`--mgk-pi em` is the paper's ablation design B (docs/papers/mgk.md, "EM-updated mixture weights").
"""
import argparse
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import linear as lops
from ..ops import mgk as ops
from ..ops import softmax_kv
from .headwise_linear import HeadwiseLinearAttention, _flat
from .projected import ProjectedAttention
from .registry import (AttentionConfigError, AttentionSite, KindOption, bounded_int, choice, positive_float_list,
                       positive_int, register_attention_kind)

PI_MODES = ("softmax", "clamp", "uniform", "position", "em")
PI_MIN = 1e-6  # the official code clamps pi to [0, 1]; log(0) would be -inf
# Larger inverse-variance scales make each query pick its nearest key outright and scale the scores' gradients by
# s: training ends in NaN (1e30 did), so they are refused; the paper's and the official code's values are 1 to 3.
INV_VAR_MAX = 1000.0
PI_POSITIONS_MAX = 1 << 20  # a table entry per key position: far more than any model's --max-*-positions
TABLE_MODES = ("position", "em")  # pi indexed by the key's absolute position


class MixtureWeights(nn.Module):
    """pi per head and component: `softmax` (learned, normalised; uniform at init), `clamp` (learned, each weight
    clamped to [1e-6, 1] and not normalised: the official code), `uniform` (fixed 1/M), `position` (learned per key
    position, normalised: the official LM code's table; keys past the table are refused), `em` (per head and key
    position like `position`, but a buffer set by the EM rule in training, never by gradient: the paper's design B,
    the official code's `soft` update modes)."""

    def __init__(self, heads: int, components: int, mode: str, positions: int = 1024):
        super().__init__()
        self.mode, self.components, self.positions = mode, components, positions
        if mode == "softmax":
            self.logits = nn.Parameter(torch.zeros(heads, components))
        elif mode == "clamp":
            self.weight = nn.Parameter(torch.full((heads, components), 0.5))
        elif mode == "position":
            self.logits = nn.Parameter(torch.zeros(heads, positions, components))
        elif mode == "em":  # saved in checkpoints with the parameters; the optimizer never sees it
            self.register_buffer("em_pi", torch.full((heads, positions, components), 1.0 / components))

    def _apply(self, fn, recurse=True):
        """--fp16/--bf16 cast every floating buffer; the EM table is an average kept in fp32 (only moved)."""
        kept = getattr(self, "em_pi", None)
        super()._apply(fn, recurse)
        if kept is not None and self.em_pi.dtype != torch.float32:
            self.em_pi = kept.to(device=self.em_pi.device, dtype=torch.float32)
        return self

    def extra_repr(self) -> str:
        return f"mode={self.mode}, components={self.components}"

    def log_pi(self, key_positions: Optional[Tensor] = None) -> Optional[Tensor]:
        """log pi broadcastable to [B, H, Tk, M]; None for equal weights (a constant that cancels)."""
        if self.mode == "uniform":
            return None
        if self.mode == "softmax":
            return F.log_softmax(self.logits, dim=-1)[None, :, None, :]
        if self.mode == "clamp":
            return self.weight.clamp(PI_MIN, 1.0).log()[None, :, None, :]
        # positions count real tokens, so none can pass the table while the keys are fewer than its entries: the
        # value is read back (a device sync) only past that length
        if key_positions.size(-1) > self.positions and int(key_positions.max()) >= self.positions:
            raise ValueError(f"mgk: key position {int(key_positions.max())} is past the {self.positions}-entry "
                             f"mixture-weight table (--mgk-pi-positions)")
        table = self.em_pi.clamp(min=PI_MIN).log() if self.mode == "em" else F.log_softmax(self.logits, dim=-1)
        return table[:, key_positions].permute(1, 0, 2, 3)

    @torch.no_grad()
    def em_update(self, sums: Tensor, queries: Tensor, key_real: Tensor, positions: Tensor) -> None:
        """The EM rule: pi[h, p, r] = the mean responsibility of component r for the keys at position p, over every
        real (query, key) pair of the batch.  sums [B, H, Tk, M]: responsibilities summed over each row's real
        queries (ops.mgk.responsibility_sums); queries [B]: each row's real queries; key_real [B, Tk]; positions
        [B, Tk].  Sums and counts are added over the data-parallel workers before dividing, so every worker takes
        the same step (the EM rule over the global batch), whatever the --ddp-backend and --broadcast-buffers.
        Positions no key of the batch had keep their value."""
        rows = sums.permute(0, 2, 1, 3)[key_real].flatten(1)  # [N, H * M]
        counts = queries.to(rows.dtype).unsqueeze(1).expand(key_real.shape)[key_real].unsqueeze(1)
        stats = rows.new_zeros(self.positions, rows.size(1) + 1)
        stats.index_add_(0, positions[key_real], torch.cat([rows, counts], dim=1))
        _sum_over_data_parallel_workers(stats)
        seen = stats[:, -1] > 0
        new = stats[seen, :-1] / stats[seen, -1:]
        self.em_pi[:, seen] = new.view(-1, *self.em_pi.shape[::2]).transpose(0, 1)

    def pi(self) -> Tensor:
        """pi per head and component, [H, M] (for MLK)."""
        if self.mode == "uniform":
            return torch.full((1, self.components), 1.0 / self.components)
        return self.log_pi().exp()[0, :, 0]


def _sum_over_data_parallel_workers(t: Tensor) -> None:
    from fairseq.distributed import utils as dist

    group = dist.get_data_parallel_group()
    if dist.get_world_size(group) > 1:
        dist.all_reduce(t, group)


def _positions(pad: Tensor, before: Optional[Tensor] = None) -> Tensor:
    """Absolute key positions counted over real tokens (a left-padded row sees the positions it would alone)."""
    pos = torch.cumsum((~pad).long(), dim=1) - 1
    if before is not None:
        pos = pos + before.unsqueeze(1)
    return pos.clamp(min=0)


class MGKAttention(ProjectedAttention):
    def __init__(self, embed_dim: int, num_heads: int, position: str, kdim: Optional[int] = None,
                 dropout: float = 0.0, components: int = 2, shifted: bool = False, pi: str = "softmax",
                 inv_var=(1.0,), hard: bool = False, head_dim: Optional[int] = None, pi_positions: int = 1024):
        super().__init__(embed_dim, num_heads, position, kdim=kdim, dropout=dropout, head_dim=head_dim,
                         key_projections=1 if shifted else components)
        self.components, self.shifted, self.hard = components, shifted, hard
        self.inv_var = tuple(inv_var) * components if len(inv_var) == 1 else tuple(inv_var)
        self.mixture = MixtureWeights(num_heads, components, pi, pi_positions)
        if shifted:
            shifts = torch.randn(components, num_heads, self.head_dim) * 0.5
            shifts[0] = 0.0
            self.shifts = nn.Parameter(shifts)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, components={self.components}, shifted={self.shifted}, "
                f"{'hard' if self.hard else 'soft'}-E, inv_var={self.inv_var}")

    def project_keys(self, src: Tensor) -> Tensor:
        """What the cache holds: [B, H, S, M, d] (mgk) or [B, H, S, d] (smgk: shifts are added at use)."""
        if self.shifted:
            return self.heads(self.k_proj, src)
        return torch.stack([self.heads(p, src) for p in (self.k_proj, *self.k_projs)], dim=3)

    def component_keys(self, keys: Tensor) -> Tensor:
        if not self.shifted:
            return keys
        return keys.unsqueeze(3) - self.shifts.permute(1, 0, 2).unsqueeze(1).unsqueeze(0)

    def _attend(self, q: Tensor, keys: Tensor, v: Tensor, key_pad: Tensor, positions: Tensor, causal: bool):
        log_pi = self.mixture.log_pi(positions if self.mixture.mode in TABLE_MODES else None)
        # (a decoding step takes the mask as it is: checking it for padding would read back from the device)
        few = q.size(-2) <= softmax_kv.FEW_QUERIES
        return ops.attention(q, self.component_keys(keys), v, self.inv_var, log_pi=log_pi, hard=self.hard,
                             pad=key_pad if few or bool(key_pad.any()) else None, causal=causal,
                             dropout_p=self.dropout_p, training=self.training)

    def _em_step(self, q: Tensor, keys: Tensor, pad: Tensor, positions: Tensor) -> None:
        """--mgk-pi em in training: after the forward has used pi, set it by the EM rule from this batch."""
        with torch.no_grad():
            real = ~pad
            sums = ops.responsibility_sums(q, self.component_keys(keys), self.inv_var,
                                           self.mixture.log_pi(positions), real)
            self.mixture.em_update(sums, real.sum(1), real, positions)

    def attend_self(self, x: Tensor, pad: Optional[Tensor], state: Optional[Dict[str, Tensor]]) -> Tensor:
        q, keys, v = self.heads(self.q_proj, x), self.project_keys(x), self.heads(self.v_proj, x)
        new_pad = pad if pad is not None else torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        cached = state is not None and "prev_key" in state
        before = (~state["prev_key_padding_mask"]).sum(1) if cached else None
        positions = _positions(new_pad, before)
        key_pad = new_pad
        if cached:
            keys = torch.cat([state["prev_key"], keys], dim=2)
            v = torch.cat([state["prev_value"], v], dim=2)
            key_pad = torch.cat([state["prev_key_padding_mask"], new_pad], dim=1)
            positions = torch.cat([state["prev_key_position"], positions], dim=1)
        if state is not None:
            state.update(prev_key=keys, prev_value=v, prev_key_padding_mask=key_pad, prev_key_position=positions)
        out = self._attend(q, keys, v, key_pad, positions, self.causal)
        # decoding (state given) and evaluation read pi as it is; only a training forward moves it
        if self.mixture.mode == "em" and self.training and state is None:
            self._em_step(q, keys, new_pad, positions)
        return self.output(out, x.dtype)

    def attend_cross(self, x: Tensor, src: Tensor, src_pad: Optional[Tensor],
                     state: Optional[Dict[str, Tensor]]) -> Tensor:
        def build(s: Tensor, s_pad: Optional[Tensor]):
            s_pad = s_pad if s_pad is not None else torch.zeros(s.shape[:2], dtype=torch.bool, device=s.device)
            return self.project_keys(s), self.heads(self.v_proj, s), s_pad, _positions(s_pad)

        keys, v, key_pad, positions = self.static_memory(state, "source", src, src_pad, build)
        q = self.fold(self.heads(self.q_proj, x), keys.size(0))
        out = self._attend(q, keys, v, key_pad, positions, causal=False)
        return self.output(self.unfold(out, x.size(0)), x.dtype)


class MLKAttention(HeadwiseLinearAttention):
    """Linear MGK: phi(q)^T sum_j (sum_r pi_r phi(k_jr)) v_j^T / phi(q)^T sum_j sum_r pi_r phi(k_jr)."""

    state_keys = ("kv_sum",)

    def __init__(self, embed_dim: int, num_heads: int, position: str, kdim: Optional[int] = None,
                 dropout: float = 0.0, components: int = 2, pi: str = "softmax", head_dim: Optional[int] = None):
        super().__init__(embed_dim, num_heads, position, kdim=kdim, dropout=dropout, head_dim=head_dim,
                         key_projections=components)
        self.components = components
        self.mixture = MixtureWeights(num_heads, components, pi)

    family = lops.ON_FEATURES  # linear attention on features: phi(q) and the mixed phi(k_r) come from here
    lazy_reorder = True  # its step runs on kernels/step.py, which gathers by a pending reorder

    def query_input(self, x: Tensor) -> Tensor:
        return lops.feature_map(self.flat_heads(self.q_proj, x))

    def key_input(self, src: Tensor) -> Tensor:
        keys = torch.stack([self.heads(p, src) for p in (self.k_proj, *self.k_projs)], dim=3)  # [B, H, S, M, d]
        pi = self.mixture.pi().to(keys.device)[None, :, None, :]
        return _flat(ops.mixed_key_features(keys, pi))


def inv_var_scales(text: str):
    values = positive_float_list(text)
    if any(v > INV_VAR_MAX for v in values):
        raise argparse.ArgumentTypeError(f"expected scales of at most {INV_VAR_MAX:g} (larger ones make the scores "
                                         f"overflow in training), got {text!r}")
    return values


MGK_OPTIONS = {
    "components": KindOption("--mgk-components", 2, positive_int,
                             "mixture components M per key (mgk, smgk, mlk)"),
    "pi": KindOption("--mgk-pi", "softmax", choice(*PI_MODES),
                     "mixture weights: softmax (learned, normalised), clamp (learned, clamped to [0,1]: the official "
                     "code), uniform (fixed), position (learned per key position: the official LM code; mgk/smgk), "
                     "em (per key position, set by the EM rule in training, frozen at inference: the paper's "
                     "design B; mgk/smgk self-attention with --mgk-estep soft)"),
    "inv_var": KindOption("--mgk-inv-var-scales", "1", inv_var_scales,
                          "inverse-variance scale s_r per component, sigma_r^2 = sqrt(d_head)/s_r: one value for all, "
                          "or M values ('1,3' is the official LM code)"),
    "estep": KindOption("--mgk-estep", "soft", choice("soft", "hard"),
                        "soft: log-sum-exp over components; hard: max over components (pi unused)"),
    "head_dim": KindOption("--mgk-head-dim", None, positive_int,
                           "width of each head (default: embed dim / heads); keeps d_head when the heads are fewer"),
    "pi_positions": KindOption("--mgk-pi-positions", 1024,
                               bounded_int(PI_POSITIONS_MAX, "one table entry per key position, for every head and "
                                                             "component"),
                               "size of the per-position mixture-weight table of --mgk-pi position and em (at most "
                               f"{PI_POSITIONS_MAX})"),
}


def _check_mgk(o: Dict[str, Any], position: str) -> None:
    m, scales = o["mgk_components"], o["mgk_inv_var_scales"]
    if len(scales) not in (1, m):
        raise AttentionConfigError(f"--mgk-inv-var-scales: {len(scales)} values for {m} components "
                                   f"(--mgk-components); give one value or {m}")
    if o["mgk_pi"] == "em" and o["mgk_estep"] == "hard":
        raise AttentionConfigError("--mgk-pi: 'em' averages the soft E-step's responsibilities, which "
                                   "--mgk-estep hard does not compute (it ignores pi); use --mgk-estep soft")
    if o["mgk_pi"] == "em" and position == "cross":
        raise AttentionConfigError("--mgk-pi: 'em' cannot be used for cross-attention: fairseq does not tell it "
                                   "which target positions are padding, which the EM averages must leave out; "
                                   "use another kind or --mgk-pi there (--cross-attention-type)")


def _check_mlk(o: Dict[str, Any], position: str) -> None:
    if o["mgk_pi"] == "position":
        raise AttentionConfigError("--mgk-pi: 'position' is not supported by mlk (its state has no key positions); "
                                   "use softmax, clamp or uniform")
    if o["mgk_pi"] == "em":
        raise AttentionConfigError("--mgk-pi: 'em' is not supported by mlk: its responsibilities need every "
                                   "query-key score, which linear attention never forms (the official code has no "
                                   "EM for MLK either); use softmax, clamp or uniform")


def _mgk(site: AttentionSite, shifted: bool) -> MGKAttention:
    o = site.options
    if o["mgk_pi"] in TABLE_MODES and site.max_positions and o["mgk_pi_positions"] < site.max_positions:
        flag = "--max-target-positions" if site.position == "decoder" else "--max-source-positions"
        raise AttentionConfigError(f"--mgk-pi-positions: its {o['mgk_pi_positions']}-entry table is shorter than the "
                                   f"{site.max_positions} positions {flag} admits; raise it or lower {flag}")
    return MGKAttention(site.embed_dim, site.num_heads, site.position, kdim=site.kdim, dropout=site.dropout,
                        components=o["mgk_components"], shifted=shifted, pi=o["mgk_pi"],
                        inv_var=o["mgk_inv_var_scales"], hard=o["mgk_estep"] == "hard", head_dim=o["mgk_head_dim"],
                        pi_positions=o["mgk_pi_positions"])


_ALL = ("encoder", "decoder", "cross")


@register_attention_kind("mgk", positions=_ALL, options=tuple(MGK_OPTIONS.values()), validate=_check_mgk,
                         summary="mixture of Gaussian keys, a key projection per component, RBF scores in log "
                                 "space (Nguyen et al., ICML 2022)")
def build_mgk(site: AttentionSite) -> MGKAttention:
    return _mgk(site, shifted=False)


@register_attention_kind("smgk", positions=_ALL, options=tuple(MGK_OPTIONS.values()), validate=_check_mgk,
                         summary="mixture of shifted Gaussian keys: one key projection plus a learned shift per "
                                 "component (Nguyen et al., ICML 2022)")
def build_smgk(site: AttentionSite) -> MGKAttention:
    return _mgk(site, shifted=True)


@register_attention_kind("mlk", positions=_ALL, constant_state=True, validate=_check_mlk,
                         options=(MGK_OPTIONS["components"], MGK_OPTIONS["pi"], MGK_OPTIONS["head_dim"]),
                         summary="linear mixture of keys: elu+1 features of the components mixed before a linear "
                                 "attention's (S, z) state (Nguyen et al., ICML 2022)")
def build_mlk(site: AttentionSite) -> MLKAttention:
    o = site.options
    return MLKAttention(site.embed_dim, site.num_heads, site.position, kdim=site.kdim, dropout=site.dropout,
                        components=o["mgk_components"], pi=o["mgk_pi"], head_dim=o["mgk_head_dim"])
