"""Log lines, progress and text cleaning shared by the prepare modules (their errors: util.errors.OneLineError)."""
import re
import sys
import time
import unicodedata

PROG = "prepare"


def log(msg: str, *args) -> None:
    # Progress goes to stdout (as fairseq's own logs do), so stderr carries only the error line on failure.
    text = msg % args if args else msg
    print(f"{time.strftime('%H:%M:%S')} | {PROG} | {text}", flush=True)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


class Progress:
    """A counter that logs a line every `every_s` seconds (a tqdm bar when stderr is a terminal)."""

    def __init__(self, what: str, total: float = None, unit: str = "", every_s: float = 30.0, as_bytes=False):
        self.what, self.total, self.unit, self.every_s, self.as_bytes = what, total, unit, every_s, as_bytes
        self.n, self.t0, self.last = 0, time.time(), time.time()
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=what, unit="B" if as_bytes else (unit or "it"),
                                unit_scale=as_bytes, leave=False)
            except ImportError:
                pass

    def update(self, k: float = 1) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
            return
        now = time.time()
        if now - self.last >= self.every_s:
            self.last = now
            log("%s: %s", self.what, self._state())

    def _state(self) -> str:
        fmt = human if self.as_bytes else (lambda v: f"{v:,.0f}")
        done = fmt(self.n) + (f" of {fmt(self.total)}" if self.total else "")
        return f"{done} {self.unit}".rstrip() + f" ({time.time() - self.t0:.0f} s)"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _char_class(categories) -> "re.Pattern":
    chars = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) in categories and not chr(c).isspace()]
    return re.compile("[" + "".join(re.escape(c) for c in chars) + "]")


_PATTERNS = []


def clean(line: str) -> str:
    """The model-input form of a raw line: control characters made spaces, format characters (soft hyphens,
    zero-width marks) dropped, sentencepiece's own meta symbol U+2581 made a space, whitespace runs one space."""
    if not _PATTERNS:  # built once per process (about half a second), then matched in C
        _PATTERNS.extend([_char_class(("Cc",)), _char_class(("Cf",))])
    control, fmt = _PATTERNS
    line = fmt.sub("", control.sub(" ", line.replace("\u2581", " ")))
    return " ".join(line.split())
