"""Regenerate a paper's table end to end: prepare the data, train every row, evaluate it, write the table.

    python -m kvattn_fairseq paper-tables TABLE --work DIR [--raw DIR] [--tiny] [--rows R1,R2] [--kinds K1,K2]
        [--bench results.json] [--drop FLAG]... [-- extra fairseq-train flags]

TABLE is a table of kvattn_fairseq/papers (--help lists them).  The data is prepared, each row evaluated and the
Markdown written in this process (the same functions as scripts/prepare-*.sh, `python -m kvattn_fairseq synthetic`,
`python -m kvattn_fairseq evaluate` and scripts/make_tables.py); each row is trained by the real fairseq-train (the
command `python -m kvattn_fairseq experiments train` prints).  Each step is announced before it runs, its output
logged under DIR/logs, the tables in DIR/tables.md.  A rerun resumes: prepared data and finished evaluations are
skipped and training continues from checkpoint_last.pt.  --tiny runs the whole chain on the bundled fixtures with
tiny models (CPU, minutes): a check that the pipeline works, not a result; tables.md marks its rows "(tiny)".

The steps run on the experiment spine (run/spine.py): each records the settings it was made with in
DIR/steps/; a rerun with other settings (--tiny or not, other flags or sizes) is refused in one line unless --force
is given, which redoes those steps (and the evaluations of retrained rows), removing only what the tool made.  One
run at a time per DIR: a second is refused, naming the first one's process.
"""
import fnmatch
import os
import sys
from typing import List, Optional, Sequence

from ...papers import TABLES, Row, Table
from ...util.cli import ArgumentParser, run_main, split_passthrough
from ...util.errors import OneLineError, StepFailed
from .. import report, train as recipes
from ..spine import Context, Runner, Step, in_process, work_dir
from ..steps import data_step, evaluate_step, train_step

PROG = "python -m kvattn_fairseq paper-tables"


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
        from ...modules.registry import ATTENTION_KINDS

        base = table.rows[-1]
        for kind in [k.strip() for k in kinds.split(",") if k.strip()]:
            if kind not in ATTENTION_KINDS:
                raise OneLineError(f"--kinds: unknown attention kind {kind!r} (choose from "
                                   f"{', '.join(sorted(ATTENTION_KINDS))})")
            if all(r.name != kind for r in chosen):
                chosen.append(Row(kind, kind, base.recipe, {}, kind=kind, data=base.data))
    return chosen


def row_train_step(row: Row, table: Table, work: str, tiny: bool, extra: Sequence[str], drop: Sequence[str]) -> Step:
    key = table.data_of(row)
    data_bin = os.path.join(work, "data", key, "data-bin")
    out = os.path.join("runs", table.name, row.name)
    arch, flags, _ = recipes.train_args(row.recipe, row.kind, tiny, [*row.flags, *extra], drop)
    command = recipes.build_command(row.recipe, data_bin, os.path.join(work, out), row.kind, tiny,
                                    [*row.flags, *extra], drop)
    settings = {"experiment": row.recipe, "kind": row.kind, "tiny": tiny, "arch": arch, "flags": flags,
                "data": os.path.relpath(data_bin, work)}
    return train_step(f"train/{row.name}", out, command, settings, needs=(f"data/{key}",),
                      check_data=lambda d: recipes.check_data(row.recipe, os.path.join(d, "data-bin"),
                                                              [*row.flags, *extra]),
                      data_step_name=f"data/{key}")


def steps(table: Table, rows: Sequence[Row], work: str, *, raw: Optional[str] = None, tiny: bool = False,
          extra: Sequence[str] = (), drop: Sequence[str] = (), bench: Optional[str] = None) -> List[Step]:
    """Data (once per data set), then per row its training and its evaluation, then the tables."""
    out: List[Step] = []
    data = {key: data_step(key, raw=raw, tiny=tiny) for key in dict.fromkeys(table.data_of(row) for row in rows)}
    out += data.values()
    options = table.tiny_evaluation if tiny else table.evaluation
    for row in rows:
        train = row_train_step(row, table, work, tiny, extra, drop)
        out.append(train)
        out.append(evaluate_step(f"evaluate/{row.name}", os.path.join("results", table.name, f"{row.name}.json"),
                                 table.evaluate, data=data[table.data_of(row)], train=train,
                                 checkpoint=table.checkpoint, options=options, label=row.name, table=table.name))

    def draw(ctx: Context) -> None:
        print(f"wrote {ctx.out} ({report.write_tables(os.path.join(ctx.work, 'results'), ctx.out, bench)} results)")

    by_hand = "python -m kvattn_fairseq make-tables results --out tables.md" + (f" --bench {bench}" if bench else "")
    # every table run in this work directory so far: drawn at every run
    out.append(Step("tables", "tables.md", {"bench": bench}, in_process(draw, "tables"),
                    needs=tuple(s.name for s in out if s.name.startswith("evaluate/")), command=by_hand, always=True))
    return out


def run(args) -> str:
    table = TABLES[args.table]
    rows = select_rows(table, args.rows, args.kinds)
    if args.raw and not os.path.isdir(args.raw):
        raise OneLineError(f"--raw: {args.raw} is not a directory")
    if args.bench:
        report.load_bench(args.bench)  # a bad file is refused before any work
    work = work_dir(args.work, "--work")
    if args.tiny:  # tiny models gain nothing from intra-op threads, and lose a lot to them on a busy CPU
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    runner = Runner("paper_tables", work, force=args.force)
    outputs = runner.run(steps(table, rows, work, raw=args.raw, tiny=args.tiny, extra=args.extra, drop=args.drop,
                               bench=args.bench),
                         title=f"table {table.name}: {len(rows)} row(s) ({', '.join(r.name for r in rows)})")
    return outputs["tables"]


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
            print(f"[paper_tables] wrote {run(args)}", flush=True)
        except StepFailed as e:
            raise StepFailed(f"{e}; fix it and rerun the same command to resume", e.exit_code) from None
        return 0

    return run_main(PROG, body, interrupted="interrupted: rerun the same command to resume")
