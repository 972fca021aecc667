"""Markdown tables laid out like the papers' tables, from a directory of evaluation results (scripts/make_tables.py).

Each table lists the paper's rows always (a cell nobody ran says "not run"), then any other configuration found.
A result belongs to a table by its "table" field and to a row by its attention kinds (and heads, for MGK).
"""
import json
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

from . import results as R

NOT_RUN = "not run"

# MemSizer (Zhang & Cai, EMNLP 2022): rows by attention kind per position (encoder self, decoder self, cross).
MEMSIZER_MT_ROWS = [
    ("Transformer", {"encoder": "softmax", "decoder": "softmax", "cross": "softmax"}),
    ("MemSizer", {"encoder": "softmax", "decoder": "memsizer", "cross": "memsizer"}),
]
MEMSIZER_LM_ROWS = [
    ("Transformer", {"decoder": "softmax"}),
    ("MemSizer", {"decoder": "memsizer"}),
]
# Transformer-MGK (Nguyen et al., ICML 2022), WikiText-103 Table 3 (research/variants.md §2.6, OpenReview text):
# (label, decoder kind, heads, paper valid ppl, paper test ppl)
MGK_LM_ROWS = [
    ("Softmax 8 heads", "softmax", 8, 33.15, 34.29),
    ("MGK 4 heads", "mgk", 4, 33.28, 34.21),
    ("sMGK 8 heads", "smgk", 8, 32.92, 33.99),
    ("MGK 8 heads", "mgk", 8, 32.74, 33.93),
    ("Linear 8 heads", "linear", 8, 38.07, 39.08),
    ("MLK 4 heads", "mlk", 4, 38.49, 39.46),
    ("MLK 8 heads", "mlk", 8, 37.78, 38.99),
]
# Key-Value Transformer (Borji, 2023): tasks as rows, attention kinds as columns.
KV_TASKS = ["reverse", "sort", "copy", "swap", "sub"]
KV_COLUMNS = [("QKV (softmax)", "softmax"), ("KV + 2D pos (kv_asym)", "kv_asym"), ("KV symmetric (kv)", "kv")]
# The reference notebooks' grand averages (plot.ipynb; encoder-only per-position classification, a different
# setup): task -> (QKV, KV + pos, KV symmetric)
KV_NOTEBOOK = {"reverse": (0.6978, 0.7181, 0.7046), "sort": (0.9708, 0.9628, 0.9664), "copy": (1.0, 1.0, 1.0),
               "swap": (0.588, 0.6711, 0.5974), "sub": (1.0, 1.0, 1.0)}


class TablesError(Exception):
    """Bad input: one line, exit status 2."""


# --- reading ------------------------------------------------------------------------------------------------------
def find_results(root: str, warn=None) -> List[Dict]:
    """Every evaluation results file under `root` (recursively); other JSON files are ignored."""
    if not os.path.isdir(root):
        raise TablesError(f"RESULTS_DIR {root}: no such directory")
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
            try:
                R.validate(data, path)
            except R.ResultsError as e:
                raise TablesError(str(e)) from None
            data["_path"] = os.path.relpath(path, root)
            found.append(data)
    return found


