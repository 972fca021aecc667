"""scripts/make_tables.py (kvattn_fairseq/run/report.py): results JSONs (python -m kvattn_fairseq.evaluate) -> the
papers' tables in Markdown, each drawn by its paper file (kvattn_fairseq/papers).

The results here are built with the evaluators' own results.make (numbers made up); test_evaluate.py checks the
numbers themselves.  The benchmark file goes through kvattn_fairseq.bench.report.summarise, as the benchmark does.
"""
import json
import os
import sys
from pathlib import Path

import pytest

from kvattn_fairseq.bench import report as bench_report
from kvattn_fairseq.data import synthetic
from kvattn_fairseq.evaluate import results
from kvattn_fairseq.evaluate.registry import EVALUATORS
from kvattn_fairseq.papers import TABLES
from kvattn_fairseq.papers.markdown import NOT_RUN
from kvattn_fairseq.run import report as tables
from conftest import run

REPO = Path(__file__).resolve().parents[1]
MT = ("encoder", "decoder", "cross")


def _model(arch, kinds, positions=MT, heads=8, params=1_000_000):
    return {"arch": arch, "model": "kvattn_lm" if positions == ("decoder",) else "kvattn_transformer",
            "attention": dict(zip(positions, kinds)), "heads": {"decoder": heads}, "parameters": params,
            "num_updates": 10, "max_target_positions": 1024}


def _write(root: Path, rel: str, task: str, model, metrics, main, name=None, table=None):
    out = root / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    r = results.make(task, main_metric=EVALUATORS[task].MAIN_METRIC, name=name or out.parent.name, model=model,
                     checkpoint=str(root / "ckpt.pt"),
                     averaged_from=None, data=str(root / "data"), settings={}, metrics=metrics, main_value=main,
                     signature="sig", sentences=3, files={"logs": []}, results_path=str(out), table=table)
    results.save(r, str(out))
    return r


def _wmt(bleu, tok):
    return {"sacrebleu": bleu, "sacrebleu_signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0",
            "tok_bleu_compound_split": tok, "tok_bleu_tokenizer": "moses -l de (sacremoses)"}


def _rouge(r1, r2, rl, rlsum):
    return {t: {"f": v, "p": v, "r": v} for t, v in zip(("rouge1", "rouge2", "rougeL", "rougeLsum"),
                                                           (r1, r2, rl, rlsum))}


def _lm(valid, test):
    return {"valid": {"ppl": valid, "loss_base2": 1.0, "tokens": 10}, "test": {"ppl": test, "loss_base2": 1.0,
                                                                              "tokens": 10},
            "context_window": 400, "tokens_per_sample": 512, "scored_block": 112}


def _syn(task, seq, tok):
    return {"synthetic_task": task, "sequence_accuracy": seq, "token_accuracy": tok}


def _rows(markdown: str, heading: str):
    """{first cell: [cells]} of the table under `heading`."""
    lines = markdown.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("## ") and heading in l)
    rows, header = {}, None
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
            continue
        rows[cells[0]] = dict(zip(header, cells))
    return rows


@pytest.fixture
def results_dir(tmp_path):
    return populate(tmp_path / "results")


