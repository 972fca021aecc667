"""Errors that surface deep inside fairseq's tools, printed as one line naming the fix (as argparse does) instead
of a stack trace or a usage block of a few hundred lines.  Wrapper factories for patches.PATCHES."""
import os
import re
import sys

from ..util.errors import OneLineError


def plugin_flags() -> set:
    from ..modules.registry import POSITION_FLAGS, all_options

    return {o.flag for o in all_options()} | set(POSITION_FLAGS.values())


def usage_free(error):
    """argparse.ArgumentParser.error: argparse prints the whole usage before an error; fairseq's is a few hundred
    lines, which buries the one line that names the plugin flag to fix (other flags keep the usage)."""
    def one_line(self, message):
        named = re.match(r"argument ([-\w]+)(/[-\w]+)*:", message)
        if named and named.group(1) in plugin_flags():  # read now: the kinds register after the patches
            self.exit(2, f"{self.prog}: error: {message}\n")
        return error(self, message)

    return one_line


def excepthook(previous):
    """sys.excepthook: a bad attention setting (argument parsing, model build), an input longer than the model
    admits (batching), an unsafe checkpoint (its loader), bad data for the plugin's task, the allocator refusing a
    tensor far too large.  Other exceptions are untouched."""
    def hook(exc_type, exc, tb):
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "kvattn_fairseq"
        if issubclass(exc_type, OneLineError) or _is_size_error(exc_type, exc):
            print(f"{prog}: error: {exc}", file=sys.stderr)
            sys.exit(2)
        if issubclass(exc_type, RuntimeError) and str(exc).startswith("Error(s) in loading state_dict for"):
            # weights loaded into a model they were not trained for (e.g. 'load_other_plan' with other shapes):
            # torch lists every mismatched tensor, dozens of lines; the first names the problem
            details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
            more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
            print(f"{prog}: error: the checkpoint's weights do not fit the model being built: "
                  f"{details[0] if details else exc}{more}", file=sys.stderr)
            sys.exit(2)
        if _is_memory_error(exc_type, exc):
            print(f"{prog}: error: out of memory ({_allocation(exc)}): the model or the batch is too large for this "
                  f"machine; use smaller sizes (e.g. the attention kinds' --*-slots / --mgk-components, "
                  f"--*-embed-dim) or fewer tokens per batch (--max-tokens, --batch-size)", file=sys.stderr)
            sys.exit(1)
        previous(exc_type, exc, tb)

    return hook


def _is_memory_error(exc_type, exc) -> bool:
    """The allocator refusing a tensor (CPU: a RuntimeError from DefaultCPUAllocator; CUDA: OutOfMemoryError)."""
    return issubclass(exc_type, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        issubclass(exc_type, RuntimeError) and "can't allocate memory" in str(exc))


def _allocation(exc) -> str:
    found = re.search(r"tried to allocate ([\d.]+ ?\w*)", str(exc))
    return f"tried to allocate {found.group(1)}" if found else type(exc).__name__


def _is_size_error(exc_type, exc) -> bool:
    """fairseq's refusal of an input longer than the model admits; its message already names the fix
    (--skip-invalid-size-inputs-valid-test, which turns it into a counted, logged skip)."""
    return exc_type is Exception and str(exc).startswith("Size of sample #") and "skip this example" in str(exc)
