"""Regenerate a paper's table end to end: prepare the data, train every row, evaluate it, write the table.

    python -m kvattn_fairseq paper-tables TABLE --work DIR [--raw DIR] [--tiny] [--rows R1,R2] [--kinds K1,K2]
        [--bench results.json] [--drop FLAG]... [-- extra fairseq-train flags]

TABLE is a table of kvattn_fairseq/papers (--help lists them).  The data is prepared, each row evaluated and the
Markdown written in this process (the same functions as scripts/prepare-*.sh, `python -m kvattn_fairseq synthetic`,
`python -m kvattn_fairseq.evaluate` and scripts/make_tables.py); each row is trained by the real fairseq-train (the
command `python -m kvattn_fairseq experiments train` prints).  Each step is announced before it runs, its output
logged under DIR/logs, the tables in DIR/tables.md.  A rerun resumes: prepared data and finished evaluations are
skipped and training continues from checkpoint_last.pt.  --tiny runs the whole chain on the bundled fixtures with
tiny models (CPU, minutes): a check that the pipeline works, not a result; tables.md marks its rows "(tiny)".

Every step records the settings it was made with (prepare.json / synthetic.json, kvattn-train.json in the run's
directory, the training record inside each results file); a rerun with other settings (--tiny or not, other flags
or sizes) is refused in one line unless --force is given, which redoes those steps, removing only what the tool
made.  One run at a time per DIR: a second is refused, naming the first one's process.
"""
import contextlib
import fnmatch
import io
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

from .. import data
from ..papers import TABLES, Row, Table
from ..util import proc
from ..util.cli import ArgumentParser, run_main, split_passthrough
from ..util.errors import OneLineError, StepFailed
from ..evaluate.results import TRAIN_RECORD
from ..checkpoints.files import written_by_fairseq_train
from ..util.io import (adopt_writes, check_output_dir, check_replaceable, mark, remove_made, tracking_writes,
                       write_atomic)
from ..util.lock import work_lock
from . import report, train as recipes

PROG = "python -m kvattn_fairseq paper-tables"
TINY_SYNTHETIC = dict(train=300, valid=30, test=30, min_len=8, max_len=8)


def log(msg: str) -> None:
    print(f"[paper_tables] {msg}", flush=True)


def step(label: str, log_path: str, fn, announce: str) -> None:
    """An in-process step: announced, its output in log_path, timed; a failure is one line naming the log."""
    log(f"{label}: {announce}")
    start = time.time()
    with proc.logged(log_path, label):
        fn()
    log(f"{label}: done in {time.time() - start:.0f}s")


def select_rows(table: Table, rows: Optional[str], kinds: Optional[str]) -> List[Row]:
    chosen = list(table.rows)
    if rows:  # names, or shell-style patterns (reverse-kv-*-s1) for tables with many rows
        wanted = [r.strip() for r in rows.split(",") if r.strip()]
        known = [r.name for r in table.rows]
        unknown = [w for w in wanted if not fnmatch.filter(known, w)]
        if unknown:
            listing = ", ".join(sorted(known)) if len(known) <= 40 else f"{len(known)} rows, e.g. {known[0]}"
            raise OneLineError(f"--rows: {', '.join(unknown)} not in table {table.name} (rows: {listing})")
        chosen = [r for r in table.rows if any(fnmatch.fnmatchcase(r.name, w) for w in wanted)]
    if kinds:
        if not table.extra_kinds:
            raise OneLineError(f"--kinds: table {table.name} fixes its rows' kinds; use --rows, or train other "
                               f"kinds with scripts/train.sh")
        from ..modules.registry import ATTENTION_KINDS

        base = table.rows[-1]
        for kind in [k.strip() for k in kinds.split(",") if k.strip()]:
            if kind not in ATTENTION_KINDS:
                raise OneLineError(f"--kinds: unknown attention kind {kind!r} (choose from "
                                   f"{', '.join(sorted(ATTENTION_KINDS))})")
            if all(r.name != kind for r in chosen):
                chosen.append(Row(kind, kind, base.recipe, {}, kind=kind, data=base.data))
    return chosen


