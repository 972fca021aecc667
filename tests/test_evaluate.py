"""python -m kvattn_fairseq.evaluate and average-checkpoints, end to end on tiny trained models.

Small stand-ins for the prepared data directories (same layout as the prepare scripts' output): WMT (sentencepiece
model, joined-dictionary data-bin, raw test.en / test.de), CNN/DM (data-bin source-target, test.target,
test.ref.jsonl), a language-modelling data-bin and a synthetic reversal task.  The models train for a few updates,
so the scores mean nothing: the tests check structure, counts, that every number equals sacreBLEU / rouge-score /
fairseq-eval-lm computed directly on the same files, and that bad input gives one line and exit status 2.
"""
import json
import os
import random
import shutil
import sys
from pathlib import Path

import pytest
import sacrebleu
import torch

import fairseq_runs as runs
from conftest import run, run_cli
from kvattn_fairseq.checkpoints import average as avg
from kvattn_fairseq.data import toy as toydata
from kvattn_fairseq.evaluate import __main__ as evaluate
from kvattn_fairseq.evaluate import cnndm, fairseq_tools, results, synthetic, wmt
from kvattn_fairseq.util.errors import OneLineError

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

# --- tiny corpora -------------------------------------------------------------------------------------------------
EN_DE = {"the": "der", "a": "ein", "house": "Haus", "is": "ist", "small": "klein", "big": "gross", "man": "Mann",
         "woman": "Frau", "sees": "sieht", "model": "Modell", "city": "Stadt", "river": "Fluss", "green": "gruen",
         "runs": "laeuft", "quickly": "schnell", "today": "heute", "we": "wir", "they": "sie", "plan": "Plan",
         "works": "funktioniert", "and": "und", "but": "aber", "in": "in", "old": "alt",
         "state-of-the-art": "hochmodern", "well-known": "wohl-bekannt", "long-term": "lang-fristig",
         "e-mail": "E-Mail"}
WORDS = sorted(EN_DE)


def _sentence(rng, lo=4, hi=9):
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    if len(words) > 5 and rng.random() < 0.5:
        words[2] += ","
    end = rng.choice([".", ".", "?", "!"])
    de = [EN_DE[w.rstrip(",")] + ("," if w.endswith(",") else "") for w in words]
    cap = lambda ws: " ".join(ws)[:1].upper() + " ".join(ws)[1:]  # noqa: E731
    return cap(words) + end, cap(de) + end


def _write(path: Path, lines):
    path.write_text("".join(l + "\n" for l in lines), encoding="utf-8")


def _train_spm(text_files, prefix: Path):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(input=",".join(str(f) for f in text_files), model_prefix=str(prefix),
                                   vocab_size=120, model_type="unigram", character_coverage=1.0,
                                   hard_vocab_limit=False, minloglevel=2, num_threads=1)
    return spm.SentencePieceProcessor(model_file=str(prefix) + ".model")


def _encode(sp, src: Path, dst: Path):
    _write(dst, [" ".join(sp.encode(l, out_type=str)) for l in src.read_text(encoding="utf-8").splitlines()])


TRAIN = ["--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "5e-3", "--lr-scheduler", "inverse_sqrt",
         "--warmup-updates", "10", "--max-tokens", "2000", "--cpu", "--seed", "1", "--log-format", "simple",
         "--log-interval", "50", "--user-dir", runs.USER_DIR, "--num-workers", "0"]


@pytest.fixture(scope="module")
def wmt_dir(tmp_path_factory):
    """DIR/{data-bin, spm.model, test.en, test.de} with 240 / 20 / 23 sentence pairs (23: not a multiple of 8)."""
    d = tmp_path_factory.mktemp("wmt")
    raw, sp_dir = d / "raw", d / "sp"
    raw.mkdir()
    sp_dir.mkdir()
    rng = random.Random(5)
    for split, n in (("train", 240), ("valid", 20), ("test", 23)):
        pairs = [_sentence(rng) for _ in range(n)]
        _write(raw / f"{split}.en", [p[0] for p in pairs])
        _write(raw / f"{split}.de", [p[1] for p in pairs])
    sp = _train_spm([raw / "train.en", raw / "train.de"], d / "spm")
    for split in ("train", "valid", "test"):
        for lang in ("en", "de"):
            _encode(sp, raw / f"{split}.{lang}", sp_dir / f"{split}.{lang}")
    shutil.copy(raw / "test.en", d / "test.en")
    shutil.copy(raw / "test.de", d / "test.de")
    run_cli("fairseq-preprocess", "--source-lang", "en", "--target-lang", "de", "--trainpref", sp_dir / "train",
            "--validpref", sp_dir / "valid", "--testpref", sp_dir / "test", "--destdir", d / "data-bin",
            "--joined-dictionary", "--workers", "1")
    return d


