"""Errors that surface deep inside fairseq's tools, printed as one line naming the fix (as argparse does) instead
of a stack trace or a usage block of a few hundred lines.  Wrapper factories for patches.PATCHES.

Nothing here changes the process on import: the parser fairseq is given is made usage-free only for the call that
parses it, and the error hook goes on only where fairseq's console tool is the program (fairseq_tool()), i.e. where
fairseq's CLI loaded the plugin as its --user-dir.  A notebook or script that imports the plugin keeps Python's
tracebacks; KVATTN_TRACEBACK=1 prints the traceback in a fairseq tool too, in front of the one line.
"""
import os
import re
import sys
from typing import Optional

from ..util.errors import OneLineError

TRACEBACK_ENV = "KVATTN_TRACEBACK"


def plugin_flags() -> set:
    from ..modules.registry import POSITION_FLAGS, all_options

    return {o.flag for o in all_options()} | set(POSITION_FLAGS.values())


def one_line_error(parser, error):
    """parser.error for one parser: argparse prints the whole usage before an error; fairseq's is a few hundred
    lines, which buries the one line that names the plugin flag to fix (other flags keep the usage)."""
    def one_line(message):
        named = re.match(r"argument ([-\w]+)(/[-\w]+)*:", message)
        if named and named.group(1) in plugin_flags():  # read now: the kinds register after the patches
            parser.exit(2, f"{parser.prog}: error: {message}\n")
        return error(message)

    return one_line


def usage_free(parse_args_and_arch):
    """fairseq.options.parse_args_and_arch (every fairseq tool parses its flags with it, after its parser imported
    the --user-dir): the parser it is given reports a bad plugin flag in one line while this call parses; then the
    parser is as it was."""
    def parse(parser, *args, **kwargs):
        if "error" in vars(parser):  # a nested call, or a parser with its own error: leave it
            return parse_args_and_arch(parser, *args, **kwargs)
        parser.error = one_line_error(parser, parser.error)
        try:
            return parse_args_and_arch(parser, *args, **kwargs)
        finally:
            del parser.error

    return parse


def fairseq_tool() -> Optional[str]:
    """The fairseq_cli module whose tool is this process's program (`fairseq-train`: a console script that imported
    its cli_main; `python -m fairseq_cli.train`; a checkout's fairseq_cli/train.py), else None."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    names = [getattr(spec, "name", None) or "", getattr(getattr(main, "cli_main", None), "__module__", None) or ""]
    path = getattr(main, "__file__", None) or ""
    if os.path.basename(os.path.dirname(path)) == "fairseq_cli":
        names.append("fairseq_cli." + os.path.splitext(os.path.basename(path))[0])
    return next((name for name in names if name.startswith("fairseq_cli.")), None)


def install_hook() -> None:
    """sys.excepthook of a fairseq tool's process (nothing anywhere else); a second call changes nothing."""
    if fairseq_tool() is not None and not hook_installed():
        sys.excepthook = excepthook(sys.excepthook)


def hook_installed() -> bool:
    return getattr(sys.excepthook, "__kvattn_hook__", False)


def hook_as_due() -> bool:
    """Installed where it belongs: in a fairseq tool's process, and nowhere else."""
    return hook_installed() == (fairseq_tool() is not None)


def excepthook(previous):
    """sys.excepthook of a fairseq tool: a bad attention setting (argument parsing, model build), an input longer
    than the model admits (batching), an unsafe checkpoint (its loader), bad data for the plugin's task, the
    allocator refusing a tensor far too large.  Other exceptions go to the previous hook (their traceback)."""
    def hook(exc_type, exc, tb):
        line, status = describe(exc_type, exc)
        if line is None:
            return previous(exc_type, exc, tb)
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            previous(exc_type, exc, tb)
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "kvattn_fairseq"
        print(f"{prog}: error: {line}", file=sys.stderr)
        sys.exit(status)

    hook.__kvattn_hook__ = True
    return hook


def describe(exc_type, exc):
    """(the one line, the exit status) for an error a fairseq tool reports in one line, else (None, None)."""
    if issubclass(exc_type, OneLineError):
        return str(exc), exc.exit_code
    if _is_size_error(exc_type, exc):
        return str(exc), 2
    if issubclass(exc_type, RuntimeError) and str(exc).startswith("Error(s) in loading state_dict for"):
        # weights loaded into a model they were not trained for (e.g. 'load_other_plan' with other shapes): torch
        # lists every mismatched tensor, dozens of lines; the first names the problem
        details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        return (f"the checkpoint's weights do not fit the model being built: {details[0] if details else exc}{more}",
                2)
    if _is_memory_error(exc_type, exc):
        return (f"out of memory ({_allocation(exc)}): the model or the batch is too large for this machine; use "
                f"smaller sizes (e.g. the attention kinds' --*-slots / --mgk-components, --*-embed-dim) or fewer "
                f"tokens per batch (--max-tokens, --batch-size)", 1)
    return None, None


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