def refuse_or_redo(what: str, changed: str, force: bool, redo: str) -> None:
    """A step's output was made with other settings: one line naming --force, or (with --force) a note."""
    if not force:
        raise OneLineError(f"{what} was made with other settings ({changed}); pass --force to {redo}")
    log(f"{what} was made with other settings ({changed}); --force: {redo}")


def prepare(key: str, work: str, raw: Optional[str], tiny: bool, force: bool = False, check_only: bool = False) -> str:
    """The prepared data directory for a dataset key (wmt16, cnndm, wikitext103, synthetic-<task>[-len<L>]: sequences
    of length L instead of the default).  With check_only, only refuse an output made with other settings (without
    --force) or one --force may not replace, and do nothing else."""
    from ..data.build import differences

    out = os.path.join(work, "data", key)
    logs = os.path.join(work, "logs")
    if key.startswith("synthetic-"):
        from ..data import synthetic

        task, _, length = key.split("-", 1)[1].partition("-len")
        sizes = dict(TINY_SYNTHETIC) if tiny else dict(min_len=int(length), max_len=int(length)) if length else {}
        recorded = os.path.join(out, "synthetic.json")
        redo = False
        if os.path.isfile(recorded):
            with open(recorded, encoding="utf-8") as f:
                before = {k: v for k, v in json.load(f).items() if k != "source"}
            changed = differences(before, synthetic.settings(task, **sizes))
            if not changed:
                if not check_only:
                    log(f"data {key}: already prepared, skipped")
                return out
            if check_only and force:
                check_replaceable(out, "--force")
                return out
            refuse_or_redo(f"data {key} ({out})", changed, force, "prepare it again")
            check_replaceable(out, "--force")
            redo = True
        if check_only:
            return out
        argv = ["--task", task, "--out", out] + [f"--{k.replace('_', '-')}={v}" for k, v in sizes.items()] + \
            (["--force"] if redo else [])
        step(f"data {key}", os.path.join(logs, f"prepare-{key}.log"),
             lambda: synthetic.generate(out, task, force=redo, **sizes),
             proc.shell(["python", "-m", "kvattn_fairseq", "synthetic", *argv]))
        return out
    fixtures_dir = os.path.join(work, "fixtures", key)
    argv = ["--out", out] + (["--raw", raw or fixtures_dir] if raw or tiny else []) + (["--tiny"] if tiny else [])
    if os.path.isfile(os.path.join(out, "prepare.json")):
        try:  # the prepare command itself compares the recorded settings with these (and downloads nothing)
            with contextlib.redirect_stdout(io.StringIO()):
                data.prepare(key, argv)
            if not check_only:
                log(f"data {key}: already prepared, skipped")
            return out
        except OneLineError as e:  # made with other settings: the message names --force, which this command has too
            if not force:
                raise OneLineError(f"data {key}: {e}") from None
            if check_only:
                check_replaceable(out, "--force")
                return out
            log(f"data {key}: {e}; --force: preparing it again")
            argv.append("--force")
    if check_only:
        return out
    if tiny and not raw:
        raw = fixtures_dir
        if not os.path.isdir(raw):
            from ..data import fixtures

            step(f"fixtures {key}", os.path.join(logs, f"fixtures-{key}.log"),
                 lambda: fixtures.WRITERS[key](raw), proc.shell(["python", "-m", "kvattn_fairseq.data.fixtures", key,
                                                                 raw]))
    step(f"data {key}", os.path.join(logs, f"prepare-{key}.log"), lambda: data.prepare(key, argv),
         proc.shell(["python", "-m", f"kvattn_fairseq.data.{key}", *argv]))
    return out


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def train(row: Row, table: Table, data_dir: str, work: str, tiny: bool, extra: Sequence[str],
          drop: Sequence[str], force: bool = False, check_only: bool = False) -> str:
    """Train a row (fairseq-train); with check_only, only refuse a run made with other settings (without --force)
    or one --force may not remove (files the tool did not make in it)."""
    from ..data.build import differences

    save = os.path.join(work, "runs", table.name, row.name)
    data_bin = os.path.join(data_dir, "data-bin")
    arch, flags, _ = recipes.train_args(row.recipe, row.kind, tiny, [*row.flags, *extra], drop)
    settings = {"experiment": row.recipe, "kind": row.kind, "tiny": tiny, "arch": arch, "flags": flags,
                "data": os.path.relpath(data_bin, work)}
    if os.path.isdir(save):
        adopt_writes(save, written_by_fairseq_train)  # what a killed run of this tool left is the tool's too
    record = read_json(os.path.join(save, TRAIN_RECORD))
    if record is not None:
        changed = differences(record.get("settings"), settings)
    else:
        changed = "no record of them" if os.path.isdir(save) and os.listdir(save) else ""
    if changed and not (check_only and force):
        refuse_or_redo(f"train {row.name} ({save})", changed, force,
                       "train it again from scratch (its checkpoints are removed)")
    if changed:
        check_replaceable(save, "--force", what="--work")  # files the user put there stop it here
    if check_only:
        return save
    if changed:
        remove_made(save)
        record = None
    if record is not None and record.get("finished"):
        log(f"train {row.name}: finished earlier, skipped")
        return save
    recipes.check_data(row.recipe, data_bin, [*row.flags, *extra])
    command = recipes.build_command(row.recipe, data_bin, save, row.kind, tiny, [*row.flags, *extra], drop)
    if record is None:  # a new run: the directory is the tool's, and says what it is trained with
        os.makedirs(save, exist_ok=True)
        mark(save, [TRAIN_RECORD])
        record = {"settings": settings, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "finished": None}
        write_atomic(os.path.join(save, TRAIN_RECORD), json.dumps(record, indent=2) + "\n")
    label = f"train {row.name}"
    for note in command.notes:
        log(f"{label}: # {note}")
    log(f"{label}: {command.shell()}")
    start = time.time()
    with tracking_writes(save, written_by_fairseq_train):  # the marker names each file fairseq-train makes
        proc.run(command.argv, os.path.join(work, "logs", f"train-{table.name}-{row.name}.log"), label=label,
                 append=True, keep_output=False)
    log(f"{label}: done in {time.time() - start:.0f}s")
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_atomic(os.path.join(save, TRAIN_RECORD), json.dumps(record, indent=2) + "\n")
    return save


