"""The skeleton every prepare command shares: its CLI, the raw files, the temporary build directory with resumable
steps, fairseq-preprocess, and prepare.json.

OUTDIR is built in OUTDIR.tmp-<key> (key: a hash of the options) and renamed into place after prepare.json, the
last file, is written: an OUTDIR with prepare.json is complete, and a failed or interrupted run leaves only the
.tmp- directory, whose finished steps (stamped under work/.steps) a rerun of the same command skips.
"""
import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from ..util import proc
from ..util.cli import ArgumentParser, positive_int, run_main
from ..util.errors import OneLineError
from ..util.settings import differences  # noqa: F401  (the data tools compare their records with it)
from ..util.io import check_output_dir, check_replaceable, install_dir, mark, write_atomic
from . import common
from .common import log
from .download import Remote, check_checksum, download, extract, locate


def parser(prog: str, description: str, bpe_default: Optional[int]) -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description=description)
    p.add_argument("--out", required=True, metavar="OUTDIR", help="the directory to create")
    p.add_argument("--raw", metavar="DIR", help="take the published files from DIR instead of downloading: the "
                   "archives under their published names, or their extracted files (at their paths inside the "
                   "archive or by bare name); nothing is downloaded")
    p.add_argument("--download-dir", metavar="DIR", help="where downloads go (default: OUTDIR.download); complete "
                   "files there are reused, .part files resumed")
    p.add_argument("--tiny", action="store_true", help="small vocabulary sizes, for test fixtures" if bpe_default
                   else "accepted for a uniform command line; changes nothing (the vocabulary is the data's)")
    p.add_argument("--workers", type=positive_int, default=min(8, os.cpu_count() or 1), metavar="N",
                   help="processes for encoding and fairseq-preprocess (default: CPU count, at most 8)")
    if bpe_default:
        p.add_argument("--bpe-size", type=positive_int, metavar="N", help="sentencepiece BPE vocabulary size "
                       f"(default {bpe_default}; with --tiny a few hundred)")
    p.add_argument("--force", action="store_true", help="rebuild OUTDIR even if it is already prepared")
    p.add_argument("--ignore-checksums", action="store_true",
                   help="accept downloads that differ from their published checksum (a repackaged mirror)")
    return p


def main(prog: str, p: argparse.ArgumentParser, body: Callable[[argparse.Namespace], None], argv=None) -> int:
    """The command line: run body(args); bad input or a failed step prints one line on stderr and exits 2."""
    common.PROG = prog
    args = p.parse_args(argv)
    return run_main(prog, lambda: run(body, args), interrupted="interrupted: rerun the same command to resume")


