"""The registry of attention kinds: which kinds exist, where each may sit, its own flags, and how to build it.

A kind registers a builder with `register_attention_kind`; the models never name kinds themselves, so a new kind
shows up in every position flag, architecture check, error message and benchmark by registering here.  Which kind
each layer gets is a plan (plan.py), checked once against this registry.

Positions:
  encoder  encoder self-attention (non-causal)
  decoder  decoder self-attention (causal; also the language model's only position)
  cross    decoder attention over the encoder output
"""
import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from torch import nn

from ..util.cli import positive_int
from ..util.errors import OneLineError

POSITIONS = ("encoder", "decoder", "cross")
POSITION_FLAGS = {
    "encoder": "--encoder-attention-type",
    "decoder": "--decoder-attention-type",
    "cross": "--cross-attention-type",
}
POSITION_NAMES = {
    "encoder": "encoder self-attention",
    "decoder": "decoder self-attention",
    "cross": "cross-attention",
}
DEFAULT_KIND = "softmax"
PLAN_SYNTAX = "KIND or KIND*N per layer, comma-separated, first layer first, e.g. memsizer*5,softmax"


class AttentionConfigError(OneLineError, ValueError):
    """A bad attention setting; the message is one line and names the flag to fix.  Still a ValueError: argparse
    reports one raised by a flag's type as that flag's error."""


def position_dest(position: str) -> str:
    return POSITION_FLAGS[position][2:].replace("-", "_")


@dataclass(frozen=True)
class KindOption:
    """A flag of one kind, e.g. --memsizer-self-slots.  Its default is applied by the architecture functions, never
    by argparse, so that an architecture's own value is not silently overridden (fairseq model args SUPPRESS)."""

    flag: str
    default: Any
    type: Callable[[str], Any]
    help: str

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


@dataclass(frozen=True)
class AttentionSite:
    """Everything a builder needs to know about the place a module goes."""

    position: str
    embed_dim: int
    num_heads: int
    kdim: int
    dropout: float
    options: Dict[str, Any] = field(default_factory=dict)
    # the longest key sequence the model admits here: --max-source-positions (encoder, cross) or
    # --max-target-positions (decoder); None when unknown
    max_positions: Optional[int] = None

    @property
    def causal(self) -> bool:
        return self.position == "decoder"


@dataclass(frozen=True)
class AttentionKind:
    name: str
    build: Callable[[AttentionSite], nn.Module]
    positions: Tuple[str, ...]
    summary: str
    options: Tuple[KindOption, ...] = ()
    # Why the kind cannot sit at a position it does not support; shown in the error.
    unsupported: Dict[str, str] = field(default_factory=dict)
    # True when the decoding state does not grow with the number of generated tokens.
    constant_state: bool = False
    # Checks across the kind's options, raising AttentionConfigError("--flag: ..."): fn(options, position).
    validate: Optional[Callable[[Dict[str, Any], str], None]] = None


ATTENTION_KINDS: Dict[str, AttentionKind] = {}


def register_attention_kind(name: str, positions: Iterable[str], summary: str, options: Iterable[KindOption] = (),
                            unsupported: Optional[Dict[str, str]] = None, constant_state: bool = False,
                            validate: Optional[Callable[[Dict[str, Any], str], None]] = None):
    """Decorator for a builder `fn(site: AttentionSite) -> nn.Module` (a fairseq MultiheadAttention drop-in)."""
    positions = tuple(positions)
    bad = [p for p in positions if p not in POSITIONS]
    if bad:
        raise ValueError(f"unknown attention position(s) {bad}; expected some of {POSITIONS}")
    if name in ATTENTION_KINDS:
        raise ValueError(f"attention kind {name!r} is already registered")
    options = tuple(options)
    taken = {o.flag: o for k in ATTENTION_KINDS.values() for o in k.options}
    clash = [o.flag for o in options if o.flag in taken and taken[o.flag] != o]  # kinds may share an option
    if clash:
        raise ValueError(f"attention kind {name!r}: flags {clash} are already used by another kind")

    def wrap(fn):
        ATTENTION_KINDS[name] = AttentionKind(name, fn, positions, summary, options, dict(unsupported or {}),
                                              constant_state, validate)
        return fn

    return wrap


