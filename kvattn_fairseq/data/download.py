"""Getting the published files: resumable HTTP downloads, files the user already has (--raw), archive extraction.

A download goes to NAME.part (resumed with an HTTP Range request when rerun) and gets its final name only once its
size matches the server's Content-Length and, where a checksum is published, the checksum matches.  Archives are
read to the end while extracting, so a truncated or corrupt .tgz/.zip is reported instead of half-used.
"""
import gzip
import hashlib
import http.client
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

from ..util.errors import OneLineError
from ..util.io import write_atomic
from .common import Progress, human, log

CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """A file as published: its name on disk, its mirrors (tried in order), what is published about it, and the
    archive members the pipeline reads (empty for a plain file)."""
    name: str
    urls: Tuple[str, ...]
    size: Optional[int] = None
    checksum: Optional[Tuple[str, str, str]] = None  # (hashlib algorithm, hex digest, where it is published)
    members: Tuple[str, ...] = ()
    tree: str = ""  # or: every member used sits under this folder (found as that folder under --raw)

    @property
    def is_archive(self) -> bool:
        return self.name.endswith((".tgz", ".tar.gz", ".zip"))


def file_digest(path: str, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def check_checksum(remote: Remote, path: str) -> str:
    """'verified', 'mismatch' or 'not published'."""
    if remote.checksum is None:
        return "not published"
    algorithm, expected, _ = remote.checksum
    log("%s: checking %s", remote.name, algorithm)
    return "verified" if file_digest(path, algorithm) == expected else "mismatch"


class _Incomplete(Exception):
    pass


class _WrongFile(Exception):
    pass


def _fetch(url: str, part: str, timeout: float, expected_size: Optional[int] = None) -> int:
    """Append the rest of `url` to `part`; returns the total size the server announced (0 if unknown)."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"User-Agent": "kvattn-fairseq-prepare/0.1"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the .part is already whole
            return have
        raise
    with resp:
        if have and resp.status != 206:
            log("%s: server ignored the resume request, starting over", os.path.basename(part))
            have = 0
        total = 0
        content_range = resp.headers.get("Content-Range", "")
        m = re.match(r"bytes \d+-\d+/(\d+)", content_range)
        if m:
            total = int(m.group(1))
        elif resp.headers.get("Content-Length"):
            total = have + int(resp.headers["Content-Length"])
        if expected_size and total and total != expected_size:  # an error page or another file: do not fetch it
            raise _WrongFile(f"it serves {total} bytes, the published file has {expected_size}")
        if have:
            log("%s: resuming at %s", os.path.basename(part), human(have))
        bar = Progress(f"downloading {os.path.basename(part)[:-5]}", total or None, as_bytes=True)
        bar.update(have)
        try:
            with open(part, "ab" if have else "wb") as f:
                for block in iter(lambda: resp.read(CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as e:  # e.g. IncompleteRead: the connection dropped mid-file
            raise _Incomplete(f"{type(e).__name__}: {e}") from None
        finally:
            bar.close()
    size = os.path.getsize(part)
    if total and size != total:
        raise _Incomplete(f"got {size} of {total} bytes")
    return total


def _finish(remote: Remote, part: str, final: str, ignore_checksums: bool) -> Tuple[str, str]:
    status = "not published"
    if remote.checksum is not None:
        status = "skipped (--ignore-checksums)" if ignore_checksums else check_checksum(remote, part)
        if status == "mismatch":
            os.remove(part)
            algorithm, expected, source = remote.checksum
            raise OneLineError(f"the download of {remote.name} does not match its published {algorithm} {expected} "
                               f"({source}); it was deleted: rerun to download again, or pass --ignore-checksums "
                               "if the host now serves a repackaged file")
    os.replace(part, final)
    log("%s: done (%s, checksum %s)", remote.name, human(os.path.getsize(final)), status)
    return final, status


def download(remote: Remote, dest_dir: str, ignore_checksums: bool = False, attempts: int = 3,
             timeout: float = 60.0) -> Tuple[str, str]:
    """Download `remote` into dest_dir unless it is already there; returns (path, checksum status)."""
    os.makedirs(dest_dir, exist_ok=True)
    final = os.path.join(dest_dir, remote.name)
    if os.path.exists(final):
        log("%s: already downloaded", remote.name)
        status = "skipped (--ignore-checksums)" if ignore_checksums else check_checksum(remote, final)
        if status == "mismatch":
            raise OneLineError(f"{final} does not match its published {remote.checksum[0]} {remote.checksum[1]} "
                               f"({remote.checksum[2]}): delete it to download it again, or pass --ignore-checksums")
        return final, status
    part = final + ".part"
    failures = []
    for url in remote.urls:
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(2 ** attempt, 30))
            try:
                log("%s: downloading %s", remote.name, url)
                _fetch(url, part, timeout, None if ignore_checksums else remote.size)
            except _WrongFile as e:
                failures.append(f"{url}: {e} (--ignore-checksums accepts it)")
                break
            except _Incomplete as e:  # the connection dropped mid-file: retry, resuming from what arrived
                failures.append(f"{url}: incomplete ({e})")
                continue
            except (OSError, http.client.HTTPException) as e:  # refused or unreachable: try the next mirror
                failures.append(f"{url}: {getattr(e, 'reason', None) or e}")
                break
            return _finish(remote, part, final, ignore_checksums)
    kept = f" (the partial file {part} is kept: rerun to resume)" if os.path.exists(part) else ""
    raise OneLineError(f"could not download {remote.name} ({'; '.join(failures) or 'no URL'}){kept}; without "
                       "network, put the file in a directory and pass --raw DIR")


def locate(remote: Remote, raw_dir: str) -> Union[None, Tuple[str, str], Tuple[str, Dict[str, str]]]:
    """Find `remote` under --raw: ('files', {member: path}) when every member is there extracted (at its archive
    path or by its bare name), ('tree', folder) for an extracted folder, ('archive', path) when the archive itself
    is there, else None."""
    if remote.tree and os.path.isdir(os.path.join(raw_dir, remote.tree)):
        return "tree", os.path.join(raw_dir, remote.tree)
    if remote.members:
        found = {}
        for member in remote.members:
            for candidate in (os.path.join(raw_dir, member), os.path.join(raw_dir, os.path.basename(member))):
                if os.path.isfile(candidate):
                    found[member] = candidate
                    break
        if len(found) == len(remote.members):
            return "files", found
    path = os.path.join(raw_dir, remote.name)
    if os.path.isfile(path):
        return "archive", path
    return None


def _safe_name(name: str) -> Optional[str]:
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    if not name or name.startswith("/") or ".." in name.split("/"):
        return None
    return name


def _copy(src, path: str) -> None:
    with open(path, "wb") as f:
        shutil.copyfileobj(src, f, CHUNK)


def extract(archive: str, wanted: Union[Sequence[str], Callable[[str], bool]], dest: str,
            what: str = "") -> Dict[str, str]:
    """Extract the wanted members of a .tgz/.zip into dest, reading the whole archive (a truncated one fails here).
    Returns {member: extracted path}; a wanted name that is absent is a OneLineError naming it."""
    label = what or os.path.basename(archive)
    pick = wanted if callable(wanted) else set(wanted).__contains__
    out: Dict[str, str] = {}
    bar = Progress(f"extracting {label}", unit="files")

    def write(name: str, src) -> None:
        path = os.path.join(dest, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, lambda tmp: _copy(src, tmp))
        out[name] = path
        bar.update()

    log("%s: extracting (%s)", label, human(os.path.getsize(archive)))
    try:
        if archive.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:  # a truncated zip has lost its central directory: fails here
                for info in zf.infolist():
                    name = _safe_name(info.filename)
                    if name and not info.is_dir() and pick(name):
                        with zf.open(info) as src:
                            write(name, src)
        else:
            with tarfile.open(archive, "r|gz") as tf:  # stream mode: one pass, reads to the end
                for info in tf:
                    name = _safe_name(info.name)
                    if name and info.isfile() and pick(name):
                        write(name, tf.extractfile(info))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile) as e:
        bar.close()
        raise OneLineError(f"{archive} is truncated or corrupt ({type(e).__name__}: {e}); delete it and download "
                           "it again") from None
    bar.close()
    if not callable(wanted):
        missing = [m for m in wanted if m not in out]
        if missing:
            raise OneLineError(f"{archive} has no {missing[0]}: unexpected archive layout (is it the right file?)")
    log("%s: extracted %d files", label, len(out))
    return out
