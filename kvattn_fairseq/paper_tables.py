"""Regenerate a paper's table end to end: prepare the data, train every row, evaluate it, write the table.

    python -m kvattn_fairseq.paper_tables TABLE --work DIR [--raw DIR] [--tiny] [--rows R1,R2] [--kinds K1,K2]
        [--bench results.json] [--drop FLAG]... [-- extra fairseq-train flags]

TABLE is one of memsizer_mt, memsizer_summarization, memsizer_lm, mgk_lm, kv_synthetic.  Each step is one real
command (scripts/prepare-*.sh, `python -m kvattn_fairseq.synthetic`, `python -m kvattn_fairseq.experiments train`,
`python -m kvattn_fairseq.evaluate`, scripts/make_tables.py), printed before it runs, its output logged under
DIR/logs, the tables in DIR/tables.md.  A rerun resumes: prepared data and finished evaluations are skipped and training continues from
checkpoint_last.pt.  --tiny runs the whole chain on the bundled fixtures with tiny models (CPU, minutes): a check
that the pipeline works, not a result.
"""
import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from . import experiments

REPO_SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
KV_TASKS = ("reverse", "sort", "copy", "swap", "sub")
KV_KINDS = ("softmax", "kv_asym", "kv")
MGK_ROWS = ("softmax8", "mgk4", "smgk4", "mgk8", "smgk8", "linear8", "mlk4", "mlk8")


