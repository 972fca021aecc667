"""Markdown tables laid out like the papers', from a directory of evaluation results.

    python scripts/make_tables.py RESULTS_DIR [--out tables.md] [--bench bench_out/results.json]

RESULTS_DIR is searched recursively for the results JSONs written by `python -m kvattn_fairseq.evaluate`; other
JSON files are ignored.  Every table of kvattn_fairseq/papers is drawn, in order, by its paper file: the paper's
rows always (a cell with no result reads "not run"), then any other configuration found.  With --bench, the
MemSizer MT table gets speed and memory columns from a `python -m kvattn_fairseq.bench` results file.
"""
import json
import os
import sys
from collections import defaultdict
from typing import Callable, Dict, List, Optional

from ..evaluate import results as R
from ..papers import TABLES
from ..papers.markdown import NOT_RUN, TINY
from ..util.cli import ArgumentParser, run_main
from ..util.errors import OneLineError
from ..util.io import check_output_file, write_atomic


def find_results(root: str, warn: Optional[Callable[[str], None]] = None) -> List[Dict]:
    """Every evaluation results file under `root` (recursively); other JSON files are ignored."""
    if not os.path.isdir(root):
        raise OneLineError(f"RESULTS_DIR {root}: no such directory")
    found = []
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(directory, name)
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                if warn:
                    warn(f"skipping {path}: not readable JSON ({e})")
                continue
            if not R.is_results(data):
                continue
            R.validate(data, path)
            data["_path"] = os.path.relpath(path, root)
            found.append(data)
    return found


def load_bench(path: str) -> Dict:
    try:
        with open(path, encoding="utf-8") as f:
            bench = json.load(f)
    except OSError as e:
        raise OneLineError(f"--bench {path}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise OneLineError(f"--bench {path}: not valid JSON ({e.msg})") from None
    if not isinstance(bench, dict) or "kinds" not in bench or "machine" not in bench:
        raise OneLineError(f"--bench {path}: not a results.json of python -m kvattn_fairseq.bench")
    return bench


def render(results: List[Dict], bench: Optional[Dict] = None) -> str:
    by_table = defaultdict(list)
    for r in results:
        by_table[r["table"]].append(r)
    lines = [f"# Results ({len(results)} evaluation{'s' if len(results) != 1 else ''}; "
             f"\"{NOT_RUN}\" marks a cell with no result)", ""]
    for table in TABLES.values():
        lines += [f"## {table.title}", ""] + table.draw(table, by_table[table.name], bench) + [""]
        tiny = sorted(r["name"] for r in by_table[table.name] if R.is_tiny(r))
        if tiny:
            lines += [f"{TINY.strip()}: {len(tiny)} result(s) of this table come from `--tiny` runs (tiny models on "
                      f"fixtures: a check of the pipeline, not a result): {', '.join(tiny[:10])}"
                      f"{' ...' if len(tiny) > 10 else ''}", ""]
    return "\n".join(lines)


def write_tables(results_dir: str, out: str, bench_path: Optional[str] = None, warn=None) -> int:
    """Render every table from the results under `results_dir` into `out`; returns the number of results."""
    bench = load_bench(bench_path) if bench_path else None
    results = find_results(results_dir, warn)
    write_atomic(out, render(results, bench))
    return len(results)


def main(argv=None, prog: str = "make_tables.py") -> int:
    p = ArgumentParser(prog=prog, description="Markdown tables, laid out like the papers', from evaluation results "
                                              "JSONs (python -m kvattn_fairseq.evaluate) found recursively under "
                                              "RESULTS_DIR.")
    p.add_argument("results_dir", metavar="RESULTS_DIR")
    p.add_argument("--out", help="write the tables here (default: print them)")
    p.add_argument("--bench", metavar="FILE",
                   help="results.json of python -m kvattn_fairseq.bench: adds speed and memory columns to the MT table")
    a = p.parse_args(argv)

    def warn(msg: str) -> None:
        print(f"{prog}: warning: {msg}", file=sys.stderr)

    def body() -> int:
        if a.out:
            check_output_file(a.out, "--out")
            n = write_tables(a.results_dir, a.out, a.bench, warn)
            print(f"wrote {a.out} ({n} results)")
        else:
            bench = load_bench(a.bench) if a.bench else None
            sys.stdout.write(render(find_results(a.results_dir, warn), bench))
        return 0

    return run_main(prog, body)


if __name__ == "__main__":
    sys.exit(main(prog="python -m kvattn_fairseq.run.report"))