def load_bench(path: str) -> Dict:
    try:
        with open(path, encoding="utf-8") as f:
            bench = json.load(f)
    except OSError as e:
        raise TablesError(f"--bench {path}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise TablesError(f"--bench {path}: not valid JSON ({e.msg})") from None
    if not isinstance(bench, dict) or "kinds" not in bench or "machine" not in bench:
        raise TablesError(f"--bench {path}: not a results.json of python -m kvattn_fairseq.bench")
    return bench


# --- formatting ---------------------------------------------------------------------------------------------------
def _num(v, spec=".2f") -> str:
    return NOT_RUN if v is None else format(v, spec)


def _pct(v) -> str:
    return NOT_RUN if v is None else f"{100 * v:.1f}"


def _layout(attention: Dict[str, str], positions: Sequence[str]) -> str:
    return " / ".join(attention.get(p, "-") for p in positions)


def _params(r: Optional[Dict]) -> str:
    p = (r or {}).get("model", {}).get("parameters")
    return NOT_RUN if not p else f"{p / 1e6:.1f}M"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _rows_by_layout(res: List[Dict], paper_rows, positions: Sequence[str]) -> List[Tuple[str, Optional[Dict]]]:
    """(label, result or None) for the paper's rows (one line per matching run), then the other layouts found."""
    out, used = [], set()
    for label, layout in paper_rows:
        matches = [r for r in res if {p: r["model"]["attention"].get(p) for p in positions} == layout]
        used.update(id(r) for r in matches)
        out += _label_runs(label, matches)
    others = defaultdict(list)
    for r in res:
        if id(r) not in used:
            others[_layout(r["model"]["attention"], positions)].append(r)
    for layout in sorted(others):
        out += _label_runs(layout, others[layout])
    return out


def _label_runs(label: str, matches: List[Dict]) -> List[Tuple[str, Optional[Dict]]]:
    if not matches:
        return [(label, None)]
    matches = sorted(matches, key=lambda r: (r["name"], r["_path"]))
    if len(matches) == 1:
        return [(label, matches[0])]
    return [(f"{label} [{r['name']}]", r) for r in matches]


def _run(r: Optional[Dict]) -> str:
    return "—" if r is None else f"{r['name']} (`{r['_path']}`)"


# --- the tables ---------------------------------------------------------------------------------------------------
def memsizer_mt(res: List[Dict], bench: Optional[Dict]) -> List[str]:
    positions = ("encoder", "decoder", "cross")
    lines = ["## MemSizer: machine translation (WMT16 En-De, newstest2014)", ""]
    header = ["model", "attention (enc self / dec self / cross)", "sacreBLEU", "tok-BLEU (compound split)", "params"]
    bench_rows, bench_note = _bench_columns(bench)
    if bench:
        header += bench_rows["header"]
    rows = []
    for label, r in _rows_by_layout(res, MEMSIZER_MT_ROWS, positions):
        layout = dict(MEMSIZER_MT_ROWS).get(label) or (r["model"]["attention"] if r else {})
        m = r["metrics"] if r else {}
        row = [label, _layout(layout, positions), _num(m.get("sacrebleu")), _num(m.get("tok_bleu_compound_split")),
               _params(r)]
        if bench:
            kind = "vanilla" if label.startswith("Transformer") and layout.get("decoder") == "softmax" \
                else layout.get("decoder")
            row += bench_rows["cells"](kind)
        rows.append(row + [_run(r)])
    lines += _table(header + ["run"], rows)
    sigs = sorted({r["metrics"].get("sacrebleu_signature", "") for r in res} - {""})
    toks = sorted({r["metrics"].get("tok_bleu_tokenizer", "") for r in res} - {""})
    lines += ["", "sacreBLEU: detokenized, against the raw references" +
              (f"; signature {', '.join(f'`{s}`' for s in sigs)}" if sigs else "") + ".",
              "tok-BLEU (compound split): Moses-tokenized, `##AT##-##AT##` compound splitting, no smoothing "
              "(the AIAYN / tensor2tensor / fairseq Scaling-NMT convention); inflated, secondary, not comparable "
              "with sacreBLEU" + (f"; tokenizer {', '.join(toks)}" if toks else "") + "."]
    if bench_note:
        lines += [bench_note]
    lines += ["MemSizer's published numbers could not be retrieved (research/memsizer.md §4), so there is no paper "
              "column; the rows are the paper's MT layout (softmax encoder, MemSizer decoder) and its baseline."]
    return lines


def _bench_columns(bench: Optional[Dict]):
    if not bench:
        return None, None
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
        return NOT_RUN if v is None else _bytes(v)

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
        dec = row.get("decode_speedup_last")
        mem = row.get("train_memory_last")
        return [speed, NOT_RUN if dec is None else f"{dec:.2f}x", state_bytes(kind),
                NOT_RUN if mem is None else f"{mem:.2f}x"]

    m = bench.get("machine", {})
    note = (f"Speed and memory: `python -m kvattn_fairseq.bench --mode {bench.get('mode', '?')}` on "
            f"{m.get('device', '?')} ({m.get('gpu') or m.get('processor', '?')}), model sizes of the benchmark, "
            f"not of the trained checkpoints; the kind is the decoder's (self and, where it can sit there, cross "
            f"attention), vanilla is fairseq's own transformer.")
    return {"header": header, "cells": cells}, note


def _bytes(v: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:,.0f} {unit}" if unit == "B" else f"{v:,.1f} {unit}"
        v /= 1024
    return str(v)


def memsizer_summarization(res: List[Dict]) -> List[str]:
    positions = ("encoder", "decoder", "cross")
    lines = ["## MemSizer: abstractive summarization (CNN/DailyMail)", ""]
    rows = []
    for label, r in _rows_by_layout(res, MEMSIZER_MT_ROWS, positions):
        layout = dict(MEMSIZER_MT_ROWS).get(label) or (r["model"]["attention"] if r else {})
        m = r["metrics"] if r else {}
        rows.append([label, _layout(layout, positions)] +
                    [_num((m.get(t) or {}).get("f")) for t in ("rouge1", "rouge2", "rougeL", "rougeLsum")] +
                    [_params(r), _run(r)])
    lines += _table(["model", "attention (enc self / dec self / cross)", "R-1", "R-2", "R-L", "R-Lsum", "params",
                     "run"], rows)
    lines += ["", "ROUGE F1 x100 (rouge-score, use_stemmer=True, mean over examples); R-Lsum on newline-separated "
              "sentences. MemSizer's paper did not publish its summarization setup (research/memsizer.md §3.3)."]
    return lines


def _ppl_window(r: Optional[Dict]) -> str:
    if r is None:
        return "—"
    m = r["metrics"]
    return f"{m.get('context_window')} / {m.get('scored_block')}"


def memsizer_lm(res: List[Dict]) -> List[str]:
    lines = ["## MemSizer: language modelling (WikiText-103)", ""]
    rows = []
    for label, r in _rows_by_layout(res, MEMSIZER_LM_ROWS, ("decoder",)):
        m = r["metrics"] if r else {}
        kind = dict(MEMSIZER_LM_ROWS).get(label, {}).get("decoder") or (r["model"]["attention"].get("decoder")
                                                                         if r else "-")
        rows.append([label, kind, _num((m.get("valid") or {}).get("ppl")), _num((m.get("test") or {}).get("ppl")),
                     _ppl_window(r), _params(r), _run(r)])
    lines += _table(["model", "attention", "valid ppl", "test ppl", "context / scored tokens", "params", "run"],
                    rows)
    lines += ["", "Perplexity from fairseq-eval-lm with a sliding context window."]
    return lines


def mgk_lm(res: List[Dict]) -> List[str]:
    lines = ["## Transformer-MGK: language modelling (WikiText-103, Table 3)", ""]
    rows, used = [], set()

    def key(r):
        return r["model"]["attention"].get("decoder"), (r["model"].get("heads") or {}).get("decoder")

    for label, kind, heads, pv, pt in MGK_LM_ROWS:
        matches = [r for r in res if key(r) == (kind, heads)]
        used.update(id(r) for r in matches)
        for lab, r in _label_runs(label, matches):
            m = r["metrics"] if r else {}
            rows.append([lab, _num((m.get("valid") or {}).get("ppl")), _num((m.get("test") or {}).get("ppl")),
                         f"{pv:.2f}", f"{pt:.2f}", _ppl_window(r), _run(r)])
    others = defaultdict(list)
    for r in res:
        if id(r) not in used:
            kind, heads = key(r)
            others[f"{kind} {heads} heads"].append(r)
    for label in sorted(others):
        for lab, r in _label_runs(label, others[label]):
            m = r["metrics"]
            rows.append([lab, _num((m.get("valid") or {}).get("ppl")), _num((m.get("test") or {}).get("ppl")),
                         "—", "—", _ppl_window(r), _run(r)])
    lines += _table(["model", "valid ppl", "test ppl", "paper valid", "paper test", "context / scored tokens",
                     "run"], rows)
    lines += ["", "Paper numbers: Nguyen et al. (OpenReview text; the camera-ready may differ), 16 layers, sliding "
              "window of 256 scoring the last position (here: --tokens-per-sample 256 --context-window 255)."]
    return lines


def _kv_column(r: Dict) -> str:
    """The column of a synthetic-task result: the kind in both self-attentions when they agree and cross-attention
    is softmax (the papers' setting), else the whole layout."""
    att = r["model"]["attention"]
    enc, dec, cross = att.get("encoder"), att.get("decoder"), att.get("cross", "softmax")
    if enc == dec and cross == "softmax":
        return enc
    return _layout(att, ("encoder", "decoder", "cross"))


def kv_synthetic(res: List[Dict]) -> List[str]:
    lines = ["## Key-Value Transformer: synthetic tasks", ""]
    columns = list(KV_COLUMNS)
    known = {k for _, k in columns}
    for key in sorted({_kv_column(r) for r in res} - known):
        columns.append((key, key))
    cells = defaultdict(list)
    tasks = list(KV_TASKS)
    for r in res:
        task = r["metrics"].get("synthetic_task")
        if task not in tasks:
            tasks.append(task)
        cells[(task, _kv_column(r))].append(r)
    rows = []
    for task in tasks:
        row = [task]
        for _, kind in columns:
            runs = cells.get((task, kind), [])
            if not runs:
                row.append(NOT_RUN)
                continue
            seq = sum(r["metrics"]["sequence_accuracy"] for r in runs) / len(runs)
            tok = sum(r["metrics"]["token_accuracy"] for r in runs) / len(runs)
            row.append(f"{100 * seq:.1f} ({100 * tok:.1f})" + (f", mean of {len(runs)} runs" if len(runs) > 1 else ""))
        rows.append(row)
    lines += _table(["task"] + [c for c, _ in columns], rows)
    ref = "; ".join(f"{t} {' / '.join(f'{100 * v:.1f}' for v in KV_NOTEBOOK[t])}" for t in KV_TASKS)
    lines += ["", "Cells: exact-match sequence accuracy % (token accuracy %), fairseq encoder-decoder, greedy "
              "decoding unless the run says otherwise; the attention kind is the one in encoder and decoder self-attention (cross-attention is "
              "softmax).",
              f"For reference only, the authors' notebooks (encoder-only per-position classification, mean over "
              f"configurations, QKV / KV + pos / KV symmetric, %): {ref}."]
    return lines


def render(res: List[Dict], bench: Optional[Dict] = None) -> str:
    by_table = defaultdict(list)
    for r in res:
        by_table[r["table"]].append(r)
    parts = [memsizer_mt(by_table["memsizer_mt"], bench), memsizer_summarization(by_table["memsizer_summarization"]),
             memsizer_lm(by_table["memsizer_lm"]), mgk_lm(by_table["mgk_lm"]), kv_synthetic(by_table["kv_synthetic"])]
    head = [f"# Results ({len(res)} evaluation{'s' if len(res) != 1 else ''}; "
            f"\"{NOT_RUN}\" marks a cell with no result)", ""]
    return "\n".join(head + [line for part in parts for line in part + [""]])


def main(argv=None, prog: str = "make_tables.py") -> int:
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            self.exit(2, f"{self.prog}: error: {message}\n")

    p = Parser(prog=prog, description="Markdown tables, laid out like the papers', from evaluation results JSONs "
                                      "(python -m kvattn_fairseq.evaluate) found recursively under RESULTS_DIR.")
    p.add_argument("results_dir", metavar="RESULTS_DIR")
    p.add_argument("--out", help="write the tables here (default: print them)")
    p.add_argument("--bench", metavar="FILE",
                   help="results.json of python -m kvattn_fairseq.bench: adds speed and memory columns to the MT table")
    a = p.parse_args(argv)
    try:
        bench = load_bench(a.bench) if a.bench else None
        res = find_results(a.results_dir, warn=lambda msg: print(f"{prog}: warning: {msg}", file=sys.stderr))
        text = render(res, bench)
    except TablesError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if a.out:
        R.write_atomic(a.out, text)
        print(f"wrote {a.out} ({len(res)} results)")
    else:
        sys.stdout.write(text)
    return 0
