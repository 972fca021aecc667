"""The experiment spine: every experiment of this repository (each paper table, conversion recovery, real-text
quality, associative recall, the demo) is a list of Steps, declared by its spec (kvattn_fairseq/run/specs/), that
one runner executes the same way.

A Step makes one output under the run's work directory (a directory: prepared data, a training run; or a file:
results, a table) from its settings and the outputs of the steps it needs.  For every experiment alike:

- one run at a time per work directory (util/lock.py): a second is refused, naming the first;
- one settings record per output, WORK/steps/<output path>.json: its settings, the records of the steps it read
  (so a retrained model is evaluated again), the size and sha256 of what it reads from outside the work directory
  (a --checkpoint, a --raw directory: the same path with other content is another input), the size and sha256 of
  each file it wrote, when it started and when it finished;
- one resume rule: a step whose record matches and finished is skipped; one that matches but did not finish is
  continued where it can be (fairseq-train resumes from checkpoint_last.pt) and made again otherwise; one whose
  output was made with other settings or from other inputs (or by something else) is refused in one line before any
  step runs, unless --force is given: then it is made again, and only what the tool made is removed;
- a step writes only its outputs (`out`, and the files named in `also`), never through a link, and never onto a
  file the records do not show this tool wrote (a fresh work directory holding a results.json or a plot of the
  user's, a file changed since) unless --force is given; the work directory never lies inside, nor an output
  holds, an input it reads from outside;
- every step's checks (its inputs, fairseq-train's own parsing of its command line) run before the first step;
- each step is announced with the command that does it by hand; its output goes to WORK/logs/<output path>.log;
- with jobs > 1, up to that many `concurrent` steps (a tool in a subprocess, e.g. fairseq-train) run side by side
  once what they need is done; every other step runs alone.  A failure starts nothing new; the steps already
  running finish (their work is kept for the rerun), then the first failure is reported.
"""
import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..util import proc
from ..util.errors import OneLineError
from ..util.io import check_output_dir, check_replaceable, content, read_json, remove_made, same_content, write_atomic
from ..util.lock import work_lock
from ..util.settings import differences

RECORDS = "steps"   # WORK/steps/<output path, / as __>.json: outputs are unique in a work directory, step names
#                     only within one experiment (two tables may both have a row "memsizer")
LOGS = "logs"
_SAY_LOCK = threading.Lock()


@dataclass
class Step:
    """One output of an experiment.  `run(ctx)` makes ctx.out; a directory output is marked with what the tool
    made in it (util/io.py), so that --force removes only that."""
    name: str                                   # unique in the experiment: "data/wmt16", "train/memsizer", ...
    out: str                                    # relative to the work directory
    settings: Dict[str, Any]                    # what the output is made from (JSON); other values: another output
    run: Callable[["Context"], None]
    needs: Tuple[str, ...] = ()                 # steps whose outputs this one reads
    command: str = ""                           # the same step by hand, announced before it runs
    resumable: bool = False                     # an unfinished output is continued, not made again
    check: Optional[Callable[[], None]] = None  # raises OneLineError before any step of the experiment runs
    always: bool = False                        # made at every run (e.g. a table of every result so far)
    also: Tuple[str, ...] = ()                  # other files it writes (results.json, a plot): rules as for `out`
    sources: Dict[str, str] = field(default_factory=dict)  # {flag: absolute path} it reads from outside the work
    #                                             directory: their content is recorded, and a change is a change
    concurrent: bool = False                    # its work is a subprocess writing only its output: it may run
    #                                             beside other such steps (Runner.run's jobs)

    def files(self) -> Tuple[str, ...]:
        return (self.out, *self.also)


@dataclass
class Context:
    work: str
    step: Step
    out: str                                    # absolute
    log: str                                    # absolute path of this step's log
    inputs: Dict[str, str]                      # needed step -> its absolute output
    records: Dict[str, Dict[str, Any]]          # needed step -> its record
    say: Callable[[str], None] = print
    notes: List[str] = field(default_factory=list)