def kinds_at(position: str) -> List[str]:
    return sorted(k.name for k in ATTENTION_KINDS.values() if position in k.positions)


def check_kind(position: str, value: Any) -> str:
    """Return the kind name if it may sit at `position`, else raise AttentionConfigError naming the flag."""
    flag = POSITION_FLAGS[position]
    choices = ", ".join(kinds_at(position))
    if value not in ATTENTION_KINDS:
        raise AttentionConfigError(f"{flag}: unknown attention type {value!r}; choose one of: {choices}")
    kind = ATTENTION_KINDS[value]
    if position not in kind.positions:
        why = kind.unsupported.get(position, "it is not implemented there")
        raise AttentionConfigError(f"{flag}: {value!r} cannot be used for {POSITION_NAMES[position]}: {why}; "
                                   f"choose one of: {choices}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {value}")
    return value


def bounded_int(limit: int, why: str):
    """argparse type: an integer from 1 to `limit`; `why` says what the limit protects (sizes that reach the
    allocator are refused while parsing, not by the kernel's out-of-memory killer)."""
    def parse(text: str) -> int:
        value = positive_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"expected at most {limit} ({why}), got {value}")
        return value

    parse.__name__ = "bounded_int"
    return parse


def choice(*allowed: str):
    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(allowed)}, got {text!r}")
        return text

    parse.__name__ = "choice"
    return parse


def positive_float_list(text: str):
    """'1,3' -> (1.0, 3.0)"""
    items = str(text).strip("()[] ").split(",")
    if len(items) > 1 and not items[-1].strip():
        items.pop()  # the trailing comma of a one-element tuple's repr, as a checkpoint's config may hold it
    try:
        if any(not v.strip() for v in items):
            raise ValueError("an empty entry")  # '1,,2': a missing number is a typo, not a default
        values = tuple(float(v) for v in items)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers, got {text!r}") from None
    if not values or any(not v > 0 or v == float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers, got {text!r}")
    return values


def all_options() -> List[KindOption]:
    unique = {}
    for kind in ATTENTION_KINDS.values():
        for opt in kind.options:
            unique.setdefault(opt.flag, opt)
    return list(unique.values())


def add_attention_args(parser, positions: Iterable[str]) -> None:
    """The position flags and every kind's own flags, all without argparse defaults (see KindOption)."""
    for position in positions:
        # a plain string: the plan is parsed and checked once, by the architecture, when the layer count is known
        parser.add_argument(POSITION_FLAGS[position], metavar="PLAN",
                            help=f"attention for {POSITION_NAMES[position]}: one of {', '.join(kinds_at(position))} "
                                 f"for every layer, or a plan with one kind per layer ({PLAN_SYNTAX}) "
                                 f"(default: the architecture's, else {DEFAULT_KIND})")
    for opt in all_options():
        default = "derived" if opt.default is None else opt.default
        parser.add_argument(opt.flag, type=opt.type, metavar="V", help=f"{opt.help} (default: {default})")


def apply_attention_defaults(args, positions: Iterable[str], **arch_defaults) -> None:
    """Fill what the command line left unset: the architecture's values first, then each kind's defaults."""
    for key, value in arch_defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for position in positions:
        if getattr(args, position_dest(position), None) is None:
            setattr(args, position_dest(position), DEFAULT_KIND)
    for opt in all_options():
        if getattr(args, opt.dest, None) is None:
            setattr(args, opt.dest, opt.default)


def resolve_options(args, kind: AttentionKind) -> Dict[str, Any]:
    """The kind's option values from args (defaults where absent), each re-checked: hydra and the Python API
    bypass argparse."""
    values = {}
    for opt in kind.options:
        raw = getattr(args, opt.dest, None)
        if raw is None:
            raw = opt.default
        if raw is None:  # an option whose default is "derived from other settings"
            values[opt.dest] = None
            continue
        try:
            values[opt.dest] = opt.type(str(raw)) if not isinstance(raw, bool) else raw
        except argparse.ArgumentTypeError as e:
            raise AttentionConfigError(f"{opt.flag}: {e}") from None
    return values


def build_attention(name: str, site: AttentionSite) -> nn.Module:
    """Build a registered kind (already checked for the site's position: see plan.attention_plan)."""
    return ATTENTION_KINDS[name].build(site)
