"""Running a command with its output kept in a log: the one subprocess runner of the orchestration half, and its
in-process twin for steps that are Python functions.

Output is read as bytes and split on "\\n" only: fairseq prints hypotheses that may hold "\\r", U+2028 and other
characters that text-mode pipes or str.splitlines() would treat as line ends.

A log is written under a name of its own process (LOG.<pid>.partial) and renamed to LOG only when the command
succeeds; a failed command's log is kept as failed_log(LOG), so a failed rerun never overwrites the log of an earlier
success, and two processes never write one file.  Inside staged_logs() even successful logs wait until
install_staged_logs() (called by the writer of the results they belong to, right before it writes them), so the
logs and the results beside them always come from the same run.  On Linux the tool is killed when the process that
started it dies, even by SIGKILL: no orphan keeps writing into a temporary directory.

The tools run() starts get one OpenMP thread each unless the user set OMP_NUM_THREADS (cpu_threads()): torch's
default, a thread per core, slowed fairseq-train's small CPU runs down several times over on a shared machine
(docs/benchmark.md, "CPU threads"), and on a GPU the CPU threads matter little (torchrun sets 1 too).
"""
import collections
import contextlib
import ctypes
import os
import re
import shlex
import subprocess
import sys
import threading
import traceback
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from .errors import OneLineError, StepFailed


def shell(cmd: Sequence) -> str:
    """The command as one would type it."""
    return " ".join(shlex.quote(str(c)) for c in cmd)


CPU_THREADS = "1"  # OpenMP threads per tool when the user did not say (measured: docs/benchmark.md, "CPU threads")


def cpu_threads() -> str:
    """The OMP_NUM_THREADS the tools run() starts get: the user's, else CPU_THREADS."""
    return os.environ.get("OMP_NUM_THREADS") or CPU_THREADS