def populate(root: Path) -> Path:
    """Eleven results (and two JSON files that are not results) under `root`."""
    _write(root, "wmt/vanilla/results.json", "wmt", _model("transformer_vaswani_wmt_en_de_big",
                                                            ("softmax",) * 3), _wmt(27.31, 28.12), 27.31)
    _write(root, "wmt/memsizer/results.json", "wmt", _model("memsizer_wmt_en_de_big", ("softmax", "memsizer",
                                                                                         "memsizer")),
           _wmt(26.5, 27.4), 26.5)
    _write(root, "wmt/linear/results.json", "wmt", _model("linear_base", ("linear",) * 3), _wmt(20.0, 21.0), 20.0)
    _write(root, "cnndm/memsizer/r.json", "cnndm", _model("memsizer_cnn_dm", ("softmax", "memsizer", "memsizer")),
           _rouge(40.1, 18.2, 37.3, 38.4), 38.4)
    _write(root, "lm/memsizer/r.json", "lm", _model("memsizer_lm_wiki103", ("memsizer",), ("decoder",)),
           _lm(20.5, 21.25), 21.25)
    _write(root, "lm/mgk4/r.json", "lm", _model("mgk_lm_wiki103_mgk4", ("mgk",), ("decoder",), heads=4),
           _lm(33.0, 34.0), 34.0)
    _write(root, "lm/smgk2/r.json", "lm", _model("kvattn_lm_tiny", ("smgk",), ("decoder",), heads=2),
           _lm(33.5, 34.5), 34.5, table="mgk_lm")
    kv = ("kv", "kv", "softmax")
    _write(root, "syn/kv_rev_1/r.json", "synthetic", _model("kv_synthetic", kv), _syn("reverse", 0.5, 0.9), 0.5)
    _write(root, "syn/kv_rev_2/r.json", "synthetic", _model("kv_synthetic", kv), _syn("reverse", 0.7, 0.8), 0.7)
    _write(root, "syn/qkv_sort/r.json", "synthetic", _model("softmax_synthetic", ("softmax", "softmax", "softmax")),
           _syn("sort", 0.25, 0.5), 0.25)
    _write(root, "syn/asym_parity/r.json", "synthetic", _model("kv_asym_synthetic", ("kv_asym", "kv_asym",
                                                                                     "softmax")),
           _syn("parity", 1.0, 1.0), 1.0)
    (root / "unrelated.json").write_text('{"not": "ours"}')
    (root / "broken.json").write_text("{")
    return root


def test_empty_directory_keeps_every_paper_row(tmp_path):
    md = tables.render(tables.find_results(str(tmp_path)))
    for label in [r.label for r in TABLES["memsizer_mt"].rows]:
        row = _rows(md, "machine translation")[label]
        assert row["sacreBLEU"] == row["tok-BLEU (compound split)"] == NOT_RUN
        assert _rows(md, "summarization")[label]["R-Lsum"] == NOT_RUN
    assert set(_rows(md, "MemSizer: language modelling")) == {"Transformer", "MemSizer"}
    mgk = _rows(md, "Transformer-MGK")
    assert list(mgk) == [r.label for r in TABLES["mgk_lm"].rows]
    assert mgk["MGK 4 heads"]["valid ppl"] == NOT_RUN and mgk["MGK 4 heads"]["paper test"] == "34.21"
    assert mgk["sMGK 4 heads"]["paper test"] == "—"  # our row: no published number
    syn = _rows(md, "as sequence-to-sequence")
    assert list(syn) == list(synthetic.TASKS)
    assert all(v == NOT_RUN for row in syn.values() for k, v in row.items() if k != "task")
    assert "0 evaluations" in md


def test_results_land_in_the_papers_rows(results_dir, capsys):
    found = tables.find_results(str(results_dir), warn=lambda m: print(m, file=sys.stderr))
    assert len(found) == 11 and "broken.json" in capsys.readouterr().err
    md = tables.render(found)
    mt = _rows(md, "machine translation")
    assert mt["Transformer"]["sacreBLEU"] == "27.31" and mt["Transformer"]["tok-BLEU (compound split)"] == "28.12"
    assert mt["MemSizer"]["sacreBLEU"] == "26.50" and mt["MemSizer"]["params"] == "1.0M"
    assert mt["linear / linear / linear"]["sacreBLEU"] == "20.00"  # another layout: its own row, after the paper's
    assert list(mt).index("linear / linear / linear") == 2
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0" in md
    summ = _rows(md, "summarization")
    assert [summ["MemSizer"][k] for k in ("R-1", "R-2", "R-L", "R-Lsum")] == ["40.10", "18.20", "37.30", "38.40"]
    assert summ["Transformer"]["R-1"] == NOT_RUN
    lm = _rows(md, "MemSizer: language modelling")
    assert (lm["MemSizer"]["valid ppl"], lm["MemSizer"]["test ppl"]) == ("20.50", "21.25")
    assert lm["MemSizer"]["context / scored tokens"] == "400 / 112" and lm["Transformer"]["test ppl"] == NOT_RUN
    mgk = _rows(md, "Transformer-MGK")
    assert mgk["MGK 4 heads"]["test ppl"] == "34.00" and mgk["MGK 8 heads"]["test ppl"] == NOT_RUN
    assert mgk["smgk, 2 heads"]["valid ppl"] == "33.50" and mgk["smgk, 2 heads"]["paper valid"] == "—"
    assert list(mgk).index("smgk, 2 heads") == len(TABLES["mgk_lm"].rows)  # after the paper's rows
    syn = _rows(md, "as sequence-to-sequence")
    assert syn["reverse"]["KV symmetric (kv)"] == "60.0 (85.0), mean of 2 runs"
    assert syn["reverse"]["QKV (softmax)"] == NOT_RUN
    assert syn["sort"]["QKV (softmax)"] == "25.0 (50.0)"
    assert syn["parity"]["KV + 2D pos (kv_asym)"] == "100.0 (100.0)"  # a task outside the paper's: extra row