@pytest.fixture(scope="module")
def wmt_ckpts(wmt_dir, tmp_path_factory):
    """MemSizer's MT layout (memsizer_tiny), 4 epochs, every epoch checkpoint kept."""
    save = tmp_path_factory.mktemp("wmt_memsizer")
    run_cli("fairseq-train", wmt_dir / "data-bin", "--arch", "memsizer_tiny", "--share-all-embeddings",
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-epoch", "4",
            "--save-dir", save, *TRAIN)
    return save


def _main(argv, capsys):
    """The command line in-process (the fairseq tools still run as subprocesses): (exit code, stdout, stderr)."""
    try:
        code = evaluate.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _load(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --- WMT ------------------------------------------------------------------------------------------------------------
def test_wmt_end_to_end_command_line(wmt_dir, wmt_ckpts, tmp_path):
    """Through scripts/evaluate.sh, i.e. the real `python -m kvattn_fairseq.evaluate` process."""
    out = tmp_path / "res" / "wmt.json"
    cmd = ["bash", REPO / "scripts" / "evaluate.sh", "wmt", "--data", wmt_dir, "--checkpoint",
           wmt_ckpts / "checkpoint_last.pt", "--out", out, "--name", "memsizer-tiny", "--batch-size", "5", "--",
           "--max-len-b", "30", "--cpu"]
    proc = run(cmd, timeout=600, env=dict(os.environ, PYTHON=sys.executable, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "sacreBLEU" in proc.stdout and "wrote" in proc.stdout
    r = _load(out)
    assert results.validate(r)
    refs = runs.read_lines(wmt_dir / "test.de")
    hyps = runs.read_lines(out.parent / r["files"]["hypotheses"])
    assert r["task"] == "wmt" and r["table"] == "memsizer_mt" and r["name"] == "memsizer-tiny"
    assert r["sentences"] == len(refs) == len(hyps) == 23  # every sentence, none dropped (23 % 8 != 0)
    assert r["model"]["arch"] == "memsizer_tiny" and r["model"]["model"] == "kvattn_transformer"
    assert r["model"]["attention"] == {"encoder": "softmax", "decoder": "memsizer", "cross": "memsizer"}
    assert r["model"]["num_updates"] > 0 and r["model"]["parameters"] > 0
    assert r["settings"]["beam"] == 4 and r["settings"]["lenpen"] == 0.6 and r["settings"]["batch_size"] == 5
    assert "--max-len-b" in r["settings"]["fairseq_flags"]
    assert not os.path.isabs(r["checkpoint"]["path"]) and not os.path.isabs(r["data"])
    assert (out.parent / r["checkpoint"]["path"]).resolve() == (wmt_ckpts / "checkpoint_last.pt").resolve()
    # hypotheses are detokenized text, not sentencepiece pieces
    assert not any("\u2581" in h for h in hyps)
    # the numbers are sacreBLEU's on the very files written
    direct = sacrebleu.corpus_bleu(hyps, [refs])
    assert r["metrics"]["sacrebleu"] == round(direct.score, 2) == r["main"]["value"]
    assert r["signature"] == r["metrics"]["sacrebleu_signature"]
    assert r["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    tok = wmt.tok_bleu_compound_split(hyps, refs)
    assert r["metrics"]["tok_bleu_compound_split"] == round(tok["score"], 2)
    assert r["metrics"]["tok_bleu_tokenizer"] == tok["tokenizer"]
    # generation order is the test set's: fairseq's own id-sorted output decodes to the same lines
    log = (out.parent / r["files"]["logs"][0]).read_text(encoding="utf-8")
    pieces, _ = fairseq_tools.parse_generate(log)
    assert wmt.spm_decode(str(wmt_dir / "spm.model"), [pieces[i] for i in range(23)]) == hyps


COMPOUNDS = "a well-known state-of-the-art e-mail - ok a-b-c 3-4"


def test_compound_split_and_tok_bleu():
    assert wmt.compound_split(COMPOUNDS) == ("a well ##AT##-##AT## known state ##AT##-##AT## of ##AT##-##AT## the "
                                             "##AT##-##AT## art e ##AT##-##AT## mail - ok a ##AT##-##AT## b-c 3 "
                                             "##AT##-##AT## 4")
    hyps = ["Der wohl-bekannte Mann sieht ein Haus.", "Sie laeuft schnell!"]
    refs = ["Der wohl-bekannte Mann sieht das Haus.", "Sie laeuft heute schnell!"]
    tok = wmt.tok_bleu_compound_split(hyps, refs)
    tokenize, _ = wmt.moses_tokenizer("de")
    expect = sacrebleu.corpus_bleu([wmt.compound_split(tokenize(h)) for h in hyps],
                                   [[wmt.compound_split(tokenize(r)) for r in refs]], tokenize="none",
                                   smooth_method="none", force=True)
    assert tok["score"] == expect.score > 0
    assert "compound:##AT##" in tok["signature"] and "tok:none" in tok["signature"]
    # splitting compounds adds matching n-grams: the inflation fairseq's README warns about
    plain = sacrebleu.corpus_bleu([tokenize(h) for h in hyps], [[tokenize(r) for r in refs]], tokenize="none",
                                  smooth_method="none", force=True)
    assert tok["score"] > plain.score


def test_tok_bleu_tokenizer_moses_or_labelled_fallback(monkeypatch):
    hyp, ref = ["Der wohl-bekannte Mann, heute."], ["Der wohl-bekannte Mann, heute."]
    try:
        import sacremoses  # noqa: F401
    except ImportError:
        pass
    else:
        tokenize, label = wmt.moses_tokenizer("de")
        assert label == "moses -l de (sacremoses)"
        assert tokenize('Der "Mann", heute.') == "Der &quot; Mann &quot; , heute ."  # tokenizer.perl's escaping
        assert wmt.tok_bleu_compound_split(hyp, ref)["tokenizer"] == label
    monkeypatch.setitem(sys.modules, "sacremoses", None)  # as if not installed
    tokenize, label = wmt.moses_tokenizer("de")
    assert label.startswith("13a (sacremoses not installed")
    tok = wmt.tok_bleu_compound_split(hyp, ref)
    assert tok["tokenizer"] == label and tok["score"] == pytest.approx(100)


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl not installed")
def test_compound_split_matches_the_perl_one_liner():
    """fairseq's scripts/compound_split_bleu.sh and tensor2tensor's get_ende_bleu.sh use this perl substitution."""
    perl = run(["perl", "-ple", "s{(\\S)-(\\S)}{$1 ##AT##-##AT## $2}g"], input=COMPOUNDS + "\n", timeout=None,
               check=True)
    assert perl.stdout.rstrip("\n") == wmt.compound_split(COMPOUNDS)


# --- checkpoint averaging -------------------------------------------------------------------------------------------
def _model(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_average_checkpoints_is_the_mean(wmt_ckpts, tmp_path, capsys):
    out = tmp_path / "avg.pt"
    code = avg.main(["--inputs", str(wmt_ckpts), "--num-epoch-checkpoints", "3", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    states = [_model(wmt_ckpts / f"checkpoint{e}.pt") for e in (2, 3, 4)]
    averaged = _model(out)
    assert averaged["kvattn_averaged_from"] == [str((wmt_ckpts / f"checkpoint{e}.pt").resolve()) for e in (2, 3, 4)]
    assert (os.stat(out).st_mode & 0o777) == 0o666 & ~_umask()  # an ordinary file, not mkstemp's private 0600
    assert averaged["kvattn_plan"] == states[-1]["kvattn_plan"]
    assert averaged["model"].keys() == states[-1]["model"].keys()
    n_float = 0
    for key, value in averaged["model"].items():
        stack = torch.stack([s["model"][key] for s in states])
        if value.is_floating_point():
            n_float += 1
            assert value.dtype == states[-1]["model"][key].dtype
            torch.testing.assert_close(value, stack.mean(0), rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(value, states[-1]["model"][key])
    assert n_float > 10
    key = "decoder.layers.0.fc1.weight"
    assert not torch.equal(averaged["model"][key], states[-1]["model"][key])
    # non-model fields are the last checkpoint's
    assert averaged["optimizer_history"] == states[-1]["optimizer_history"]
    assert averaged["extra_state"]["train_iterator"] == states[-1]["extra_state"]["train_iterator"]
    assert averaged["cfg"]["model"] == states[-1]["cfg"]["model"]


def test_average_explicit_files_fp16_and_fp32_accumulation(wmt_ckpts, tmp_path):
    paths = []
    for e in (1, 2):
        state = _model(wmt_ckpts / f"checkpoint{e}.pt")
        state["model"] = {k: (v.half() if v.is_floating_point() else v) for k, v in state["model"].items()}
        paths.append(tmp_path / f"half{e}.pt")
        torch.save(state, paths[-1])
    state = avg.average([str(p) for p in paths])
    first, second = (_model(p)["model"] for p in paths)
    for key, value in state["model"].items():
        if value.is_floating_point():
            assert value.dtype == torch.float16
            expect = ((first[key].float() + second[key].float()) / 2).half()  # fp32 sum, then back to fp16
            assert torch.equal(value, expect), key


def test_average_refuses_mismatches_in_one_line(wmt_ckpts, tmp_path, capsys):
    good = wmt_ckpts / "checkpoint1.pt"
    state = _model(good)
    key = "decoder.layers.0.fc1.weight"
    state["model"][key] = state["model"][key][:, :3].clone()
    torch.save(state, tmp_path / "shape.pt")
    del state["model"][key]
    torch.save(state, tmp_path / "missing.pt")
    out = tmp_path / "never.pt"
    for bad, words in (("shape.pt", [key, "shape"]), ("missing.pt", [key, "lacks"])):
        code = avg.main(["--inputs", str(good), str(tmp_path / bad), "--output", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and all(w in err for w in words), err
    assert avg.main(["--inputs", str(wmt_ckpts), "--num-epoch-checkpoints", "9", "--output", str(out)]) == 2
    assert "found 4" in capsys.readouterr().err
    assert avg.main(["--inputs", str(tmp_path / "nope.pt"), "--output", str(out)]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert avg.main(["--inputs", str(wmt_ckpts), "--output", str(out)]) == 2  # a directory needs --num-*
    capsys.readouterr()
    assert not out.exists() and not list(tmp_path.glob(".never.pt*"))


def test_wmt_on_averaged_checkpoints(wmt_dir, wmt_ckpts, tmp_path, capsys):
    out = tmp_path / "avg" / "wmt.json"
    avg_file = tmp_path / "avg2.pt"
    code, stdout, err = _main(["wmt", "--data", wmt_dir, "--average-last", "2", "--checkpoint-dir", wmt_ckpts,
                               "--average-output", avg_file, "--out", out, "--", "--max-len-b", "30", "--cpu"],
                              capsys)
    assert code == 0, err
    r = _load(out)
    assert r["checkpoint"]["averaged_from"] == ["checkpoint3.pt", "checkpoint4.pt"]
    assert (out.parent / r["checkpoint"]["path"]).resolve() == avg_file.resolve()
    assert r["name"] == wmt_ckpts.name and r["sentences"] == 23


# --- CNN/DailyMail --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnndm_dir(wmt_dir, tmp_path_factory):
    """DIR/{data-bin (source-target), spm.model, test.target, test.ref.jsonl}: 3-sentence "articles", the first two
    sentences as the summary; binarized with the WMT stand-in's sentencepiece model and dictionary, so the WMT
    checkpoint can decode it (its summaries mean nothing)."""
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("cnndm")
    rng = random.Random(9)
    sp = spm.SentencePieceProcessor(model_file=str(wmt_dir / "spm.model"))
    articles, summaries = [], []
    for _ in range(11):
        sents = [_sentence(rng, 3, 6)[0] for _ in range(3)]
        articles.append(" ".join(sents))
        summaries.append(sents[:2])
    _write(d / "test.source", articles)
    _write(d / "test.target", [" ".join(s) for s in summaries])
    _write(d / "test.ref.jsonl", [json.dumps(s) for s in summaries])
    shutil.copy(wmt_dir / "spm.model", d / "spm.model")
    (d / "sp").mkdir()
    _encode(sp, d / "test.source", d / "sp" / "test.source")
    _encode(sp, d / "test.target", d / "sp" / "test.target")
    run_cli("fairseq-preprocess", "--source-lang", "source", "--target-lang", "target", "--testpref",
            d / "sp" / "test", "--destdir", d / "data-bin", "--srcdict", wmt_dir / "data-bin" / "dict.en.txt",
            "--tgtdict", wmt_dir / "data-bin" / "dict.de.txt", "--workers", "1")
    return d


def test_cnndm_end_to_end(cnndm_dir, wmt_ckpts, tmp_path, capsys):
    from rouge_score import rouge_scorer

    out = tmp_path / "cnndm.json"
    code, stdout, err = _main(["cnndm", "--data", cnndm_dir, "--checkpoint", wmt_ckpts / "checkpoint_last.pt",
                               "--out", out, "--min-len", "3", "--max-len-b", "25", "--", "--cpu"], capsys)
    assert code == 0, err
    r = _load(out)
    s = r["settings"]
    assert (s["beam"], s["lenpen"], s["min_len"], s["max_len_b"], s["no_repeat_ngram_size"]) == (4, 2.0, 3, 25, 3)
    assert s["truncate_source"] and "--truncate-source" in s["fairseq_flags"]
    hyps = runs.read_lines(out.parent / r["files"]["hypotheses"])
    refs = runs.read_lines(cnndm_dir / "test.target")
    ref_sents = [json.loads(l) for l in runs.read_lines(cnndm_dir / "test.ref.jsonl")]
    assert r["sentences"] == len(hyps) == len(refs) == 11
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for t in cnndm.ROUGE_TYPES:
        if t == "rougeLsum":
            scores = [scorer.score("\n".join(rs), "\n".join(cnndm.split_sentences(h)))[t]
                      for h, rs in zip(hyps, ref_sents)]
        else:
            scores = [scorer.score(ref, h)[t] for h, ref in zip(hyps, refs)]
        for k, attr in (("f", "fmeasure"), ("p", "precision"), ("r", "recall")):
            assert r["metrics"][t][k] == round(100 * sum(getattr(x, attr) for x in scores) / len(scores), 2)
    assert r["main"] == {"metric": "rougeLsum", "value": r["metrics"]["rougeLsum"]["f"]}
    assert r["table"] == "memsizer_summarization"


def test_sentence_splitter():
    assert cnndm.split_sentences('He said "Go." Then he left! 3 men came? (Yes.) ok. e.g. fine') == \
        ['He said "Go."', "Then he left!", "3 men came?", "(Yes.) ok. e.g. fine"]
    assert cnndm.split_sentences("  ") == [] and cnndm.split_sentences("one") == ["one"]


# --- language modelling ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("lm")
    d = work / "wikitext"
    raw = Path(toydata.write_lm(str(work / "raw"), train=400, valid=40, test=40))
    run_cli("fairseq-preprocess", "--only-source", "--trainpref", raw / "train.txt", "--validpref",
            raw / "valid.txt", "--testpref", raw / "test.txt", "--destdir", d / "data-bin", "--workers", "1")
    save = work / "ckpt"
    runs.train_lm(d / "data-bin", save, "memsizer_lm_tiny", "--num-workers", "0", epochs=2)
    return d, save / "checkpoint_last.pt"


def _eval_lm_in_process(*argv):
    """fairseq_cli.eval_lm.main in this process (saves a process start): its unrounded results."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq_cli import eval_lm

    parser = options.get_eval_lm_parser()
    args = options.parse_args_and_arch(parser, input_args=[str(a) for a in argv[:1]] + [
        "--path", str(argv[1]), "--user-dir", runs.USER_DIR, "--cpu", *[str(a) for a in argv[2:]]])
    return eval_lm.main(convert_namespace_to_omegaconf(args))


def test_lm_end_to_end(lm_run, tmp_path, capsys):
    data, ckpt = lm_run
    out = tmp_path / "lm.json"
    code, stdout, err = _main(["lm", "--data", data, "--checkpoint", ckpt, "--context-window", "16",
                               "--tokens-per-sample", "64", "--out", out, "--", "--cpu"], capsys)
    assert code == 0, err
    r = _load(out)
    m = r["metrics"]
    assert (m["context_window"], m["tokens_per_sample"], m["scored_block"]) == (16, 64, 48)
    assert r["model"]["attention"] == {"decoder": "memsizer"} and r["table"] == "memsizer_lm"
    direct = _eval_lm_in_process(data / "data-bin", ckpt, "--gen-subset", "test", "--context-window", "16",
                                 "--tokens-per-sample", "64", "--batch-size", "8")
    assert m["test"]["ppl"] == float(f"{float(direct['perplexity']):.2f}")  # batch size 8 instead of 2: same
    assert m["test"]["loss_base2"] == float(f"{float(direct['loss']):.4f}")
    raw = runs.read_lines(data.parent / "raw" / "test.txt")
    assert m["test"]["tokens"] == sum(len(l.split()) + 1 for l in raw)  # every token (and end of line) scored
    assert m["valid"]["tokens"] > 0 and m["valid"]["ppl"] > 1
    assert abs(2 ** m["test"]["loss_base2"] - m["test"]["ppl"]) < 0.05 * m["test"]["ppl"]
    assert r["main"] == {"metric": "test_ppl", "value": m["test"]["ppl"]}


def test_lm_window_arithmetic():
    from types import SimpleNamespace as NS

    from kvattn_fairseq.evaluate import lm

    # fairseq's meaning: the model sees --tokens-per-sample tokens, of which the last M - C are scored
    assert lm.window(NS(context_window=16, tokens_per_sample=64, score_block=None), 64) == \
        {"tokens_per_sample": 64, "context_window": 16, "scored_block": 48}
    # --score-block B passes --tokens-per-sample B + C
    assert lm.window(NS(context_window=16, tokens_per_sample=None, score_block=48), 64) == \
        {"tokens_per_sample": 64, "context_window": 16, "scored_block": 48}
    assert lm.window(NS(context_window=0, tokens_per_sample=512, score_block=None), None)["scored_block"] == 512


def test_lm_window_errors(lm_run, tmp_path, capsys):
    data, ckpt = lm_run
    out = tmp_path / "lm.json"
    for flags, words in ((["--context-window", "64", "--tokens-per-sample", "64"], ["--context-window 64",
                                                                                     "--tokens-per-sample 64"]),
                         (["--context-window", "16", "--tokens-per-sample", "128"], ["max_target_positions 64"]),
                         (["--context-window", "16", "--score-block", "60"], ["--tokens-per-sample 76"])):
        code, _, err = _main(["lm", "--data", data, "--checkpoint", ckpt, "--out", out, *flags], capsys)
        assert code == 2 and err.count("\n") == 1 and all(w in err for w in words), err
    code, _, err = _main(["lm", "--data", data, "--checkpoint", ckpt, "--out", out, "--context-window", "4"], capsys)
    assert code == 2 and "--tokens-per-sample" in err
    assert not out.exists()


# --- synthetic tasks ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """python -m kvattn_fairseq synthetic's layout: DIR/{raw/{train,valid,test}.{src,tgt}, data-bin, synthetic.json}."""
    d = tmp_path_factory.mktemp("synthetic") / "task_dir"
    toydata.write_reverse(str(d / "raw"), train=300, valid=20, test=30, max_len=8)
    (d / "synthetic.json").write_text(json.dumps({"task": "reverse", "test": 30}))
    raw = d / "raw"
    run_cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref", raw / "train",
            "--validpref", raw / "valid", "--testpref", raw / "test", "--destdir", d / "data-bin",
            "--joined-dictionary", "--workers", "1")
    save = d.parent / "ckpt_kv"
    run_cli("fairseq-train", d / "data-bin", "--arch", "kv_synthetic", "--criterion", "cross_entropy",
            "--max-epoch", "2", "--no-epoch-checkpoints", "--save-dir", save, *TRAIN)
    return d, save / "checkpoint_last.pt"


def test_synthetic_end_to_end(synthetic_run, tmp_path, capsys):
    data, ckpt = synthetic_run
    out = tmp_path / "syn.json"
    code, stdout, err = _main(["synthetic", "--data", data, "--checkpoint", ckpt, "--out", out, "--", "--cpu"],
                              capsys)
    assert code == 0, err
    r = _load(out)
    hyps = runs.read_lines(out.parent / r["files"]["hypotheses"])
    refs = runs.read_lines(data / "raw" / "test.tgt")
    assert r["sentences"] == len(hyps) == len(refs) == 30
    assert r["metrics"]["synthetic_task"] == "reverse" and r["table"] == "kv_synthetic"
    assert r["model"]["attention"] == {"encoder": "kv", "decoder": "kv", "cross": "softmax"}
    assert r["settings"]["beam"] == 1
    exact = sum(h.split() == t.split() for h, t in zip(hyps, refs)) / len(refs)
    assert r["metrics"]["sequence_accuracy"] == exact == r["main"]["value"]
    assert 0 <= r["metrics"]["token_accuracy"] <= 1
    import sacrebleu  # the recovery experiment's number on reversal: sacreBLEU of the hypotheses as printed

    assert r["metrics"]["sacrebleu"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)


def test_accuracy_definition():
    acc = synthetic.accuracy(["a b c", "a b", "x b c d"], ["a b c", "a b c", "a b c"])
    assert acc["sequence_accuracy"] == pytest.approx(1 / 3)
    assert acc["token_accuracy"] == pytest.approx((3 + 2 + 2) / 9)


def test_hypothesis_count_mismatch_is_refused(synthetic_run, tmp_path, capsys):
    data, ckpt = synthetic_run
    bad = tmp_path / "reverse"  # the other layout: DIR/test.{src,tgt} beside DIR/data-bin, task from the name
    shutil.copytree(data / "data-bin", bad / "data-bin")
    shutil.copy(data / "raw" / "test.src", bad / "test.src")
    _write(bad / "test.tgt", runs.read_lines(data / "raw" / "test.tgt") + ["a b c"])
    out = tmp_path / "res" / "syn.json"
    code, _, err = _main(["synthetic", "--data", bad, "--checkpoint", ckpt, "--out", out, "--", "--cpu"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "30 hypotheses for the 31 sentences" in err and "test.tgt" in err and "ids 30" in err
    assert not out.exists() and not (out.parent / "syn.hyp.tgt").exists()


def test_a_flag_fairseq_refuses_is_one_line(synthetic_run, tmp_path, capsys):
    data, ckpt = synthetic_run
    out = tmp_path / "syn.json"
    code, _, err = _main(["synthetic", "--data", data, "--checkpoint", ckpt, "--out", out, "--", "--no-such-flag"],
                         capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "fairseq-generate failed" in err and "--no-such-flag" in err and "syn.generate-test.failed.log" in err
    assert not out.exists()


def test_a_failed_rerun_keeps_the_previous_results_and_their_log(synthetic_run, tmp_path, capsys):
    data, ckpt = synthetic_run
    out = tmp_path / "syn.json"
    assert _main(["synthetic", "--data", data, "--checkpoint", ckpt, "--out", out, "--", "--cpu"], capsys)[0] == 0
    log = tmp_path / "syn.generate-test.log"
    before = (out.read_text(), log.read_text())
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # readable like any file the user writes
    # fairseq-generate fails: its log is kept under a name of its own
    code, _, err = _main(["synthetic", "--data", data, "--checkpoint", ckpt, "--out", out, "--", "--no-such-flag"],
                         capsys)
    assert code == 2 and "syn.generate-test.failed.log" in err
    assert (out.read_text(), log.read_text()) == before
    assert "--no-such-flag" in (tmp_path / "syn.generate-test.failed.log").read_text()
    # fairseq-generate succeeds but the scoring refuses: the new log is not installed beside the old results either
    bad = tmp_path / "reverse"
    shutil.copytree(data / "data-bin", bad / "data-bin")
    shutil.copy(data / "raw" / "test.src", bad / "test.src")
    _write(bad / "test.tgt", runs.read_lines(data / "raw" / "test.tgt") + ["a b c"])
    code, _, err = _main(["synthetic", "--data", bad, "--checkpoint", ckpt, "--out", out, "--", "--cpu"], capsys)
    assert code == 2 and "hypotheses for the 31 sentences" in err
    assert (out.read_text(), log.read_text()) == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]


def test_out_never_overwrites_a_file_that_is_not_a_results_file(tmp_path, capsys):
    thesis = tmp_path / "thesis.json"
    thesis.write_text('{"chapter": 1}')
    code, _, err = _main(["synthetic", "--data", tmp_path, "--checkpoint", tmp_path / "c.pt", "--out", thesis],
                         capsys)
    assert code == 2 and err.count("\n") == 1 and "--out" in err and "not a results file" in err, err
    assert thesis.read_text() == '{"chapter": 1}'


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_in_order_reports_missing_ids():
    with pytest.raises(OneLineError, match=r"no hypothesis for 2 sentence\(s\), ids 1, 3"):
        fairseq_tools.in_order({0: "a", 2: "b"}, 4, "ref")
    assert fairseq_tools.in_order({1: "b", 0: "a"}, 2, "ref") == ["a", "b"]


# --- bad input ------------------------------------------------------------------------------------------------------
def test_bad_input_is_one_line_and_exit_2(wmt_dir, wmt_ckpts, tmp_path, capsys):
    ckpt = wmt_ckpts / "checkpoint_last.pt"
    out = tmp_path / "r.json"
    no_ref = tmp_path / "no_ref"
    shutil.copytree(wmt_dir, no_ref, ignore=shutil.ignore_patterns("raw", "sp", "test.de"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    no_spm = tmp_path / "no_spm"
    shutil.copytree(wmt_dir, no_spm, ignore=shutil.ignore_patterns("raw", "sp", "spm.*"))
    cases = [
        (["wmt", "--data", tmp_path / "nowhere", "--checkpoint", ckpt], ["--data", "nowhere"]),
        (["wmt", "--data", wmt_dir, "--checkpoint", tmp_path / "missing.pt"], ["--checkpoint", "missing.pt"]),
        (["wmt", "--data", wmt_dir, "--checkpoint", garbage], ["--checkpoint", "garbage.pt", "cannot load"]),
        (["wmt", "--data", no_ref, "--checkpoint", ckpt], ["test.de", "not found"]),
        (["wmt", "--data", no_spm, "--checkpoint", ckpt], ["spm.model"]),
        (["wmt", "--data", wmt_dir, "--checkpoint", ckpt, "--gen-subset", "nosuch"], ["nosuch"]),
        (["wmt", "--data", wmt_dir, "--checkpoint", ckpt, "--bogus", "1"], ["unrecognized arguments: --bogus"]),
        (["wmt", "--data", wmt_dir, "--checkpoint", ckpt, "--", "--remove-bpe"], ["--remove-bpe"]),
        (["wmt", "--data", wmt_dir, "--checkpoint", ckpt, "--", "--beam", "2"], ["--beam"]),
        (["wmt", "--data", wmt_dir], ["--checkpoint"]),
        (["wmt", "--data", wmt_dir, "--average-last", "2"], ["--checkpoint-dir"]),
        (["wmt", "--data", wmt_dir, "--average-last", "9", "--checkpoint-dir", wmt_ckpts], ["found 4"]),
        (["cnndm", "--data", wmt_dir, "--checkpoint", ckpt], ["test.target"]),
        (["lm", "--data", wmt_dir, "--checkpoint", ckpt, "--tokens-per-sample", "8", "--splits", "valid,nosuch"],
         ["'nosuch'"]),
        (["nosuch", "--data", wmt_dir], ["invalid choice"]),
    ]
    for argv, words in cases:
        cut = argv.index("--") if "--" in argv else len(argv)
        code, stdout, err = _main([*argv[:cut], "--out", out, *argv[cut:]], capsys)
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert all(str(w) in err for w in words), (argv, err)
    assert not out.exists()
