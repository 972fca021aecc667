"""Regenerate a paper's table end to end: prepare the data, train every row, evaluate it, write the table.

    python -m kvattn_fairseq.paper_tables TABLE --work DIR [--raw DIR] [--tiny] [--rows R1,R2] [--kinds K1,K2]
        [--bench results.json] [--drop FLAG]... [-- extra fairseq-train flags]

TABLE is a table of kvattn_fairseq/papers (--help lists them).  The data is prepared, each row evaluated and the
Markdown written in this process (the same functions as scripts/prepare-*.sh, `python -m kvattn_fairseq.synthetic`,
`python -m kvattn_fairseq.evaluate` and scripts/make_tables.py); each row is trained by the real fairseq-train (the
command `python -m kvattn_fairseq.experiments train` prints).  Each step is announced before it runs, its output
logged under DIR/logs, the tables in DIR/tables.md.  A rerun resumes: prepared data and finished evaluations are
skipped and training continues from checkpoint_last.pt.  --tiny runs the whole chain on the bundled fixtures with
tiny models (CPU, minutes): a check that the pipeline works, not a result.
"""
import fnmatch
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

from .. import data
from ..papers import TABLES, Row, Table
from ..util import proc
from ..util.cli import ArgumentParser, run_main, split_passthrough
from ..util.errors import OneLineError, StepFailed
from ..util.io import write_atomic
from . import report, train as recipes

PROG = "python -m kvattn_fairseq.paper_tables"
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


def prepare(key: str, work: str, raw: Optional[str], tiny: bool) -> str:
    """The prepared data directory for a dataset key (wmt16, cnndm, wikitext103, synthetic-<task>[-len<L>]: sequences
    of length L instead of the default)."""
    out = os.path.join(work, "data", key)
    logs = os.path.join(work, "logs")
    if key.startswith("synthetic-"):
        if os.path.isfile(os.path.join(out, "synthetic.json")):
            log(f"data {key}: already prepared, skipped")
            return out
        from ..data import synthetic

        task, _, length = key.split("-", 1)[1].partition("-len")
        sizes = dict(TINY_SYNTHETIC) if tiny else dict(min_len=int(length), max_len=int(length)) if length else {}
        argv = ["--task", task, "--out", out] + [f"--{k.replace('_', '-')}={v}" for k, v in sizes.items()]
        step(f"data {key}", os.path.join(logs, f"prepare-{key}.log"),
             lambda: synthetic.generate(out, task, **sizes),
             proc.shell(["python", "-m", "kvattn_fairseq.synthetic", *argv]))
        return out
    if os.path.isfile(os.path.join(out, "prepare.json")):
        log(f"data {key}: already prepared, skipped")
        return out
    if tiny and not raw:
        raw = os.path.join(work, "fixtures", key)
        if not os.path.isdir(raw):
            from ..data import fixtures

            step(f"fixtures {key}", os.path.join(logs, f"fixtures-{key}.log"),
                 lambda: fixtures.WRITERS[key](raw), proc.shell(["python", "-m", "kvattn_fairseq.data.fixtures", key,
                                                                 raw]))
    argv = ["--out", out] + (["--raw", raw] if raw else []) + (["--tiny"] if tiny else [])
    step(f"data {key}", os.path.join(logs, f"prepare-{key}.log"), lambda: data.prepare(key, argv),
         proc.shell(["python", "-m", f"kvattn_fairseq.data.{key}", *argv]))
    return out


def train(row: Row, table: Table, data_dir: str, work: str, tiny: bool, extra: Sequence[str],
          drop: Sequence[str]) -> str:
    save = os.path.join(work, "runs", table.name, row.name)
    if os.path.isfile(os.path.join(save, "train.done")):
        log(f"train {row.name}: finished earlier, skipped")
        return save
    data_bin = os.path.join(data_dir, "data-bin")
    recipes.check_data(row.recipe, data_bin, [*row.flags, *extra])
    command = recipes.build_command(row.recipe, data_bin, save, row.kind, tiny, [*row.flags, *extra], drop)
    label = f"train {row.name}"
    for note in command.notes:
        log(f"{label}: # {note}")
    log(f"{label}: {command.shell()}")
    start = time.time()
    proc.run(command.argv, os.path.join(work, "logs", f"train-{table.name}-{row.name}.log"), label=label,
             append=True, keep_output=False)
    log(f"{label}: done in {time.time() - start:.0f}s")
    write_atomic(os.path.join(save, "train.done"), "")
    return save


def evaluate(row: Row, table: Table, data_dir: str, save: str, work: str, tiny: bool) -> None:
    from ..evaluate import __main__ as evaluator

    out = os.path.join(work, "results", table.name, f"{row.name}.json")
    if os.path.isfile(out):
        log(f"evaluate {row.name}: {out} exists, skipped")
        return
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
    for row in rows:  # every command is checked before anything runs
        recipes.train_args(row.recipe, kind=row.kind, tiny=args.tiny, extra=[*row.flags, *args.extra],
                           drop=args.drop)
    import kvattn_fairseq

    if args.tiny:  # tiny models gain nothing from intra-op threads, and lose a lot to them on a busy CPU
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = os.path.abspath(args.work)
    log(f"table {table.name}: {len(rows)} row(s) ({', '.join(r.name for r in rows)}) in {work}")
    log(f"plugin: {kvattn_fairseq.USER_DIR}")
    data_dirs: Dict[str, str] = {}
    for i, row in enumerate(rows, 1):
        log(f"row {i}/{len(rows)}: {row.name}")
        key = table.data_of(row)
        if key not in data_dirs:
            data_dirs[key] = prepare(key, work, args.raw, args.tiny)
        save = train(row, table, data_dirs[key], work, args.tiny, args.extra, args.drop)
        evaluate(row, table, data_dirs[key], save, work, args.tiny)
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
