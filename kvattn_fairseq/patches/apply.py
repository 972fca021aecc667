"""The one way the plugin changes a function of fairseq (or of what fairseq runs on): a wrapper, applied once.

A Patch names what it changes ("fairseq.checkpoint_utils.load_checkpoint_to_cpu") and why, in one line, and the
layers that wrap the original, innermost first.  wrap() puts them on as one function (functools.wraps of the
original, the original kept as __wrapped__) that carries a single marker, and does nothing when the marker is
already there: applying a patch twice changes nothing, and no function is wrapped from two places.  A change that
is not a wrapper (a registration with torch, a module fairseq expects) gives its own install and check.
"""
import functools
import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

MARK = "__kvattn_patch__"  # on every replacement: the `why` of its patch


def compose(layers: Tuple[Callable[[Any], Any], ...]) -> Callable[[Any], Any]:
    """One wrapper factory from several, the first innermost: compose((a, b))(f) is b(a(f))."""
    def make(original):
        for layer in layers:
            original = layer(original)
        return original

    return make


def wrap(owner: Any, name: str, make: Callable[[Any], Any], *, why: str) -> Any:
    """Replace `owner.name` by `make(original)`, unless it was already (the marker says so); returns the current
    replacement.  A class is replaced by a subclass (`make` returns it); a staticmethod stays one."""
    current = getattr(owner, name)
    if getattr(current, MARK, None) is not None:
        return current
    static = isinstance(inspect.getattr_static(owner, name), staticmethod)
    new = make(current)
    if isinstance(current, type):
        new.__wrapped__ = current  # functools.wraps would overwrite the subclass's own namespace
    else:
        functools.update_wrapper(new, current)
    setattr(new, MARK, why)
    setattr(owner, name, staticmethod(new) if static else new)
    return new


def is_patched(obj: Any) -> bool:
    return getattr(obj, MARK, None) is not None


def resolve(target: str) -> Tuple[Any, str]:
    """(owner, attribute) of a dotted name: the longest importable module prefix, then attributes."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:-1]:
            owner = getattr(owner, attr)
        return owner, parts[-1]
    raise ModuleNotFoundError(f"no module in {target!r}")


@dataclass(frozen=True)
class Patch:
    target: str  # what is changed, as a dotted name
    why: str  # one line: what goes wrong without it (the list in docs/reliability.md is made of these)
    layers: Tuple[Callable[[Any], Any], ...] = ()  # wrapper factories, innermost first
    install: Optional[Callable[[], None]] = None  # for a change that is not a wrapper
    installed: Optional[Callable[[], bool]] = None

    def apply(self) -> None:
        if self.layers:
            owner, name = resolve(self.target)
            wrap(owner, name, compose(self.layers), why=self.why)
        else:
            self.install()

    def applied(self) -> bool:
        if self.layers:
            owner, name = resolve(self.target)
            return is_patched(getattr(owner, name))
        return self.installed()
