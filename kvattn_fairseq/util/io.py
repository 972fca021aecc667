"""Writing files and directories so that a reader, a crash or an interrupt never sees half of one, and replacing
only what the tool itself made.

Every output directory the tool installs carries a marker file, MARKER, listing the names of the entries the tool
made there (exact names, never patterns: a file the user put beside them is never taken for the tool's).  `--force`
and every other overwrite go through check_replaceable first: a directory without the marker, or holding anything
the marker does not name, is refused with one line naming those files, and so is an output that holds or lies
inside one of the command's inputs (`--raw`).  An output file must be absent or a regular file (never a device, a
directory or a link to one) and never the same file as an input, links resolved (check_output_file).

Temporary files and directories carry the writing process's id in their names, so a later write to the same output
removes what a killed writer left (only a dead process's, only under those names).  write_atomic (and save_figure,
for plots) replaces a link in its output's place and never writes through it.  content() is what a step records of
an input it reads: sizes and sha256, so that another file at the same path is another input.
"""
import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

from .errors import OneLineError

MARKER = ".kvattn-made.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def _remove_leftovers(directory: str, pattern: str) -> None:
    """Remove entries of `directory` whose names match `pattern` (group 1: a process id) left by dead processes."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    regex = re.compile(pattern)
    for name in names:
        m = regex.match(name)
        if not m or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
            continue
        path = os.path.join(directory, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        except OSError:
            pass


def _kind(path: str) -> str:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a broken link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: links resolved, hard links and bind mounts included."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(path: str, flag: str, inputs: Sequence[Tuple[str, Optional[str]]] = (),
                      force: Optional[bool] = None) -> None:
    """Refuse, in one line and before any work, an output file that is not absent or a regular file (a device such
    as /dev/null, a directory, a pipe, a broken link), that is one of `inputs` ((flag, path) pairs; links
    resolved), or (when `force` is False) that exists."""
    if not path:
        raise OneLineError(f"{flag}: an empty path; give the name of a file to write")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise OneLineError(f"{flag} {path} is {_kind(path)}, not a regular file; give the name of a file to write")
    for name, other in inputs:
        if other and same_file(path, other):
            raise OneLineError(f"{flag} {path} is the same file as {name} {other}: the output would replace the "
                               f"input; write it elsewhere")
    if force is False and os.path.lexists(path):
        raise OneLineError(f"{flag} {path} exists; remove it or pass --force")


def check_output_dir(path: str, flag: str) -> None:
    """An output directory (created if needed) must not be anything else, e.g. a file of the user's, and must be
    named: an empty path would silently mean the current directory."""
    if not path:
        raise OneLineError(f"{flag}: an empty path; give a directory (it is created if needed)")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OneLineError(f"{flag} {path} exists and is not a directory; give a directory (it is created if needed)")


def make_output_dir(path: str, flag: str) -> None:
    """check_output_dir, then create the directory; what stops that (a parent that is a file, a read-only file
    system, no permission) is one line naming the flag."""
    check_output_dir(path, flag)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OneLineError(f"{flag} {path}: cannot create it ({e.strerror}"
                           f"{': ' + e.filename if e.filename and e.filename != path else ''}); choose another "
                           f"{flag}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OneLineError(f"{flag} {path}: not writable; choose another {flag}")


def write_atomic(path: str, data: Union[str, bytes, Callable[[str], None]]) -> str:
    """Write `path` through a temporary file in the same directory, then rename it into place (atomic on POSIX).

    `data` is text (written as UTF-8), bytes, or a function that writes the file whose path it is given (for
    writers such as torch.save).  The file is fsynced before the rename and the directory after it, so a power
    loss too leaves the old or the new file.  The directory is created if needed; on any failure the temporary file
    is removed and an existing `path` is left as it was.  Returns `path`."""
    if os.path.lexists(path) and not os.path.isfile(path):  # os.replace would put a file in place of a device
        raise OneLineError(f"{path} is {_kind(path)}, not a regular file: refusing to replace it")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    _remove_leftovers(directory, rf"^\.{re.escape(base)}\.(\d+)-\w+\.tmp$")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{base}.{os.getpid()}-", suffix=".tmp")
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


def save_figure(fig, path: str, **options) -> str:
    """A matplotlib figure written like every other file (write_atomic: never through a link, never half of one);
    the format is the extension's."""
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, **options))


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
    base = os.path.basename(os.path.abspath(out))
    _remove_leftovers(parent, rf"^\.{re.escape(base)}\.(?:tmp|old)-(\d+)-\w+$")  # a killed build's, or swap's
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-{os.getpid()}-", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json(path: str):
    """The JSON value in `path`, or None when it is missing, unreadable or not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _read_marker(directory: str) -> Optional[dict]:
    data = read_json(os.path.join(directory, MARKER))
    return data if isinstance(data, dict) and isinstance(data.get("entries"), list) else None


def made_entries(directory: str) -> Set[str]:
    """The names the marker of `directory` lists (none when it has no readable marker)."""
    data = _read_marker(directory)
    return {str(e) for e in data["entries"]} if data else set()


def _write_marker(directory: str, entries: Iterable[str], **extra) -> None:
    record = {"made_by": "kvattn_fairseq", "entries": sorted(set(entries) - {MARKER}), **extra}
    write_atomic(os.path.join(directory, MARKER), json.dumps(record, indent=2) + "\n")


def mark(directory: str, entries: Optional[Iterable[str]] = None) -> None:
    """Record in `directory` that the tool made it: `entries` (exact names; default: what is there now) are the
    tool's, and only those may be replaced or removed later."""
    _write_marker(directory, os.listdir(directory) if entries is None else entries)


