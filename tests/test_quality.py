"""The real-text quality comparison: its corpus is real, split by document and reproducible; bad settings are refused
in one line before any work; and its --tiny chain (corpus, fairseq-preprocess, fairseq-train with the short-context
start, the lm evaluator, state bytes, table, plot, results.json) runs end to end on the spine, resumes without
redoing anything and refuses a rerun with another context.  Its numbers are not asserted."""
import json

import pytest

from kvattn_fairseq.data import cpython_docs as corpus
from kvattn_fairseq.run.specs import quality

PROG = "python -m kvattn_fairseq quality"


def test_corpus_is_cpython_documentation_split_by_document(tmp_path):
    docs = corpus.documents(docstrings=False)
    assert len(docs) > 50 and all(len(d) >= corpus.MIN_DOC for d in docs)
    assert any("assert" in d for d in docs)  # real prose about the language, not generated text
    info = corpus.write_corpus(str(tmp_path), limit=60)
    again = corpus.write_corpus(str(tmp_path / "again"), limit=60)
    assert info["sha256"] == again["sha256"] and info["documents"] == 60
    lines = {s: (tmp_path / f"{s}.txt").read_text(encoding="utf-8").splitlines() for s in ("train", "valid", "test")}
    assert sum(len(v) for v in lines.values()) == 60
    assert not set(lines["train"]) & set(lines["test"])
    # one character per token, whitespace made visible so fairseq's dictionary keeps it
    line = lines["train"][0]
    assert all(len(tok) == 1 for tok in line.split(" ")) and corpus.SPACE in line
    assert corpus.characters("a b\nc") == f"a {corpus.SPACE} b {corpus.NEWLINE} c"


def test_bad_settings_are_refused_in_one_line_before_any_work(capsys, tmp_path):
    out = str(tmp_path / "q")
    assert quality.main(["--out", out, "--configs", "softmax,nope"]) == 2
    assert quality.main(["--out", out, "--updates", "10", "--every", "3"]) == 2
    assert quality.main(["--out", out, "--updates", "10", "--every", "5", "--start-updates", "10"]) == 2
    assert quality.main(["--out", out, "--context", "64", "--start-updates", "300", "--start-context", "64"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{PROG}: error: --configs: unknown ['nope']; choose from " + ", ".join(quality.CONFIGS),
        f"{PROG}: error: --updates (10) must be a positive multiple of --every (3)",
        f"{PROG}: error: --start-updates (10) must be a multiple of --every (5) below --updates (10)",
        f"{PROG}: error: --start-context (64) must be smaller than --context (64)"]
    assert not (tmp_path / "q").exists()


def _plan(**kw):
    import argparse

    a = dict(configs="softmax,window", updates=1200, every=300, context=None, start_updates=0, start_context=None,
             tiny=False)
    return quality.Plan(argparse.Namespace(**{**a, **kw}))


def test_the_steps_score_each_checkpoint_of_the_run_that_made_it(tmp_path):
    plan = _plan(context=1024, start_updates=300)
    steps = {s.name: s for s in quality.steps(plan, str(tmp_path))}
    start, train = steps["train/window/start"], steps["train/window"]
    assert " --tokens-per-sample 256 " in start.command and " --max-update 300" in start.command
    assert " --tokens-per-sample 2048 " in train.command and train.needs == ("data", "train/window/start")
    assert f" --continue-once {tmp_path}/runs/window-start/checkpoint_last.pt --reset-dataloader" in train.command
    assert [n for n in steps if n.startswith("ppl/window/")] == [
        "ppl/window/300", "ppl/window/600", "ppl/window/900", "ppl/window/1200", "ppl/window/1200_context64"]
    assert steps["ppl/window/300"].needs == ("data", "train/window/start")  # the start run's last checkpoint
    assert steps["ppl/window/900"].needs == ("data", "train/window")
    near = steps["ppl/window/1200_context64"]
    assert near.settings["options"] == {"context_window": 64, "tokens_per_sample": 128, "splits": "test"}
    assert "--checkpoint runs/window/checkpoint_*_1200.pt " in near.command  # a pattern the shell expands
    assert steps["state/window"].settings == {"config": "window", "tokens": 2048}
    assert list(steps)[-1] == "table" and steps["table"].always
    assert set(steps["table"].needs) == {"data"} | {n for n in steps if n.startswith(("ppl/", "state/"))}


@pytest.mark.slow
def test_tiny_chain_writes_table_and_state_bytes_and_resumes(tmp_path, capsys):
    out = tmp_path / "q"
    argv = ["--out", str(out), "--tiny", "--configs", "softmax,window_memsizer,gated_delta", "--context", "24",
            "--start-updates", "3"]
    assert quality.main(argv) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["tiny"] and summary["points"] == [3, 6] and summary["context"] == 24
    assert summary["start"]["updates"] == 3 and 0 < summary["corpus"]["documents"] <= quality.TINY_DOCUMENTS
    res = summary["results"]
    assert set(res) == {"softmax", "window_memsizer", "gated_delta"}
    for name, r in res.items():
        assert all(p > 1.0 for p in r["ppl"].values()) and r["near"]["context"] == 12 and r["near"]["ppl"] > 1.0
        # --start-updates 3: 3 updates on blocks of 24 (--start-context 12), then continued on blocks of 48
        # (--context 24) from that run's last checkpoint, scored after 24 tokens of context (and after 12 only)
        start = (out / "logs" / f"runs-{name}-start.log").read_text()
        assert " --tokens-per-sample 24 " in start.splitlines()[0]
        second = (out / "logs" / f"runs-{name}.log").read_text()
        assert " --tokens-per-sample 48 " in second.splitlines()[0] and "(epoch 1 @ 3 updates)" in second
        for update, tag, window, run in ((3, "", 24, f"{name}-start"), (6, "", 24, name),
                                         (6, "_context12", 12, name)):
            scored = json.loads((out / "scores" / name / f"test_{update}{tag}.json").read_text())
            assert (scored["metrics"]["context_window"], scored["metrics"]["tokens_per_sample"]) == (window, 2 * window)
            assert f"runs/{run}/checkpoint_" in scored["checkpoint"]["path"]  # the checkpoint of that run
            assert scored["model"]["num_updates"] == update
    # softmax's cache grows with 512 tokens; the window + memory and gated-delta states stay small and constant
    assert res["window_memsizer"]["state_bytes"] < res["softmax"]["state_bytes"] / 4
    assert res["gated_delta"]["state_bytes"] < res["softmax"]["state_bytes"] / 4
    table = (out / "table.md").read_text()
    assert "| window_memsizer |" in table and (out / "test_ppl.png").stat().st_size > 0

    log = out / "logs" / "runs-softmax.log"
    stamp = log.stat().st_mtime_ns
    capsys.readouterr()
    assert quality.main(argv) == 0  # resumed: nothing retrained or scored again
    assert log.stat().st_mtime_ns == stamp
    said = capsys.readouterr().out
    assert "train/softmax: done earlier with the same settings, skipped" in said
    assert "ppl/window_memsizer/6_context12: done earlier with the same settings, skipped" in said
    records = sorted((p.name, p.stat().st_mtime_ns) for p in (out / "steps").iterdir())
    assert quality.main(argv[:-3] + ["20", "--start-updates", "3"]) == 2  # another context: refused before any work
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"{PROG}: error: train/softmax/start (") and "pass --force" in err[0]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (out / "steps").iterdir()) == records