def tool_env(extra: Optional[Dict[str, str]] = None, *, threads: bool = False) -> Dict[str, str]:
    """The environment the tools run in: UTF-8 output whatever the locale, and Python warnings off unless the user
    asked for them (fairseq and torch print deprecation noise that buries the lines that matter); with `threads`,
    OMP_NUM_THREADS is cpu_threads()."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    env.setdefault("PYTHONWARNINGS", "ignore")
    if threads:
        env["OMP_NUM_THREADS"] = cpu_threads()
    env.update(extra or {})
    return env


_STAGED: Optional[List[tuple]] = None  # (partial log, final name) pairs waiting in staged_logs()


def failed_log(log: str) -> str:
    """Where the log of a failed command goes: LOG.failed.EXT beside LOG."""
    stem, ext = os.path.splitext(log)
    return f"{stem}.failed{ext or '.log'}"


@contextlib.contextmanager
def staged_logs() -> Iterator[None]:
    """Hold back the logs of successful commands until install_staged_logs() (or the end of the block); if the block
    fails first, they are kept as failed logs and the previous ones stay."""
    global _STAGED
    outer, _STAGED = _STAGED, []
    try:
        yield
    except BaseException:
        for partial, final in _STAGED:
            os.replace(partial, failed_log(final))
        raise
    else:
        install_staged_logs()
    finally:
        _STAGED = outer


def install_staged_logs() -> None:
    while _STAGED:
        partial, final = _STAGED.pop(0)
        os.replace(partial, final)


def _die_with_parent() -> None:
    try:  # PR_SET_PDEATHSIG = 1: SIGKILL this child when its parent dies
        ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def last_error(lines: Sequence[str]) -> str:
    """The line that says what went wrong: the last exception or argparse error line, else the last line."""
    lines = [line.strip() for line in lines if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception)\b", line) or ": error:" in line:
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def run(cmd: Sequence, log: Optional[str] = None, *, label: Optional[str] = None, env: Optional[Dict] = None,
        echo: Optional[Callable[[str], None]] = None, timeout: Optional[float] = None, append: bool = False,
        keep_output: bool = True, cwd: Optional[str] = None) -> str:
    """Run `cmd` (stderr merged into stdout), writing a `$ command` line and the output to `log` (appended with
    `append`), passing each line to `echo` as it arrives, and return the output (the last 200 lines unless
    `keep_output`).  Without `env`, the tool runs in tool_env(threads=True).

    A command that cannot start, exits non-zero or outlives `timeout` seconds raises StepFailed naming `label`
    (default: the program's name), the line that says what went wrong and the log; its exit status is 2 when the
    tool refused its own command line (argparse's ": error:" with status 2), else 1."""
    cmd = [str(c) for c in cmd]
    label = label or os.path.basename(cmd[0])
    where = f"; full log: {log}" if log else ""
    out = None
    partial = None
    if log:
        os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
        partial = None if append else f"{log}.{os.getpid()}.partial"
        out = open(partial or log, "a" if append else "w", encoding="utf-8")
        out.write(("\n" if append and out.tell() else "") + f"$ {shell(cmd)}\n")
        out.flush()
    lines: collections.deque = collections.deque(maxlen=None if keep_output else 200)
    timed_out = threading.Event()
    try:
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=tool_env(threads=True) if env is None else env, cwd=cwd,
                                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        except OSError as e:
            raise StepFailed(f"{label}: cannot run {cmd[0]} ({e.strerror or e})") from None
        timer = None
        if timeout:
            def kill():
                timed_out.set()
                proc.kill()

            timer = threading.Timer(timeout, kill)
            timer.start()
        try:
            with proc:
                try:
                    for raw in proc.stdout:
                        line = raw.decode("utf-8", errors="replace")
                        lines.append(line)
                        if out:
                            out.write(line)
                        if echo:
                            echo(line)
                except BaseException:  # an interrupt (or a failing echo) ends the tool too, not just this process
                    proc.kill()
                    raise
        finally:
            if timer:
                timer.cancel()
    except BaseException:
        if partial:
            out.close()
            os.replace(partial, failed_log(log))
        raise
    finally:
        if out:
            out.close()
    output = "".join(lines)
    failed = timed_out.is_set() or proc.returncode != 0
    if partial and failed:
        log = failed_log(log)
        where = f"; full log: {log}"
        os.replace(partial, log)
    elif partial and _STAGED is not None:
        _STAGED.append((partial, log))
    elif partial:
        os.replace(partial, log)
    if timed_out.is_set():
        raise StepFailed(f"{label} timed out after {timeout:g}s{where}")
    if proc.returncode != 0:
        refused = proc.returncode == 2 and ": error:" in output
        raise StepFailed(f"{label} failed (exit {proc.returncode}): {last_error(output.split(chr(10)))}{where}",
                         2 if refused else 1)
    return output


@contextlib.contextmanager
def logged(log: str, label: str, append: bool = True) -> Iterator[None]:
    """Run an in-process step with its printed output (stdout and stderr) going to `log` instead of the terminal.

    A OneLineError from the step becomes StepFailed naming the label and the log; any other exception is a bug:
    its traceback goes to the log and the step fails the same way (one line on the terminal)."""
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    with open(log, "a" if append else "w", encoding="utf-8") as f:
        f.write(f"\n# {label}\n")
        f.flush()
        try:
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield
        except OneLineError as e:
            f.write(f"error: {e}\n")
            raise StepFailed(f"{label} failed: {e}; full log: {log}") from None
        except Exception as e:  # noqa: BLE001  (a bug: keep the traceback, in the log)
            f.write(traceback.format_exc())
            raise StepFailed(f"{label} failed ({type(e).__name__}: {e}); traceback in {log}") from None


def python_module(module: str) -> List[str]:
    """`python -m module` with this interpreter."""
    return [sys.executable, "-m", module]


def fairseq_tool(name: str) -> List[str]:
    """The command of a fairseq tool ("fairseq-train", "fairseq-eval-lm", ...) for this interpreter: the console
    script installed beside it, else `python -m fairseq_cli.<tool>` (never another environment's from PATH)."""
    script = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(script):
        return [script]
    return python_module("fairseq_cli." + name[len("fairseq-"):].replace("-", "_"))
