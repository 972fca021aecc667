"""Each paper table regenerates end to end in --tiny mode: fixtures in the real formats -> prepare script ->
fairseq-train per row -> evaluation -> Markdown table; a rerun resumes without redoing work; bad input is one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
RUNNER = [sys.executable, "-m", "kvattn_fairseq.paper_tables"]
# a subset of each table's rows keeps the suite short; every row is built and checked before anything runs
CASES = [("kv_synthetic", "reverse-kv_asym", ()), ("memsizer_mt", "transformer,memsizer", ()),
         ("memsizer_summarization", "memsizer", ("--drop", "fp16")), ("memsizer_lm", "memsizer", ()),
         ("mgk_lm", "mgk4,mlk4", ())]


def run(*args, check=True):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run([*RUNNER, *map(str, args)], capture_output=True, text=True, env=env, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("tables")


@pytest.mark.parametrize("table,rows,extra", CASES)
def test_tiny_table_runs_end_to_end(work, table, rows, extra):
    proc = run(table, "--work", work, "--tiny", "--rows", rows, *extra)
    if extra:
        assert "--drop=fp16" in proc.stdout
    for row in rows.split(","):
        result = json.loads((work / "results" / table / f"{row}.json").read_text())
        assert result["table"] == table and result["name"] == row
        assert result["main"]["value"] is not None
    md = (work / "tables.md").read_text()
    assert "not run" in md  # rows nobody ran are still listed


def test_rerun_resumes_without_redoing_work(work):
    before = {p: p.stat().st_mtime for p in (work / "results" / "memsizer_mt").glob("*.json")}
    proc = run("memsizer_mt", "--work", work, "--tiny", "--rows", "transformer,memsizer")
    assert "already prepared, skipped" in proc.stdout and "finished earlier, skipped" in proc.stdout
    assert {p: p.stat().st_mtime for p in (work / "results" / "memsizer_mt").glob("*.json")} == before
    md = (work / "tables.md").read_text()
    assert md.count("| Transformer | softmax / softmax / softmax |") == 2  # MT and summarization
    mt = md.split("## MemSizer: abstractive")[0]
    assert mt.count("not run") < 6  # the two MT rows now hold numbers


@pytest.mark.parametrize("args,expected", [
    (["kv_synthetic", "--rows", "nope"], "--rows: nope not in table kv_synthetic"),
    (["memsizer_mt", "--kinds", "nope"], "--kinds: unknown attention kind 'nope'"),
    (["memsizer_mt", "--raw", "/nonexistent/raw"], "--raw: /nonexistent/raw is not a directory"),
    (["mgk_lm", "--kinds", "linear"], "--kinds: table mgk_lm fixes its rows' kinds"),
    (["memsizer_mt", "--drop", "nope"], "--drop: --nope is not a flag of memsizer_wmt16_en_de"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, args, expected):
    proc = run(args[0], "--work", tmp_path / "w", *args[1:], check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert not (tmp_path / "w").exists()
