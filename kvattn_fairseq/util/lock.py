"""One run at a time per work directory.

A run holds an advisory lock (flock) on DIR/.kvattn.lock for as long as it lives and writes its process id and
command line into the file.  The kernel drops the lock when the process ends however it ends (SIGKILL included), so
a lock file left by a dead run is simply taken over; a second live run is refused in one line naming the first.
"""
import contextlib
import fcntl
import json
import os
import sys
import time
from typing import Callable, Iterator, Optional

from .errors import OneLineError

LOCK = ".kvattn.lock"


@contextlib.contextmanager
def work_lock(directory: str, flag: str = "--work", note: Optional[Callable[[str], None]] = None) -> Iterator[None]:
    """Hold the lock of `directory` (created if needed) for the duration of the block."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+", encoding="utf-8") as f:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read(f)
            raise OneLineError(f"{flag} {directory} is in use by another run (process {holder.get('pid', '?')}: "
                               f"{holder.get('command', '?')}); wait for it to end or choose another {flag}") from None
        previous = _read(f)
        if previous.get("pid") not in (None, os.getpid()) and note:
            note(f"took over the lock of {directory} left by process {previous['pid']}, which is no longer running")
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv), "since": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            f.flush()
            fcntl.flock(fd, fcntl.LOCK_UN)


def _read(f) -> dict:
    f.seek(0)
    try:
        data = json.loads(f.read() or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