def evaluate(row: Row, table: Table, data_dir: str, save: str, work: str, tiny: bool, force: bool = False) -> None:
    from ..evaluate import __main__ as evaluator

    out = os.path.join(work, "results", table.name, f"{row.name}.json")
    if os.path.isfile(out):
        trained = read_json(os.path.join(save, TRAIN_RECORD))
        evaluated = (read_json(out) or {}).get("training")
        if evaluated == trained:
            log(f"evaluate {row.name}: {out} exists, skipped")
            return
        refuse_or_redo(f"evaluate {row.name} ({out})", "it evaluates another training run of the row", force,
                       "evaluate it again")
    argv = [table.evaluate, "--data", data_dir, "--checkpoint", os.path.join(save, table.checkpoint), "--out", out,
            "--name", row.name, "--table", table.name, *(table.tiny_eval_flags if tiny else table.eval_flags)]
    args = evaluator.parse(argv)
    step(f"evaluate {row.name}", os.path.join(work, "logs", f"evaluate-{table.name}-{row.name}.log"),
         lambda: evaluator.evaluate(args), proc.shell(["python", "-m", "kvattn_fairseq.evaluate", *argv]))


def run(args) -> str:
    table = TABLES[args.table]
    rows = select_rows(table, args.rows, args.kinds)
    if args.raw and not os.path.isdir(args.raw):
        raise OneLineError(f"--raw: {args.raw} is not a directory")
    if args.bench:
        report.load_bench(args.bench)  # a bad file is refused before any work
    work = os.path.abspath(args.work)
    check_output_dir(work, "--work")
    for row in rows:  # every command is checked, by fairseq-train's own parser, before anything runs
        command = recipes.build_command(row.recipe, os.path.join(work, "data", table.data_of(row), "data-bin"),
                                        os.path.join(work, "runs", table.name, row.name), row.kind, args.tiny,
                                        [*row.flags, *args.extra], args.drop)
        try:
            command.check()
        except OneLineError as e:
            raise OneLineError(f"train {row.name}: {e}") from None
    if args.tiny:  # tiny models gain nothing from intra-op threads, and lose a lot to them on a busy CPU
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    with work_lock(work, "--work", note=log):
        return run_locked(args, table, rows, work)