def _cls(task, position, sequence):
    return {"synthetic_task": task, "position_accuracy": position, "sequence_accuracy": sequence}


def test_kv_classification_averages_runs_then_configurations_like_the_notebooks(tmp_path):
    """plot.ipynb: each configuration's mean over its runs, then the mean and population std over configurations;
    the notebooks' figures sit beside each kind; another encoder kind gets a column of its own."""
    enc = ("encoder",)
    for name, kind, pos, seq in (("reverse-kv-d64-l2-h4-n64-s1", "kv", 0.5, 0.1),
                                 ("reverse-kv-d64-l2-h4-n64-s2", "kv", 0.7, 0.3),  # config 1: 0.6 / 0.2
                                 ("reverse-kv-d256-l2-h4-n64-s1", "kv", 1.0, 1.0),  # config 2: 1.0 / 1.0
                                 ("sort-linear-d64-l2-h4-n64-s1", "linear", 0.25, 0.0)):
        model = dict(_model("kv_position_classifier", (kind,), enc), model="kvattn_classifier")
        _write(tmp_path, f"{name}.json", "classify", model, _cls(name.split("-")[0], pos, seq), pos, name=name)
    rows = _rows(tables.render(tables.find_results(str(tmp_path))), "per-position classification")
    assert list(rows) == list(synthetic.TASKS)
    assert rows["reverse"]["KV symmetric (kv)"] == "0.8000 (0.20); exact 0.6000 [2 cfg, 3 runs]"
    assert rows["reverse"]["QKV, notebooks"] == "0.6978 (0.38)" and rows["reverse"]["QKV (softmax)"] == NOT_RUN
    assert rows["reverse"]["KV symmetric, notebooks"] == "0.7046 (0.37)"
    assert rows["sort"]["linear"] == "0.2500 (0.00); exact 0.0000 [1 cfg, 1 runs]"
    assert rows["swap"]["linear"] == NOT_RUN


def test_a_row_naming_kind_options_takes_the_results_trained_with_them(tmp_path):
    """The MGK ablation rows share the plain rows' layout and heads: the kind options recorded from the checkpoint
    decide, and a result without them stays in the plain row."""
    lm = ("decoder",)
    plain, em, hard = (dict(_model("mgk_lm_wiki103_mgk4", ("mgk",), lm, heads=4), options=opts)
                       for opts in ({"mgk_pi": "softmax", "mgk_estep": "soft"}, {"mgk_pi": "em", "mgk_estep": "soft"},
                                    {"mgk_pi": "softmax", "mgk_estep": "hard"}))
    for name, model, ppl in (("plain", plain, 34.0), ("em", em, 35.0), ("hard", hard, 36.0)):
        _write(tmp_path, f"{name}/r.json", "lm", model, _lm(ppl, ppl), ppl)
    mgk = _rows(tables.render(tables.find_results(str(tmp_path))), "Transformer-MGK")
    assert mgk["MGK 4 heads"]["test ppl"] == "34.00"
    assert mgk["MGK 4 heads + Soft-E, EM π (B) [ours]"]["test ppl"] == "35.00"
    assert mgk["MGK 4 heads + Hard-E (C) [ours]"]["test ppl"] == "36.00"
    assert mgk["sMGK 4 heads + Soft-E, EM π (B) [ours]"]["test ppl"] == NOT_RUN


def test_runs_sharing_a_row_are_listed_by_name(results_dir):
    _write(results_dir, "wmt/memsizer_seed2/results.json", "wmt",
           _model("memsizer_wmt_en_de_big", ("softmax", "memsizer", "memsizer")), _wmt(26.9, 27.8), 26.9)
    mt = _rows(tables.render(tables.find_results(str(results_dir))), "machine translation")
    assert mt["MemSizer [memsizer]"]["sacreBLEU"] == "26.50"
    assert mt["MemSizer [memsizer_seed2]"]["sacreBLEU"] == "26.90"