def run(body: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """body(args), with the checks every prepare command makes first; an OSError (an unwritable OUTDIR, a full
    disk, ...) is reported like bad input."""
    if importlib.util.find_spec("fairseq_cli") is None:  # binarizing is the last step: fail before the long ones
        raise OneLineError(f"fairseq is not installed for {sys.executable}: install it (make setup) or point "
                           "PYTHON at an environment that has it")
    # before any work: the output never holds or sits inside an input, and --force never removes what the tool
    # did not make
    inputs = [("--raw", args.raw), ("--download-dir", getattr(args, "download_dir", None))]
    check_output_dir(args.out, "--out")  # an empty --out would be the current directory's sibling build
    check_replaceable(args.out, "--force", inputs, replacing=args.force)
    try:
        body(args)
    except OSError as e:
        raise OneLineError(str(e)) from None
    return 0


def _extracted_hint(r: Remote) -> str:
    if r.tree:
        return f" (or its extracted {r.tree}/ folder)"
    if r.members:
        return f" (or its extracted {', '.join(os.path.basename(m) for m in r.members)})"
    return ""


class Sources:
    """The published files, from --raw or downloaded; what was used is recorded for prepare.json."""

    def __init__(self, remotes: Sequence[Remote], args: argparse.Namespace):
        self.remotes = {r.name: r for r in remotes}
        self.found: Dict[str, tuple] = {}
        self.record: List[dict] = []
        if args.raw:
            self._from_raw(args.raw)
        else:
            target = args.download_dir or os.path.abspath(args.out) + ".download"
            for r in remotes:
                path, status = download(r, target, args.ignore_checksums)
                self.found[r.name] = ("archive" if r.is_archive else "file", path)
                self._note(r, "download", path, status)

    def _from_raw(self, raw: str) -> None:
        if not os.path.isdir(raw):
            raise OneLineError(f"--raw {raw}: no such directory")
        missing = []
        for r in self.remotes.values():
            hit = locate(r, raw)
            if hit is None:
                missing.append(r)
                continue
            kind, where = hit
            if kind in ("files", "tree"):
                self.found[r.name] = (kind, where)
                self._note(r, "--raw (extracted files)", None, "not applicable")
            else:
                status = check_checksum(r, where)
                if status == "mismatch":
                    log("WARNING: %s does not match its published %s (%s); continuing with the file you supplied",
                        where, r.checksum[0], r.checksum[2])
                self.found[r.name] = ("archive" if r.is_archive else "file", where)
                self._note(r, "--raw", where, status)
        if missing:
            what = "; ".join(r.name + _extracted_hint(r) + f" from {r.urls[0]}" for r in missing)
            raise OneLineError(f"--raw {raw} lacks {what}")

    def _note(self, r: Remote, origin: str, path: Optional[str], status: str) -> None:
        entry = {"name": r.name, "url": r.urls[0], "origin": origin,
                 "bytes": os.path.getsize(path) if path else None, "checksum": None}
        if r.checksum:
            entry["checksum"] = {"algorithm": r.checksum[0], "expected": r.checksum[1], "published_by": r.checksum[2],
                                 "status": status}
        self.record.append(entry)

    def path(self, name: str) -> str:
        """A plain (non-archive) file."""
        kind, where = self.found[name]
        return where[self.remotes[name].members[0]] if kind == "files" else where

    def tree(self, name: str, build: "Build") -> str:
        """The folder holding an archive's `tree`: the one given under --raw, or extracted once (a step)."""
        kind, where = self.found[name]
        if kind == "tree":
            return where
        r = self.remotes[name]
        dest = os.path.join(build.work, "raw")

        def run() -> int:
            n = len(extract(where, lambda m: m.startswith(r.tree + "/"), dest))
            if not n:
                raise OneLineError(f"{where} has nothing under {r.tree}/: unexpected archive layout (is it the "
                                   "right file?)")
            return n

        build.step(f"extract-{name}", run)
        return os.path.join(dest, r.tree)

    def members(self, name: str, build: "Build") -> Dict[str, str]:
        """{member: path} for an archive's members: the extracted files given, or extracted once (a step)."""
        kind, where = self.found[name]
        if kind == "files":
            return where
        r = self.remotes[name]
        dest = os.path.join(build.work, "raw")
        rel = build.step(f"extract-{name}", lambda: {m: os.path.relpath(p, build.tmp)
                                                      for m, p in extract(where, r.members, dest).items()})
        return {m: os.path.join(build.tmp, p) for m, p in rel.items()}


class Build:
    """The temporary sibling directory OUTDIR is built in; use as a context manager around the steps."""

    def __init__(self, out: str, config: dict):
        self.out = os.path.abspath(out)
        self.key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
        self.tmp = f"{self.out}.tmp-{self.key}"
        self.work = os.path.join(self.tmp, "work")
        self.stamps = os.path.join(self.work, ".steps")
        self.t0 = time.time()

    @staticmethod
    def done(out: str, force: bool, settings: dict) -> bool:
        """True (and a log line) when OUTDIR is already a finished preparation made with `settings` (what
        options() records) and --force is not given; one made with other settings is refused without --force."""
        recorded = os.path.join(out, "prepare.json")
        if os.path.isfile(recorded) and not force:
            with open(recorded, encoding="utf-8") as f:
                before = json.load(f).get("options")
            changed = differences(before, settings)
            if changed:
                raise OneLineError(f"{out} was prepared with other settings ({changed}); pass --force to rebuild "
                                   "it, or choose another --out")
            log("%s is already prepared (prepare.json is there); pass --force to rebuild it", out)
            return True
        if os.path.exists(out) and not force:
            raise OneLineError(f"{out} exists but is not a finished preparation (no prepare.json): remove it or "
                               "pass --force")
        return False

    def __enter__(self) -> "Build":
        parent, name = os.path.split(self.out)
        os.makedirs(parent, exist_ok=True)
        for other in sorted(os.listdir(parent)):
            if other.startswith(name + ".tmp-") and os.path.join(parent, other) != self.tmp:
                log("note: %s is an unfinished build with other options; delete it if it is not needed",
                    os.path.join(parent, other))
        if os.path.isdir(self.stamps) and os.listdir(self.stamps):
            log("resuming in %s: %d finished steps", self.tmp, len(os.listdir(self.stamps)))
        os.makedirs(self.stamps, exist_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or not os.path.isdir(self.tmp):
            return
        if not os.listdir(self.stamps):  # nothing worth keeping
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif isinstance(exc, OneLineError):
            exc.args = (f"{exc} (finished steps are kept in {self.tmp}: rerun the same command to resume)",)

    def path(self, *parts: str) -> str:
        return os.path.join(self.tmp, *parts)

    def step(self, name: str, fn: Callable[[], object]):
        """Run fn once: its (JSON) result is stamped, and a rerun returns the stamp instead of running it again."""
        stamp = os.path.join(self.stamps, name + ".json")
        if os.path.exists(stamp):
            log("%s: done earlier, skipped", name)
            with open(stamp, encoding="utf-8") as f:
                return json.load(f)
        log("%s ...", name)
        t0 = time.time()
        result = fn()
        write_atomic(stamp, json.dumps(result))
        log("%s: done (%.0f s)", name, time.time() - t0)
        return result

    def finish(self, info: dict) -> None:
        """Drop the work files, write prepare.json last, and move the result into place."""
        shutil.rmtree(self.work)
        scrub_log(self.path("data-bin", "preprocess.log"), self.tmp)
        info["seconds"] = round(time.time() - self.t0, 1)
        mark(self.tmp, os.listdir(self.tmp) + ["prepare.json"])
        write_atomic(self.path("prepare.json"), json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        install_dir(self.tmp, self.out)  # with --force, the old output stays whole until the new one is in place
        log("wrote %s (%.0f s)", self.out, info["seconds"])


def scrub_log(path: str, tmp: str) -> None:
    """fairseq-preprocess's own log names the temporary build directory; it reads OUTDIR instead."""
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            write_atomic(path, f.read().replace(tmp, "OUTDIR"))


def fairseq_preprocess(args: Sequence[str]) -> None:
    """fairseq-preprocess in a subprocess (this interpreter's fairseq), its output passed through."""
    log("fairseq-preprocess %s", " ".join(map(str, args)))
    proc.run([*proc.fairseq_tool("fairseq-preprocess"), *args], label="fairseq-preprocess",
             echo=sys.stdout.write, keep_output=False)
    sys.stdout.flush()


def options(args: argparse.Namespace, **extra) -> dict:
    """The options that shape the result (the key of the temporary directory; recorded in prepare.json)."""
    config = {k: v for k, v in vars(args).items() if v is not None and k not in (
        "out", "raw", "download_dir", "force", "workers", "ignore_checksums")}
    config.update(extra)
    return config


def build_key(args: argparse.Namespace, **extra) -> dict:
    """options plus where the raw files come from, so a different --raw does not resume old steps."""
    return dict(options(args, **extra), raw=os.path.abspath(args.raw) if args.raw else None)


def count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
