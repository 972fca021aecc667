"""The pieces the paper files draw their Markdown tables with: cells, rows matched to results, benchmark columns.

A result (the JSON `python -m kvattn_fairseq.evaluate` writes) lands in a row when its attention kind at each of
the table's positions is the row's (and its decoder head count and kind options, where the row names them; of
several such rows, the one naming most options).  Rows are always listed, "not run" where no result matches;
results matching no row follow under their own layout.
"""
from collections import defaultdict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..util.markdown import table as markdown  # noqa: F401  (the paper files draw with md.markdown)
from .spec import Row, Table

NOT_RUN = "not run"
NONE = "—"


def num(v, spec: str = ".2f") -> str:
    return NOT_RUN if v is None else format(v, spec)


def layout(attention: Mapping[str, str], positions: Sequence[str]) -> str:
    return " / ".join(attention.get(p, "-") for p in positions)


def params(r: Optional[Dict]) -> str:
    p = (r or {}).get("model", {}).get("parameters")
    return NOT_RUN if not p else f"{p / 1e6:.1f}M"


def run_cell(r: Optional[Dict]) -> str:
    return NONE if r is None else f"{r['name']} (`{r['_path']}`)"


def heads(r: Dict) -> Optional[int]:
    return (r["model"].get("heads") or {}).get("decoder")


def matches(row: Row, r: Dict, positions: Sequence[str]) -> bool:
    att, options = r["model"]["attention"], r["model"].get("options") or {}
    return all(att.get(p) == row.attention.get(p) for p in positions) and \
        (row.heads is None or heads(r) == row.heads) and \
        all(str(options.get(k)) == str(v) for k, v in row.options.items())


def row_of(table: Table, r: Dict) -> Optional[Row]:
    """The table's row a result lands in: of the rows it matches, the first that names most options."""
    found = [row for row in table.rows if matches(row, r, table.positions())]
    return max(found, key=lambda row: len(row.options)) if found else None


TINY = " (tiny)"  # a --tiny run's label: a check of the pipeline on fixtures, not a result


def tiny(r: Optional[Dict]) -> str:
    return TINY if ((((r or {}).get("training") or {}).get("settings")) or {}).get("tiny") else ""


def label_runs(label: str, runs: List[Dict]) -> List[Tuple[str, Optional[Dict]]]:
    """One line per run; runs sharing a row are told apart by their names; a --tiny run says so."""
    if not runs:
        return [(label, None)]
    runs = sorted(runs, key=lambda r: (r["name"], r["_path"]))
    if len(runs) == 1:
        return [(label + tiny(runs[0]), runs[0])]
    return [(f"{label} [{r['name']}]{tiny(r)}", r) for r in runs]


def rows_and_runs(table: Table, results: List[Dict]) -> List[Tuple[str, Optional[Row], Mapping[str, str],
                                                                   Optional[Dict]]]:
    """(line label, the table's row or None, attention layout, result or None): the table's rows in order, then
    results matching none of them, grouped by layout (and heads, where the rows name heads)."""
    positions = table.positions()
    by_heads = any(row.heads is not None for row in table.rows)
    out, used = [], set()
    homes = {id(r): row_of(table, r) for r in results}
    for row in table.rows:
        runs = [r for r in results if homes[id(r)] is row]
        used.update(id(r) for r in runs)
        out += [(label, row, row.attention, r) for label, r in label_runs(row.label, runs)]
    others = defaultdict(list)
    for r in results:
        if id(r) not in used:
            key = layout(r["model"]["attention"], positions) + (f", {heads(r)} heads" if by_heads else "")
            others[key].append(r)
    for key in sorted(others):
        out += [(label, None, r["model"]["attention"], r) for label, r in label_runs(key, others[key])]
    return out


# --- speed and memory columns from a benchmark results file (python -m kvattn_fairseq.bench) ------------------------
def human_bytes(v: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:,.0f} {unit}" if unit == "B" else f"{v:,.1f} {unit}"
        v /= 1024
    return str(v)


def bench_columns(bench: Dict):
    """(header cells, cells(kind) -> the row's cells, a note naming the benchmark run); kind "vanilla" is fairseq's
    own transformer, the benchmark's baseline."""
    summary = {row["kind"]: row for row in bench.get("summary") or []}
    configs = (bench.get("decode") or {}).get("configs") or []
    main = configs[0] if configs else {}
    t_last = None
    if main:
        ts = sorted(int(t) for t in (main["models"].get("vanilla", {}).get("step_ms") or {}))
        t_last = ts[-1] if ts else None
    train_t = None
    for row in summary.values():
        train_t = train_t or row.get("train_T_last")
    tr = (bench.get("translate") or {}).get("models") or {}
    header = ["translation tokens/s (x vanilla)", f"decode step speed t={t_last or '?'} (x vanilla)",
              f"decoding state per hypothesis t={t_last or '?'}", f"train peak memory T={train_t or '?'} (x vanilla)"]

    def state_bytes(kind):
        per_t = (main.get("models", {}).get(kind) or {}).get("state_bytes_per_hypothesis") or {}
        v = per_t.get(str(t_last), per_t.get(t_last)) if t_last is not None else None
        return NOT_RUN if v is None else human_bytes(v)

    def cells(kind):
        if kind == "vanilla":
            tps = (tr.get("vanilla") or {}).get("tokens_per_s")
            return [NOT_RUN if tps is None else f"{tps:,.0f} (1.00x)", "1.00x" if main else NOT_RUN,
                    state_bytes("vanilla"), "1.00x" if train_t else NOT_RUN]
        row = summary.get(kind)
        if row is None:
            return [NOT_RUN] * 4
        tps = (tr.get(kind) or {}).get("tokens_per_s")
        ratio = row.get("translate_tokens_ratio")
        speed = NOT_RUN if tps is None or ratio is None else f"{tps:,.0f} ({ratio:.2f}x)"
        dec, mem = row.get("decode_speedup_last"), row.get("train_memory_last")
        return [speed, NOT_RUN if dec is None else f"{dec:.2f}x", state_bytes(kind),
                NOT_RUN if mem is None else f"{mem:.2f}x"]

    m = bench.get("machine", {})
    note = (f"Speed and memory: `python -m kvattn_fairseq.bench --mode {bench.get('mode', '?')}` on "
            f"{m.get('device', '?')} ({m.get('gpu') or m.get('processor', '?')}), model sizes of the benchmark, "
            f"not of the trained checkpoints; the kind is the decoder's (self and, where it can sit there, cross "
            f"attention), vanilla is fairseq's own transformer.")
    return header, cells, note
