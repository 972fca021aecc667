"""Writing files and directories so that a reader, a crash or an interrupt never sees half of one, and replacing
only what the tool itself made.

Every output directory the tool installs carries a marker file, MARKER, listing the names (shell patterns) of the
entries the tool made there.  `--force` and every other overwrite go through check_replaceable first: a directory
without the marker, or holding anything the marker does not name (a file the user put there), is refused with one
line naming those files, and so is an output that holds or lies inside one of the command's inputs (`--raw`).
"""
import fnmatch
import json
import os
import shutil
import tempfile
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

from .errors import OneLineError

MARKER = ".kvattn-made.json"


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


def mark(directory: str, entries: Optional[Iterable[str]] = None) -> None:
    """Record in `directory` that the tool made it: `entries` (shell patterns; default: what is there now) are the
    tool's, and only those may be replaced or removed later."""
    names = sorted(set(os.listdir(directory) if entries is None else entries) - {MARKER})
    write_atomic(os.path.join(directory, MARKER),
                 json.dumps({"made_by": "kvattn_fairseq", "entries": names}, indent=2) + "\n")


def foreign_entries(directory: str) -> List[str]:
    """The entries of `directory` the tool did not make: every one when it carries no (readable) marker."""
    try:
        with open(os.path.join(directory, MARKER), encoding="utf-8") as f:
            patterns = [str(p) for p in json.load(f)["entries"]]
    except (OSError, ValueError, KeyError, TypeError):
        patterns = []
    return sorted(e for e in os.listdir(directory)
                  if e != MARKER and not any(fnmatch.fnmatchcase(e, p) for p in patterns))


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def check_replaceable(out: str, flag: str = "--force", inputs: Sequence[Tuple[str, Optional[str]]] = (),
                      what: str = "--out", replacing: bool = True) -> None:
    """Refuse, in one line, to replace or remove `out` when that could lose anything the tool did not make: `out`
    holds or lies inside an input (`inputs`: (its flag, its path)), is a file, or holds entries its marker does
    not name (checked only when `replacing`).  Call it before any work starts; install_dir calls it again."""
    real = os.path.realpath(out)
    for name, path in inputs:
        if path and (_within(os.path.realpath(path), real) or _within(real, os.path.realpath(path))):
            raise OneLineError(f"{what} {out} and {name} {path} overlap: the output would replace the input; "
                               f"choose a {what} outside {name}")
    if not replacing or not os.path.lexists(out):
        return
    if not os.path.isdir(out) or os.path.islink(out):
        raise OneLineError(f"{what} {out} is not a directory this tool made; remove it yourself or choose another "
                           f"{what}")
    foreign = foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OneLineError(f"{flag}: {out} holds files this tool did not make ({shown}); move them away or choose "
                           f"another {what} (nothing was removed)")


def remove_made(directory: str, flag: str = "--force", what: str = "--work") -> None:
    """Remove a directory the tool made, after check_replaceable."""
    check_replaceable(directory, flag, what=what)
    if os.path.lexists(directory):
        shutil.rmtree(directory)


def install_dir(built: str, out: str, flag: str = "--force") -> None:
    """Move the finished directory `built` to `out` (a sibling), marked as the tool's.  An existing `out` must be
    replaceable (check_replaceable); it is renamed aside first and removed only once the new one is in place, so
    `out` is always either the old complete output or the new one."""
    if os.path.lexists(out):
        check_replaceable(out, flag)
    if not os.path.exists(os.path.join(built, MARKER)):  # a builder may mark it earlier, to write its last file last
        mark(built)
    if os.path.lexists(out):
        parent = os.path.dirname(os.path.abspath(out))
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
        os.rename(out, os.path.join(old, "x"))
        os.rename(built, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(built, out)
