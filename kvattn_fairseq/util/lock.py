"""One run at a time per work directory.

A run holds an advisory lock (flock) on DIR/.kvattn.lock for as long as it lives and writes its process id and
command line into the file.  The kernel drops the lock when the process ends however it ends (SIGKILL included), so
a lock file left by a dead run is simply taken over; a second live run is refused in one line naming the first.

The lock file is opened without following a link and must be a regular file with no other name (no hard link):
the run truncates and writes it, so a link, a pipe or a second name of someone else's file in its place is refused
in one line and left as it is.
"""
import contextlib
import errno
import fcntl
import json
import os
import stat
import sys
import time
from typing import Callable, Iterator, Optional

from .errors import OneLineError
from .io import make_output_dir

LOCK = ".kvattn.lock"


def _open(path: str) -> int:
    """The lock file's descriptor: created if absent, never through a link, only a regular file of one name."""
    what = None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            what = "a symbolic link"
        elif os.path.isdir(path):
            what = "a directory"
        else:
            raise OneLineError(f"cannot write the run's lock file {path} ({e.strerror}); choose another directory "
                               f"or make it writable") from None
    else:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a pipe" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
        elif st.st_nlink != 1:
            what = f"a file with {st.st_nlink - 1} other name(s) (a hard link)"
        if what:
            os.close(fd)
        else:
            os.set_blocking(fd, True)
            return fd
    raise OneLineError(f"{path} is {what}, not the lock file this tool makes: the run writes that file, so it is "
                       f"left as it is; remove it and rerun")


@contextlib.contextmanager
def work_lock(directory: str, flag: str = "--work", note: Optional[Callable[[str], None]] = None) -> Iterator[None]:
    """Hold the lock of `directory` (created if needed) for the duration of the block."""
    make_output_dir(directory, flag)
    path = os.path.join(directory, LOCK)
    fd = _open(path)
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
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
