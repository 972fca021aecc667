"""Per-layer attention plans: which kind each layer uses at each position, parsed and checked once.

A position flag (--encoder-attention-type, --decoder-attention-type, --cross-attention-type) takes
  KIND                    the kind for every layer, e.g. `memsizer`
  ITEM,ITEM,...           one kind per layer, first layer first; ITEM is KIND or KIND*N (N consecutive layers),
                          e.g. `memsizer*5,softmax` for six layers.  The layers must add up to the position's layer
                          count: --encoder-layers for the encoder, --decoder-layers for decoder self- and
                          cross-attention.
The value stays the string given on the command line (checkpoints and hydra configs store it as is); the plan
object is derived from it by `attention_plan`, the only place a kind string is checked, and the model builders take
that object.
"""
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from torch import nn

from .registry import (ATTENTION_KINDS, DEFAULT_KIND, POSITION_FLAGS, AttentionConfigError, AttentionSite, check_kind,
                       position_dest, resolve_options)

LAYER_FLAGS = {"encoder": "--encoder-layers", "decoder": "--decoder-layers", "cross": "--decoder-layers"}


def compact(kinds: Iterable[str]) -> str:
    """('memsizer',) * 5 + ('softmax',) -> 'memsizer*5,softmax' (the plan syntax, run-length encoded)."""
    runs: List[List[Any]] = []
    for kind in kinds:
        if runs and runs[-1][0] == kind:
            runs[-1][1] += 1
        else:
            runs.append([kind, 1])
    return ",".join(kind if n == 1 else f"{kind}*{n}" for kind, n in runs)


def parse_plan(position: str, text: str, layers: int) -> Tuple[Tuple[str, ...], bool]:
    """The kinds of the `layers` layers at `position`, and whether the value named one kind for all of them."""
    flag = POSITION_FLAGS[position]
    value = str(text).strip()
    items = [item.strip() for item in value.split(",")]
    if len(items) == 1 and "*" not in items[0]:
        return (check_kind(position, items[0]),) * layers, True
    runs: List[Tuple[str, int]] = []
    for item in items:
        name, star, count = item.partition("*")
        name = name.strip()
        n = 1
        if star:
            try:
                n = int(count)
            except ValueError:
                n = 0
        if not name or n < 1:
            raise AttentionConfigError(f"{flag}: cannot read {item!r} in the plan {value!r}; write KIND or KIND*N "
                                       f"(N >= 1) per comma-separated entry, e.g. memsizer*5,softmax")
        runs.append((check_kind(position, name), n))
    total = sum(n for _, n in runs)  # counted before anything is expanded: memsizer*99999999999 is one line
    if total != layers:
        raise AttentionConfigError(f"{flag}: the plan {value!r} gives {total} layers but the model has {layers} "
                                   f"({LAYER_FLAGS[position]}); give one kind for every layer, or {layers} in all")
    return tuple(kind for kind, n in runs for _ in range(n)), False


@dataclass(frozen=True)
class PositionPlan:
    position: str
    kinds: Tuple[str, ...]                 # one per layer
    options: Mapping[str, Dict[str, Any]]  # each kind's resolved options
    every_layer: bool                      # the value was a single kind

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def text(self) -> str:
        return self.kinds[0] if self.every_layer and self.kinds else compact(self.kinds)


@dataclass(frozen=True)
class AttentionPlan:
    positions: Mapping[str, PositionPlan]

    def __getitem__(self, position: str) -> PositionPlan:
        return self.positions[position]

    def kinds(self) -> set:
        return {k for p in self.positions.values() for k in p.kinds}

    def site(self, position: str, layer: int, *, embed_dim: int, num_heads: int, kdim: int, dropout: float,
             max_positions: Optional[int] = None) -> Tuple[str, AttentionSite]:
        p = self.positions[position]
        kind = p.kinds[layer]
        return kind, AttentionSite(position=position, embed_dim=embed_dim, num_heads=num_heads, kdim=kdim,
                                   dropout=dropout, options=dict(p.options[kind]), max_positions=max_positions)

    def build(self, position: str, layer: int, **site) -> nn.Module:
        kind, where = self.site(position, layer, **site)
        try:
            return ATTENTION_KINDS[kind].build(where)
        except (MemoryError, RuntimeError) as e:
            if not isinstance(e, MemoryError) and "allocate" not in str(e):
                raise
            # a size flag far too large (--memsizer-self-slots 1000000000): one line naming it, not a traceback
            sizes = ", ".join(f"{o.flag} {where.options[o.dest]}" for o in ATTENTION_KINDS[kind].options
                              if isinstance(where.options.get(o.dest), int) and not isinstance(
                                  where.options.get(o.dest), bool))
            raise AttentionConfigError(f"{POSITION_FLAGS[position]}: the {kind} attention of layer {layer} does not "
                                       f"fit in memory ({sizes or 'its sizes'}, width {where.embed_dim}); use "
                                       f"smaller sizes") from None


def attention_plan(args, layers: Mapping[str, int]) -> AttentionPlan:
    """Check every position's value in `args` against its layer count (`layers`: {position: number of layers}),
    with each kind's options; one line naming the flag to fix otherwise."""
    positions = {}
    for position, n in layers.items():
        text = getattr(args, position_dest(position), None) or DEFAULT_KIND
        kinds, every = parse_plan(position, text, n)
        options = {}
        for name in dict.fromkeys(kinds):
            kind = ATTENTION_KINDS[name]
            options[name] = resolve_options(args, kind)
            if kind.validate is not None:
                kind.validate(options[name], position)
        positions[position] = PositionPlan(position, kinds, options, every)
    return AttentionPlan(positions)