def add_made(directory: str, names: Iterable[str]) -> None:
    data = _read_marker(directory) or {}
    _write_marker(directory, made_entries(directory) | set(names),
                  **{k: v for k, v in data.items() if k not in ("made_by", "entries")})


def _inodes(directory: str) -> Dict[str, List[int]]:
    found = {}
    for name in os.listdir(directory):
        try:
            st = os.lstat(os.path.join(directory, name))
        except OSError:
            continue
        found[name] = [st.st_dev, st.st_ino]
    return found


def adopt_writes(directory: str, accept: Callable[[str], bool]) -> None:
    """After a tool run into `directory` (see tracking_writes), also after one that was killed: add to the marker the
    entries that run created or replaced and whose names `accept` (the names the tool writes)."""
    data = _read_marker(directory)
    if not data or "before_run" not in data:
        return
    before = data.pop("before_run")
    made = {n for n, ino in _inodes(directory).items() if before.get(n) != ino and accept(n)}
    _write_marker(directory, made_entries(directory) | made)


@contextlib.contextmanager
def tracking_writes(directory: str, accept: Callable[[str], bool]) -> Iterator[None]:
    """Around a tool (e.g. fairseq-train) writing into a directory of ours: what it creates or replaces under the
    names `accept` is recorded as made, what was there before it started is not.  The state before is kept in the
    marker first, so that a run killed with this process is adopted by the next one (adopt_writes)."""
    adopt_writes(directory, accept)
    data = _read_marker(directory) or {"entries": []}
    _write_marker(directory, data["entries"], before_run=_inodes(directory))
    try:
        yield
    finally:
        adopt_writes(directory, accept)


def foreign_entries(directory: str) -> List[str]:
    """The entries of `directory` the tool did not make: every one when it carries no (readable) marker."""
    made = made_entries(directory)
    return sorted(e for e in os.listdir(directory) if e != MARKER and e not in made)


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
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.old-{os.getpid()}-", dir=parent)
        os.rename(out, os.path.join(old, "x"))
        os.rename(built, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(built, out)


# --- what a step records of the content of an input it reads ---------------------------------------------------------
def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_content(path: str, previous: Optional[dict]) -> dict:
    st = os.stat(path)
    seen = [st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino]
    if isinstance(previous, dict) and previous.get("stat") == seen and previous.get("sha256"):
        return previous  # the same file, untouched since it was hashed
    return {"size": st.st_size, "sha256": sha256_file(path), "stat": seen}


def content(path: str, previous: Optional[dict] = None) -> Optional[dict]:
    """The content of an input read from outside the work directory, as a step's record keeps it: size and sha256
    of a file, or of every file under a directory (by relative path; links followed, as a reader follows them).
    A file whose size, modification time and inode are those recorded in `previous` keeps the hash recorded there,
    so an unchanged input is not read again.  None when nothing is at `path`."""
    if os.path.isfile(path):
        return _file_content(path, previous)
    if not os.path.isdir(path):
        return None
    before = (previous or {}).get("files") or {}
    files = {}
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            if os.path.isfile(full):
                rel = os.path.relpath(full, path)
                files[rel] = _file_content(full, before.get(rel))
    return {"files": files}


def same_content(a: Optional[dict], b: Optional[dict]) -> bool:
    """Whether two records of content (see content) describe the same bytes; where they were read is left out."""
    def strip(c):
        if not isinstance(c, dict):
            return c
        if "files" in c:
            return {k: strip(v) for k, v in c["files"].items()}
        return (c.get("size"), c.get("sha256"))

    return a is not None and b is not None and strip(a) == strip(b)