class TableError(Exception):
    """Bad input: one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Row:
    name: str                 # the run's directory and results file name
    experiment: str           # kvattn_fairseq.experiments name
    kind: Optional[str]       # --kind override (None: the architecture's own layout)
    data: str                 # a key of DATASETS, or "synthetic-<task>"


@dataclasses.dataclass(frozen=True)
class Table:
    rows: Tuple[Row, ...]
    evaluate: str             # kvattn_fairseq.evaluate subcommand
    eval_flags: Tuple[str, ...] = ()
    tiny_eval_flags: Tuple[str, ...] = ()
    checkpoint: str = "checkpoint_best.pt"


# Each prepare script takes --out, --raw and --tiny; fixtures (the real formats, a few hundred lines) come from
# `python -m kvattn_fairseq.data.fixtures NAME DIR`.
DATASETS = {"wmt16": "prepare-wmt16-en-de.sh", "cnndm": "prepare-cnndm.sh", "wikitext103": "prepare-wikitext103.sh"}

TABLES: Dict[str, Table] = {
    # The released MT recipe selects checkpoint_best by validation BLEU, no averaging (research/memsizer.md §3.1).
    "memsizer_mt": Table(
        rows=(Row("transformer", "memsizer_wmt16_en_de", "softmax", "wmt16"),
              Row("memsizer", "memsizer_wmt16_en_de", None, "wmt16")),
        evaluate="wmt"),
    "memsizer_summarization": Table(
        rows=(Row("transformer", "memsizer_cnn_dm", "softmax", "cnndm"),
              Row("memsizer", "memsizer_cnn_dm", None, "cnndm")),
        evaluate="cnndm", tiny_eval_flags=("--min-len", "1", "--max-len-b", "20")),
    # The paper's LM evaluation window was not found: [ours] the model's 512-token window, 384 of them context.
    "memsizer_lm": Table(
        rows=(Row("transformer", "memsizer_wikitext103", "softmax", "wikitext103"),
              Row("memsizer", "memsizer_wikitext103", None, "wikitext103")),
        evaluate="lm", eval_flags=("--tokens-per-sample", "512", "--context-window", "384"),
        tiny_eval_flags=("--tokens-per-sample", "64", "--context-window", "32")),
    # The MGK code evaluates 256-token blocks without memory (mem_len 0): no context window.
    "mgk_lm": Table(
        rows=tuple(Row(r, f"mgk_wikitext103_{r}", None, "wikitext103") for r in MGK_ROWS),
        evaluate="lm", eval_flags=("--tokens-per-sample", "256", "--context-window", "0"),
        tiny_eval_flags=("--tokens-per-sample", "64", "--context-window", "0")),
    "kv_synthetic": Table(
        rows=tuple(Row(f"{t}-{k}", f"kv_synthetic_{t}", k, f"synthetic-{t}") for t in KV_TASKS for k in KV_KINDS),
        evaluate="synthetic"),
}
TINY_SYNTHETIC = ("--train", "300", "--valid", "30", "--test", "30", "--min-len", "8", "--max-len", "8")


def log(msg: str) -> None:
    print(f"[paper_tables] {msg}", flush=True)


def run_step(label: str, cmd: Sequence[str], log_path: str, env: Dict[str, str]) -> None:
    """One real command, printed first, its output kept in log_path; a failure stops with a one-line pointer."""
    log(f"{label}: {' '.join(shlex.quote(c) for c in cmd)}")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.time()
    with open(log_path, "a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}\n")
        out.flush()
        code = subprocess.call(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = [line.strip() for line in f if line.strip()][-1:]
        raise RuntimeError(f"{label} failed (exit {code}): {tail[0] if tail else ''} -- full log: {log_path}; "
                           f"fix it and rerun the same command to resume")
    log(f"{label}: done in {time.time() - start:.0f}s")


def select_rows(table: Table, rows: Optional[str], kinds: Optional[str], name: str) -> List[Row]:
    chosen = list(table.rows)
    if rows:
        wanted = [r.strip() for r in rows.split(",") if r.strip()]
        known = {r.name for r in table.rows}
        unknown = [r for r in wanted if r not in known]
        if unknown:
            raise TableError(f"--rows: {', '.join(unknown)} not in table {name} (rows: {', '.join(sorted(known))})")
        chosen = [r for r in table.rows if r.name in wanted]
    if kinds:
        if name in ("mgk_lm", "kv_synthetic"):
            raise TableError(f"--kinds: table {name} fixes its rows' kinds; use --rows, or train other kinds with "
                             f"scripts/train.sh")
        from .modules.registry import ATTENTION_KINDS

        base = table.rows[-1]
        for kind in [k.strip() for k in kinds.split(",") if k.strip()]:
            if kind not in ATTENTION_KINDS:
                raise TableError(f"--kinds: unknown attention kind {kind!r} (choose from "
                                 f"{', '.join(sorted(ATTENTION_KINDS))})")
            if all(r.name != kind for r in chosen):
                chosen.append(Row(kind, base.experiment, kind, base.data))
    return chosen


def prepare(data: str, work: str, raw: Optional[str], tiny: bool, env: Dict[str, str]) -> str:
    out = os.path.join(work, "data", data)
    if data.startswith("synthetic-"):
        if os.path.isfile(os.path.join(out, "synthetic.json")):
            log(f"data {data}: already prepared, skipped")
            return out
        cmd = [sys.executable, "-m", "kvattn_fairseq.synthetic", "--task", data.split("-", 1)[1], "--out", out]
        run_step(f"data {data}", cmd + (list(TINY_SYNTHETIC) if tiny else []),
                 os.path.join(work, "logs", f"prepare-{data}.log"), env)
        return out
    if os.path.isfile(os.path.join(out, "prepare.json")):
        log(f"data {data}: already prepared, skipped")
        return out
    cmd = [os.path.join(REPO_SCRIPTS, DATASETS[data]), "--out", out]
    if tiny and not raw:
        raw = os.path.join(work, "fixtures", data)
        if not os.path.isdir(raw):
            run_step(f"fixtures {data}", [sys.executable, "-m", "kvattn_fairseq.data.fixtures", data, raw],
                     os.path.join(work, "logs", f"fixtures-{data}.log"), env)
    if raw:
        cmd += ["--raw", raw]
    if tiny:
        cmd += ["--tiny"]
    run_step(f"data {data}", cmd, os.path.join(work, "logs", f"prepare-{data}.log"), env)
    return out


def train(row: Row, table: str, data_dir: str, work: str, tiny: bool, extra: Sequence[str], drop: Sequence[str],
          env) -> str:
    save = os.path.join(work, "runs", table, row.name)
    if os.path.isfile(os.path.join(save, "train.done")):
        log(f"train {row.name}: finished earlier, skipped")
        return save
    cmd = [sys.executable, "-m", "kvattn_fairseq.experiments", "train", row.experiment,
           os.path.join(data_dir, "data-bin"), save]
    cmd += (["--kind", row.kind] if row.kind else []) + (["--tiny"] if tiny else [])
    cmd += [f"--drop={flag}" for flag in drop]
    cmd += (["--"] + list(extra)) if extra else []
    run_step(f"train {row.name}", cmd, os.path.join(work, "logs", f"train-{table}-{row.name}.log"), env)
    open(os.path.join(save, "train.done"), "w").close()
    return save


def evaluate(row: Row, spec: Table, table: str, data_dir: str, save: str, work: str, tiny: bool, env) -> None:
    out = os.path.join(work, "results", table, f"{row.name}.json")
    if os.path.isfile(out):
        log(f"evaluate {row.name}: {out} exists, skipped")
        return
    cmd = [sys.executable, "-m", "kvattn_fairseq.evaluate", spec.evaluate, "--data", data_dir, "--checkpoint",
           os.path.join(save, spec.checkpoint), "--out", out, "--name", row.name, "--table", table]
    cmd += list(spec.tiny_eval_flags if tiny else spec.eval_flags)
    run_step(f"evaluate {row.name}", cmd, os.path.join(work, "logs", f"evaluate-{table}-{row.name}.log"), env)


def run(args) -> str:
    spec = TABLES[args.table]
    rows = select_rows(spec, args.rows, args.kinds, args.table)
    if args.raw and not os.path.isdir(args.raw):
        raise TableError(f"--raw: {args.raw} is not a directory")
    if args.bench and not os.path.isfile(args.bench):
        raise TableError(f"--bench: {args.bench} does not exist (python -m kvattn_fairseq.bench writes it)")
    for row in rows:  # every command is checked by the experiments table before anything runs
        try:
            experiments.train_args(row.experiment, kind=row.kind, tiny=args.tiny, extra=args.extra, drop=args.drop)
        except experiments.ExperimentError as e:
            raise TableError(str(e)) from None
    work = os.path.abspath(args.work)
    env = dict(os.environ, PYTHON=sys.executable, PYTHONWARNINGS=os.environ.get("PYTHONWARNINGS", "ignore"))
    log(f"table {args.table}: {len(rows)} row(s) ({', '.join(r.name for r in rows)}) in {work}")
    data_dirs = {}
    for i, row in enumerate(rows, 1):
        log(f"row {i}/{len(rows)}: {row.name}")
        if row.data not in data_dirs:
            data_dirs[row.data] = prepare(row.data, work, args.raw, args.tiny, env)
        save = train(row, args.table, data_dirs[row.data], work, args.tiny, args.extra, args.drop, env)
        evaluate(row, spec, args.table, data_dirs[row.data], save, work, args.tiny, env)
    tables_md = os.path.join(work, "tables.md")  # every table run in this work directory so far
    cmd = [sys.executable, os.path.join(REPO_SCRIPTS, "make_tables.py"), os.path.join(work, "results"),
           "--out", tables_md] + (["--bench", args.bench] if args.bench else [])
    run_step("table", cmd, os.path.join(work, "logs", f"table-{args.table}.log"), env)
    return tables_md


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kvattn_fairseq.paper_tables", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", choices=sorted(TABLES))
    p.add_argument("--work", required=True, help="data, checkpoints, logs, results and the table go here")
    p.add_argument("--raw", help="already-downloaded files for the prepare script (offline)")
    p.add_argument("--tiny", action="store_true", help="fixtures and tiny models: a CPU check of the whole chain")
    p.add_argument("--rows", help="comma-separated subset of the table's rows")
    p.add_argument("--kinds", help="extra rows: the last row's experiment with each of these kinds everywhere it fits")
    p.add_argument("--bench", help="benchmark results.json for the speed and memory columns")
    p.add_argument("--drop", action="append", default=[], metavar="FLAG",
                   help="remove a recipe flag for every row, e.g. --drop fp16 on hardware without fp16; repeatable")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    args = build_parser().parse_args(argv)
    args.extra = extra
    try:
        path = run(args)
    except TableError as e:
        print(f"python -m kvattn_fairseq.paper_tables: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"python -m kvattn_fairseq.paper_tables: error: {e}", file=sys.stderr)
        return 1
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