def _bench(tmp_path) -> Path:
    """A benchmark results file as python -m kvattn_fairseq.bench writes it (summary by report.summarise)."""
    kinds = ["memsizer", "softmax"]
    raw = {"mode": "quick", "machine": {"device": "cpu", "processor": "x86_64", "torch_threads": 1, "torch": "2",
                                        "python": "3.11"}, "kinds": kinds,
           "decode": {"configs": [{"batch": 4, "beam": 1, "length": 512, "models": {
               "vanilla": {"step_ms": {32: 10.0, 512: 40.0}, "state_bytes_per_hypothesis": {32: 1024, 512: 16384}},
               "memsizer": {"step_ms": {32: 8.0, 512: 8.0}, "state_bytes_per_hypothesis": {32: 2048, 512: 2048}},
               "softmax": {"step_ms": {32: 10.0, 512: 40.0}, "state_bytes_per_hypothesis": {32: 1024, 512: 16384}},
           }}]},
           "translate": {"models": {"vanilla": {"tokens_per_s": 400.0}, "memsizer": {"tokens_per_s": 600.0},
                                    "softmax": {"tokens_per_s": 400.0}}},
           "train": {"models": {k: {512: {"tokens_per_s": 100.0, "peak_bytes": 100},
                                    2048: {"tokens_per_s": 50.0, "peak_bytes": 400 if k != "memsizer" else 200}}
                                for k in ["vanilla"] + kinds}}}
    raw["summary"] = bench_report.summarise(raw, ["memsizer"])
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(raw))  # integer keys become strings, as in the real file
    return path


def test_bench_adds_speed_and_memory_columns(results_dir, tmp_path):
    bench = tables.load_bench(str(_bench(tmp_path)))
    md = tables.render(tables.find_results(str(results_dir)), bench)
    mt = _rows(md, "machine translation")
    assert mt["Transformer"]["translation tokens/s (x vanilla)"] == "400 (1.00x)"
    assert mt["MemSizer"]["translation tokens/s (x vanilla)"] == "600 (1.50x)"
    assert mt["MemSizer"]["decode step speed t=512 (x vanilla)"] == "5.00x"
    assert mt["MemSizer"]["decoding state per hypothesis t=512"] == "2.0 KiB"
    assert mt["Transformer"]["decoding state per hypothesis t=512"] == "16.0 KiB"
    assert mt["MemSizer"]["train peak memory T=2048 (x vanilla)"] == "0.50x"
    assert mt["linear / linear / linear"]["translation tokens/s (x vanilla)"] == NOT_RUN  # not benchmarked
    assert "--mode quick" in md
    # without --bench there are no such columns
    plain = _rows(tables.render(tables.find_results(str(results_dir))), "machine translation")
    assert "translation tokens/s (x vanilla)" not in plain["MemSizer"]


def test_command_line_writes_the_file(results_dir, tmp_path):
    out = tmp_path / "out" / "tables.md"
    proc = run([sys.executable, str(REPO / "scripts" / "make_tables.py"), str(results_dir), "--out",
                str(out), "--bench", str(_bench(tmp_path))], timeout=300, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "11 results" in proc.stdout
    text = out.read_text(encoding="utf-8")
    assert text == tables.render(tables.find_results(str(results_dir)), tables.load_bench(str(tmp_path /
                                                                                               "bench.json")))
    assert os.listdir(out.parent) == ["tables.md"]


def test_bad_input_is_one_line_and_exit_2(results_dir, tmp_path, capsys):
    cases = [([str(tmp_path / "nowhere")], "nowhere"),
             ([str(results_dir), "--bench", str(tmp_path / "nobench.json")], "nobench.json"),
             ([str(results_dir), "--bench", str(results_dir / "unrelated.json")], "not a results.json"),
             ([str(results_dir), "--bogus"], "unrecognized arguments: --bogus")]
    bad = dict(json.loads((results_dir / "lm/memsizer/r.json").read_text()))
    del bad["metrics"]
    (tmp_path / "badres").mkdir()
    (tmp_path / "badres" / "x.json").write_text(json.dumps(bad))
    cases.append(([str(tmp_path / "badres")], "missing field(s) metrics"))
    out = tmp_path / "t.md"
    for argv, words in cases:
        try:
            code = tables.main([*argv, "--out", str(out)])
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and words in err, (argv, err)
    assert not out.exists()
