"""Command-line pieces every command of the orchestration half uses."""
import argparse
import sys
from typing import Callable, List, Sequence, Tuple

from .errors import OneLineError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`PROG: error: MESSAGE`, exit 2), like every other error here;
    `--help` still shows the usage.  With passthrough=True an unknown flag's message says where fairseq's flags
    go."""

    def __init__(self, *args, passthrough: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.passthrough = passthrough

    def error(self, message):
        if self.passthrough and "unrecognized arguments" in message:
            message += " (flags for fairseq go after --)"
        self.exit(2, f"{self.prog}: error: {message}\n")


def split_passthrough(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(the command's own arguments, the flags after the first `--`, passed through to a fairseq tool verbatim)."""
    argv = [str(a) for a in argv]
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def positive_int(text: str) -> int:
    """argparse type: an integer > 0 (the attention flags use it too)."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def run_main(prog: str, body: Callable[[], int], interrupted: str = "interrupted") -> int:
    """Run a command's body; a OneLineError is printed as `PROG: error: MESSAGE` and becomes its exit status, an
    interrupt prints `PROG: <interrupted>` and exits 130."""
    try:
        return body()
    except OneLineError as e:
        sys.stdout.flush()
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        sys.stdout.flush()
        print(f"{prog}: {interrupted}", file=sys.stderr, flush=True)
        return 130