def run_locked(args, table: Table, rows: List[Row], work: str) -> str:
    import kvattn_fairseq

    log(f"table {table.name}: {len(rows)} row(s) ({', '.join(r.name for r in rows)}) in {work}")
    log(f"plugin: {kvattn_fairseq.USER_DIR}")
    # before any step runs or anything is removed: a step made with other settings is refused (without --force),
    # and one --force would redo must hold only what the tool made
    for row in rows:
        data_dir = prepare(table.data_of(row), work, args.raw, args.tiny, args.force, check_only=True)
        train(row, table, data_dir, work, args.tiny, args.extra, args.drop, args.force, check_only=True)
    data_dirs: Dict[str, str] = {}
    for i, row in enumerate(rows, 1):
        log(f"row {i}/{len(rows)}: {row.name}")
        key = table.data_of(row)
        if key not in data_dirs:
            data_dirs[key] = prepare(key, work, args.raw, args.tiny, args.force)
        save = train(row, table, data_dirs[key], work, args.tiny, args.extra, args.drop, args.force)
        evaluate(row, table, data_dirs[key], save, work, args.tiny, args.force)
    tables_md = os.path.join(work, "tables.md")  # every table run in this work directory so far
    results_dir = os.path.join(work, "results")
    step("table", os.path.join(work, "logs", f"table-{table.name}.log"),
         lambda: print(f"wrote {tables_md} ({report.write_tables(results_dir, tables_md, args.bench)} results)"),
         proc.shell(["python", "-m", "kvattn_fairseq.run.report", results_dir, "--out", tables_md] +
                    (["--bench", args.bench] if args.bench else [])))
    return tables_md


def build_parser() -> ArgumentParser:
    import argparse

    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       passthrough=True)
    p.add_argument("table", choices=list(TABLES))
    p.add_argument("--work", required=True, help="data, checkpoints, logs, results and the table go here")
    p.add_argument("--raw", help="already-downloaded files for the prepare step (offline)")
    p.add_argument("--tiny", action="store_true", help="fixtures and tiny models: a CPU check of the whole chain")
    p.add_argument("--rows", help="comma-separated subset of the table's rows")
    p.add_argument("--kinds", help="extra rows: the last row's recipe with each of these kinds everywhere it fits")
    p.add_argument("--bench", help="benchmark results.json for the speed and memory columns")
    p.add_argument("--drop", action="append", default=[], metavar="FLAG",
                   help="remove a recipe flag for every row, e.g. --drop fp16 on hardware without fp16; repeatable")
    p.add_argument("--force", action="store_true", help="redo the steps whose recorded settings differ from this "
                   "command's (without it such a rerun is refused); only what the tool made is removed")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    own, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    args.extra = extra

    def body() -> int:
        try:
            log(f"wrote {run(args)}")
        except StepFailed as e:
            raise StepFailed(f"{e}; fix it and rerun the same command to resume", e.exit_code) from None
        return 0

    return run_main(PROG, body, interrupted="interrupted: rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
