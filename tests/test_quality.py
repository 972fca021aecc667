"""The real-text quality comparison: its corpus is real, split by document and reproducible, and its --tiny chain
(fairseq-preprocess, fairseq-train, evaluate lm, state bytes) runs end to end.  Its numbers are not asserted."""
import json

import pytest

from kvattn_fairseq.run import quality


def test_corpus_is_cpython_documentation_split_by_document(tmp_path):
    docs = quality.documents(docstrings=False)
    assert len(docs) > 50 and all(len(d) >= quality.MIN_DOC for d in docs)
    assert any("assert" in d for d in docs)  # real prose about the language, not generated text
    info = quality.write_corpus(str(tmp_path), limit=60)
    again = quality.write_corpus(str(tmp_path / "again"), limit=60)
    assert info["sha256"] == again["sha256"] and info["documents"] == 60
    lines = {s: (tmp_path / f"{s}.txt").read_text(encoding="utf-8").splitlines() for s in ("train", "valid", "test")}
    assert sum(len(v) for v in lines.values()) == 60
    assert not set(lines["train"]) & set(lines["test"])
    # one character per token, whitespace made visible so fairseq's dictionary keeps it
    line = lines["train"][0]
    assert all(len(tok) == 1 for tok in line.split(" ")) and quality.SPACE in line
    assert quality.characters("a b\nc") == f"a {quality.SPACE} b {quality.NEWLINE} c"


def test_bad_configs_are_refused_in_one_line(capsys, tmp_path):
    assert quality.main(["--out", str(tmp_path / "q"), "--configs", "softmax,nope"]) == 2
    assert quality.main(["--out", str(tmp_path / "q"), "--updates", "10", "--every", "3"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["python -m kvattn_fairseq.quality: error: --configs: unknown ['nope']; choose from "
                   + ", ".join(quality.CONFIGS),
                   "python -m kvattn_fairseq.quality: error: --updates (10) must be a positive multiple of --every (3)"]
    assert not (tmp_path / "q").exists()  # refused before any work


def test_a_rerun_with_another_context_is_refused_before_any_work(capsys, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({"tiny": False, "context": 128}))
    assert quality.main(["--out", str(out), "--context", "1024"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"python -m kvattn_fairseq.quality: error: --out: {out} holds runs made with context 128; choose another --out"]
    assert sorted(p.name for p in out.iterdir()) == ["settings.json"]


@pytest.mark.slow
def test_tiny_chain_writes_table_and_state_bytes(tmp_path):
    out = tmp_path / "q"
    assert quality.main(["--out", str(out), "--tiny", "--configs", "softmax,window_memsizer", "--context", "24",
                         "--start-updates", "3"]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["tiny"] and summary["points"] == [3, 6] and summary["context"] == 24
    res = summary["results"]
    assert set(res) == {"softmax", "window_memsizer"}
    for name, r in res.items():
        assert all(p > 1.0 for p in r["ppl"].values()) and r["near"]["context"] == 12 and r["near"]["ppl"] > 1.0
        # --start-updates 3: 3 updates on blocks of 24 (--start-context 12), then resumed on blocks of 48
        # (--context 24), scored after 24 tokens of context (and after 12 only)
        runs = out / "runs" / name
        assert " --tokens-per-sample 24 " in (runs / "train_start.log").read_text().splitlines()[0]
        second = (runs / "train.log").read_text()
        assert " --tokens-per-sample 48 " in second.splitlines()[0] and "(epoch 1 @ 3 updates)" in second
        for tag, window in (("", 24), ("_context12", 12)):
            metrics = json.loads((out / "runs" / name / f"test_6{tag}.json").read_text())["metrics"]
            assert (metrics["context_window"], metrics["tokens_per_sample"]) == (window, 2 * window)
    # softmax's cache grows with 512 tokens; the window + memory state stays small and constant
    assert res["window_memsizer"]["state_bytes"] < res["softmax"]["state_bytes"] / 4
    table = (out / "table.md").read_text()
    assert "| window_memsizer |" in table and (out / "test_ppl.png").stat().st_size > 0
