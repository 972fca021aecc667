"""Writing files and directories so that a reader, a crash or an interrupt never sees half of one."""
import os
import shutil
import tempfile
from typing import Callable, Union


def write_atomic(path: str, data: Union[str, bytes, Callable[[str], None]]) -> str:
    """Write `path` through a temporary file in the same directory, then rename it into place (atomic on POSIX).

    `data` is text (written as UTF-8), bytes, or a function that writes the file whose path it is given (for
    writers such as torch.save).  The file is fsynced before the rename and the directory after it, so a power
    loss too leaves the old or the new file.  The directory is created if needed; on any failure the temporary file
    is removed and an existing `path` is left as it was.  Returns `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private; the result is an ordinary file
        if callable(data):
            os.close(fd)
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable (POSIX); a file system that cannot fsync a directory is left as is."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_dir_beside(out: str) -> str:
    """A new empty directory next to `out` (same file system, so install_dir can rename it into place), with the
    permissions an ordinary directory gets."""
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def install_dir(built: str, out: str) -> None:
    """Move the finished directory `built` to `out` (a sibling).  An existing `out` is renamed aside first and
    removed only once the new one is in place, so `out` is always either the old complete output or the new one."""
    if os.path.lexists(out):
        parent = os.path.dirname(os.path.abspath(out))
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
        os.rename(out, os.path.join(old, "x"))
        os.rename(built, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(built, out)