def fingerprint(record: Optional[Dict[str, Any]]) -> Optional[str]:
    """What a dependent step remembers of a step it read: its settings and when it finished."""
    if not record or not record.get("finished"):
        return None
    blob = json.dumps({"settings": record.get("settings"), "finished": record["finished"]}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def log_path(work: str, out: str) -> str:
    """Where the step making `out` logs: WORK/logs/<output path, / as ->.log."""
    return os.path.join(work, LOGS, os.path.normpath(out).replace(os.sep, "-") + ".log")


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def work_dir(given: str, flag: str) -> str:
    """The absolute work directory of `flag`; an empty one (which would mean the current directory) or a file is
    refused in one line."""
    check_output_dir(given, flag)
    return os.path.abspath(given)


class Runner:
    def __init__(self, prog: str, work: str, force: bool = False, flag: str = "--work"):
        self.prog, self.force, self.flag = prog, force, flag
        self.work = work_dir(work, flag)
        self.contents: Dict[str, Dict[str, Any]] = {}  # step -> the content of its sources, read by plan()

    def say(self, msg: str) -> None:
        with _SAY_LOCK:  # steps side by side in threads: print() writes the newline apart from the line
            print(f"[{self.prog}] {msg}", flush=True)

    # --- records ----------------------------------------------------------------------------------------------
    def record_path(self, out: str) -> str:
        return os.path.join(self.work, RECORDS, os.path.normpath(out).replace(os.sep, "__") + ".json")

    def record(self, step: Step) -> Optional[Dict[str, Any]]:
        rec = read_json(self.record_path(step.out))
        return rec if isinstance(rec, dict) and rec.get("out") == os.path.normpath(step.out) else None

    def _write_record(self, step: Step, rec: Dict[str, Any]) -> None:
        write_atomic(self.record_path(step.out), json.dumps(rec, indent=2, ensure_ascii=False) + "\n")

    def out(self, step: Step) -> str:
        return os.path.join(self.work, step.out)

    # --- the plan -----------------------------------------------------------------------------------------------
    def plan(self, steps: Sequence[Step]) -> Dict[str, str]:
        """What each step will do: skip, continue, make (new), redo (made again); refusals first, in one line."""
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate step names in {names}")  # a spec's bug, not the user's
        done: Dict[str, str] = {}
        refusals: List[str] = []
        by_name = {s.name: s for s in steps}
        for step in steps:
            unknown = [n for n in step.needs if n not in done]
            if unknown:
                raise ValueError(f"step {step.name} needs {unknown}, which do not come before it")
            if step.check is not None:
                try:
                    step.check()
                except OneLineError as e:
                    raise OneLineError(f"{step.name}: {e}") from None
            out = self.out(step)
            rec = self.record(step)
            inputs = {n: (fingerprint(self.record(by_name[n])) if done[n] == "skip" else None) for n in step.needs}
            read = self.contents[step.name] = self._contents(step, rec)
            exists = os.path.lexists(out) and (not os.path.isdir(out) or bool(os.listdir(out)))
            if step.always:
                done[step.name] = "redo" if exists else "make"
            elif rec is None:
                if exists:  # made by something else (an earlier version, the user): replaced only with --force
                    why = "it has no record of this tool's"
                    refusals += self._refusal(step, out, why)
                    done[step.name] = "redo"
                else:
                    done[step.name] = "make"
            else:
                changed = [differences(rec.get("settings"), step.settings)] if rec.get("settings") != \
                    json.loads(json.dumps(step.settings)) else []
                changed += [f"made from another {n}" for n in step.needs
                            if inputs[n] is None or (rec.get("inputs") or {}).get(n) != inputs[n]]
                if "sources" in rec:  # a record older than content records vouches for none: see _contents
                    changed += [f"made from another {flag} ({path}: its content changed)"
                                for flag, path in step.sources.items()
                                if not same_content((rec["sources"] or {}).get(flag), read[flag])]
                if not exists:
                    done[step.name] = "make"  # nothing there to lose
                elif changed:
                    refusals += self._refusal(step, out, "; ".join(changed))
                    done[step.name] = "redo"
                elif not rec.get("finished"):  # interrupted: continued where it can be, else made again
                    done[step.name] = "continue" if step.resumable else "redo"
                else:
                    done[step.name] = "skip"
            if done[step.name] != "skip" and not self.force:
                refusals += [f"{step.name}: {path} {why}; move it away or pass --force to replace it"
                             for path, why in self._not_ours(step, rec)]
        if refusals:
            raise OneLineError(refusals[0])
        return done

    def _contents(self, step: Step, rec: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """The content of each source of `step` now (unchanged files are not read again: util/io.py content)."""
        before = (rec or {}).get("sources") or {}
        found = {}
        for flag, path in step.sources.items():
            found[flag] = content(path, before.get(flag))
            if found[flag] is None:
                raise OneLineError(f"{step.name}: {flag} {path}: no such file or directory")
        if rec is not None and "sources" not in rec and step.sources:
            self.say(f"{step.name}: its record predates content records; the content of "
                     f"{', '.join(step.sources)} is recorded as it is now")
        return found

    def _not_ours(self, step: Step, rec: Optional[Dict[str, Any]]) -> List[Tuple[str, str]]:
        """The files among the step's outputs that it would write over although the records do not show this tool
        wrote them as they are: (path, why).  A step that started and did not finish (its record names no files)
        owns its outputs, as does one recorded before files were; a directory output is left to its marker."""
        recorded = (rec or {}).get("files")
        found = []
        for rel in step.files():
            path = os.path.join(self.work, rel)
            if not os.path.lexists(path) or (os.path.isdir(path) and not os.path.islink(path)):
                continue
            if os.path.islink(path):
                found.append((path, "is a link; this tool writes no link and never writes through one"))
            elif rec is None:
                found.append((path, "exists and this tool has no record of writing it"))
            elif recorded is not None and not same_content(recorded.get(os.path.normpath(rel)),
                                                           content(path) if os.path.isfile(path) else None):
                found.append((path, "is not the file this tool wrote there (changed since, or never written by it)"))
        return found

    def _refusal(self, step: Step, out: str, why: str) -> List[str]:
        if not self.force:
            return [f"{step.name} ({out}) was made with other settings ({why}); pass --force to make it again "
                    f"(only what this tool made is removed)"]
        if os.path.isdir(out):
            check_replaceable(out, "--force", what=self.flag)  # a file of the user's stops the run, before any work
        return []

    # --- running ------------------------------------------------------------------------------------------------
    def run(self, steps: Sequence[Step], *, title: str = "", jobs: int = 1) -> Dict[str, str]:
        """Plan, then run every step in order (up to `jobs` concurrent steps at once); returns each step's absolute
        output."""
        check_output_dir(self.work, self.flag)
        self._check_sources(steps)
        with work_lock(self.work, self.flag, note=self.say):
            plan = self.plan(steps)
            self.steps = {s.name: s for s in steps}
            from ..util.paths import USER_DIR

            if title:
                self.say(f"{title}: {len(steps)} steps in {self.work}")
            self.say(f"plugin: {USER_DIR}")  # the code every step runs (an installed copy, a checkout)
            outputs = {step.name: self.out(step) for step in steps}
            if jobs <= 1:
                for step in steps:
                    self._run_one(step, plan[step.name], outputs)
            else:
                self._run_side_by_side(steps, plan, outputs, jobs)
            return outputs

    def _run_side_by_side(self, steps: Sequence[Step], plan: Dict[str, str], outputs: Dict[str, str],
                          jobs: int) -> None:
        """Steps in their order as soon as what they need is done: concurrent ones in up to `jobs` threads, the
        others in this thread while nothing else runs (an in-process step owns the process's printed output)."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        pending, done, running = list(steps), set(), {}
        failure: Optional[BaseException] = None
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            while running or (pending and failure is None):
                ready = [s for s in pending if all(n in done for n in s.needs)] if failure is None else []
                for step in [s for s in ready if s.concurrent][:jobs - len(running)]:
                    running[pool.submit(self._run_one, step, plan[step.name], outputs)] = step
                    pending.remove(step)
                if not running:
                    alone = next((s for s in ready if not s.concurrent), None)
                    if alone is None:
                        raise ValueError(f"steps {[s.name for s in pending]} wait for each other")  # a spec's bug
                    self._run_one(alone, plan[alone.name], outputs)
                    pending.remove(alone)
                    done.add(alone.name)
                    continue
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    step = running.pop(future)
                    if future.exception() is None:
                        done.add(step.name)
                    elif failure is None:
                        failure = future.exception()
                        if running:
                            self.say(f"{step.name} failed; waiting for {', '.join(s.name for s in running.values())} "
                                     f"to finish (their work is kept)")
        if failure is not None:
            raise failure

    def _run_one(self, step: Step, what: str, outputs: Dict[str, str]) -> None:
        out = outputs[step.name]
        if what == "skip":
            self.say(f"{step.name}: done earlier with the same settings, skipped")
            rec = self.record(step)
            if rec is not None and step.sources and rec.get("sources") != self.contents.get(step.name):
                rec["sources"] = self.contents[step.name]  # the same bytes, touched since: not hashed again
                self._write_record(step, rec)
            return
        if what == "redo":
            self._remove(out)
        for rel in step.files():  # a link in an output's place (allowed by --force) goes, never written through
            if os.path.islink(os.path.join(self.work, rel)):
                os.unlink(os.path.join(self.work, rel))
        rec = self.record(step) if what == "continue" else None
        if rec is None:
            rec = {"step": step.name, "out": os.path.normpath(step.out), "settings": step.settings,
                   "started": now_utc(), "finished": None}
        needed = {n: self.record(self.steps[n]) for n in step.needs}
        rec["inputs"] = {n: fingerprint(r) for n, r in needed.items()}
        rec["sources"] = self.contents.get(step.name, {})
        rec["files"] = None  # being written: nothing there is vouched for until the step finishes
        self._write_record(step, rec)
        log = log_path(self.work, step.out)
        ctx = Context(self.work, step, out, log, {n: outputs[n] for n in step.needs}, needed, self.say)
        verb = {"continue": "continuing", "redo": "making it again", "make": "running"}[what]
        self.say(f"{step.name}: {verb}" + (f": {step.command}" if step.command else ""))
        start = time.time()
        step.run(ctx)
        rec["files"] = {os.path.normpath(rel): content(path) for rel in step.files()
                        for path in [os.path.join(self.work, rel)] if os.path.isfile(path) and not os.path.islink(path)}
        rec["finished"] = now_utc()
        self._write_record(step, rec)
        self.say(f"{step.name}: done in {time.time() - start:.0f}s")

    def _check_sources(self, steps: Sequence[Step]) -> None:
        """Before the lock is taken or anything written: the work directory is not an input read from outside,
        nor inside one, and no such input lies at or inside an output (a redone step would remove it)."""
        for step in steps:
            for flag, path in step.sources.items():
                real = os.path.realpath(path)
                if _within(os.path.realpath(self.work), real):
                    raise OneLineError(f"{self.flag} {self.work} and {flag} {path} overlap: this run would write "
                                       f"into its own input; choose a {self.flag} outside {path}")
                for other in steps:
                    for rel in other.files():
                        if _within(real, os.path.realpath(os.path.join(self.work, rel))):
                            raise OneLineError(f"{flag} {path} is an output of this run ({other.name}); move it "
                                               f"out of {self.flag} {self.work} or choose another {self.flag}")

    @staticmethod
    def _remove(out: str) -> None:
        """An output made again: a directory goes only if it holds nothing but what the tool made (else one line
        naming the other files), a file (results, a table: the tool's) goes."""
        if os.path.isdir(out) and not os.path.islink(out):
            remove_made(out)
        elif os.path.lexists(out):
            os.unlink(out)


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def in_process(fn: Callable[[Context], None], label: str) -> Callable[[Context], None]:
    """A step that runs Python code in this process, its output captured in the step's log."""
    def run(ctx: Context) -> None:
        with proc.logged(ctx.log, label):
            fn(ctx)
    return run


def clean_dir(path: str) -> None:
    """An output directory removed whole (a step's own temporary)."""
    shutil.rmtree(path, ignore_errors=True)
