"""End to end through the real fairseq CLI on toy data: preprocess -> train -> generate (beam 4, every sentence
out) -> interactive -> checkpoint reload / resume; and for the LM: train -> eval-lm."""
import os
import re

import pytest
import torch

from fairseq import checkpoint_utils

from kvattn_fairseq.modules import ATTENTION_KINDS, POSITION_FLAGS, MemSizerAttention

import fairseq_runs as runs
from conftest import USER_DIR, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reverse_bin(tmp_path_factory):
    return runs.prepare_reverse(tmp_path_factory.mktemp("reverse"))


@pytest.fixture(scope="module")
def memsizer_run(reverse_bin, tmp_path_factory):
    save = tmp_path_factory.mktemp("memsizer_ckpt")
    log = runs.train_translation(reverse_bin, save, "memsizer_tiny", "--num-workers", "2")
    return save, log


def test_training_uses_memsizer_and_learns_reversal(memsizer_run, reverse_bin):
    save, log = memsizer_run
    assert "MemSizerAttention" in log
    hyps = runs.generate(reverse_bin, save / "checkpoint_last.pt", "--batch-size", "32")
    raw = reverse_bin.parent / "raw"
    refs, srcs = runs.read_lines(raw / "test.tgt"), runs.read_lines(raw / "test.src")
    score = runs.bleu([hyps[i] for i in range(len(refs))], refs)
    chance = runs.bleu(srcs, refs)  # the same symbols in the wrong order
    assert chance < 15
    assert score > chance + 30, f"sacreBLEU {score:.1f} vs {chance:.1f} for copying the source"


def test_generate_prints_every_sentence_and_batching_does_not_change_results(memsizer_run, reverse_bin):
    save, _ = memsizer_run
    ckpt = save / "checkpoint_best.pt"
    # default batching: --required-batch-size-multiple 8 made fairseq main drop the last batch (96 of 100)
    by_tokens = runs.generate(reverse_bin, ckpt, "--max-tokens", "600")
    assert sorted(by_tokens) == list(range(100))
    one_by_one = runs.generate(reverse_bin, ckpt, "--batch-size", "1")
    batched = runs.generate(reverse_bin, ckpt, "--batch-size", "37")
    assert one_by_one == batched == by_tokens  # beam search reorders and shrinks the batch: state must follow


def test_interactive(memsizer_run, reverse_bin):
    save, _ = memsizer_run
    lines = ["a b c d e", "q r s", "t s a b c d e f"]
    out = runs.interactive(reverse_bin, save / "checkpoint_best.pt", lines)
    assert len(out) == 3 and all(out)
    assert out[1].split()[0] == "s"  # the learnt reversal starts with the last symbol


def test_checkpoint_reload_and_resume(memsizer_run, reverse_bin, tmp_path):
    save, _ = memsizer_run
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(save / "checkpoint_last.pt")], arg_overrides={"data": str(reverse_bin)})
    dec = models[0].decoder.layers[0]
    assert isinstance(dec.self_attn, MemSizerAttention) and dec.self_attn.slots == 4
    assert isinstance(dec.encoder_attn, MemSizerAttention) and dec.encoder_attn.slots == 32
    # the same command with one more epoch resumes after the 40 epochs (400 updates) of checkpoint_last.pt
    resumed = tmp_path / "resume"
    resumed.mkdir()
    (resumed / "checkpoint_last.pt").write_bytes((save / "checkpoint_last.pt").read_bytes())
    log = runs.train_translation(reverse_bin, resumed, "memsizer_tiny", "--num-workers", "2", epochs=41)
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch 41 @ 400 updates\)", log), log[-3000:]
    assert "epoch 041" in log


@pytest.mark.parametrize("kind", sorted(ATTENTION_KINDS))
def test_every_kind_trains_and_decodes_at_every_position(kind, reverse_bin, tmp_path):
    flags = [f for p in ATTENTION_KINDS[kind].positions for f in (POSITION_FLAGS[p], kind)]
    log = runs.train_translation(reverse_bin, tmp_path, "kvattn_transformer_tiny", *flags, epochs=2)
    assert "loss" in log
    hyps = runs.generate(reverse_bin, tmp_path / "checkpoint_last.pt", "--max-tokens", "500")
    assert sorted(hyps) == list(range(100))


@pytest.fixture(scope="module")
def lm_bin(tmp_path_factory):
    return runs.prepare_lm(tmp_path_factory.mktemp("lm"))


def test_lm_train_and_eval_lm(lm_bin, tmp_path):
    log = runs.train_lm(lm_bin, tmp_path, "memsizer_lm_tiny", "--num-workers", "2", epochs=16)
    assert "MemSizerAttention" in log
    lines = runs.read_lines(lm_bin.parent / "lmraw" / "test.txt")
    expected_tokens = sum(len(l.split()) + 1 for l in lines)  # + end of sentence
    result = runs.eval_lm(lm_bin, tmp_path / "checkpoint_best.pt", "--sample-break-mode", "eos")
    assert result["tokens"] == expected_tokens  # no sentence lost to batching
    uniform = 20 + 2  # 20 symbols, '|', eos: half of each line is random, the other half is determined
    assert result["ppl"] < 0.75 * uniform, result
    windowed = runs.eval_lm(lm_bin, tmp_path / "checkpoint_best.pt", "--tokens-per-sample", "64",
                            "--context-window", "32")
    assert windowed["ppl"] < 0.75 * uniform
    torch.testing.assert_close(torch.tensor(float(windowed["tokens"])), torch.tensor(float(expected_tokens)))


@pytest.mark.parametrize("arch", ["mgk_lm_tiny", "mlk_lm_tiny"])
def test_mixture_of_keys_language_models_train_and_evaluate(arch, lm_bin, tmp_path):
    log = runs.train_lm(lm_bin, tmp_path, arch, epochs=6)
    assert ("MGKAttention" if arch.startswith("mgk") else "MLKAttention") in log
    lines = runs.read_lines(lm_bin.parent / "lmraw" / "test.txt")
    result = runs.eval_lm(lm_bin, tmp_path / "checkpoint_best.pt", "--tokens-per-sample", "64",
                          "--context-window", "32")
    assert result["tokens"] == sum(len(l.split()) + 1 for l in lines)
    assert result["ppl"] < 20 + 2  # better than a uniform guess over the vocabulary


def test_interactive_empty_and_over_long_lines(memsizer_run, reverse_bin):
    """An empty line is a (short) input like any other; a line longer than the model admits is refused in one
    line naming the fix, or skipped with a count in the log when asked to."""
    save, _ = memsizer_run
    ckpt = save / "checkpoint_best.pt"
    long_line = " ".join(["a"] * 40)
    lines = ["a b c", "", long_line, "q r s"]
    base = ["fairseq-interactive", reverse_bin, "--path", ckpt, "--beam", "4", "--cpu", "--user-dir", USER_DIR,
            "--source-lang", "src", "--target-lang", "tgt", "--max-source-positions", "20"]
    refused = run_cli(*base, input="\n".join(lines) + "\n", check=False)
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert "skip this example with --skip-invalid-size-inputs-valid-test" in refused.stderr.strip().splitlines()[-1]
    skipped = run_cli(*base, "--skip-invalid-size-inputs-valid-test", input="\n".join(lines) + "\n")
    hyps = runs.parse_hypotheses(skipped.stdout)
    assert sorted(hyps) == [0, 1, 3]  # the empty line got a hypothesis; the long one was skipped ...
    assert "1 samples have invalid sizes and will be skipped" in skipped.stderr  # ... and counted in the log


def test_generate_refuses_or_counts_over_long_sources(memsizer_run, reverse_bin):
    save, _ = memsizer_run
    ckpt = save / "checkpoint_best.pt"
    srcs = runs.read_lines(reverse_bin.parent / "raw" / "test.src")
    too_long = sum(len(s.split()) + 1 > 8 for s in srcs)
    assert 0 < too_long < len(srcs)
    refused = run_cli("fairseq-generate", reverse_bin, "--path", ckpt, "--cpu", "--user-dir", USER_DIR,
                      "--max-source-positions", "8", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--skip-invalid-size-inputs-valid-test" in refused.stderr.strip().splitlines()[-1]
    skipped = run_cli("fairseq-generate", reverse_bin, "--path", ckpt, "--cpu", "--user-dir", USER_DIR,
                      "--max-source-positions", "8", "--skip-invalid-size-inputs-valid-test")
    assert len(runs.parse_hypotheses(skipped.stdout)) == len(srcs) - too_long
    assert f"{too_long} samples have invalid sizes and will be skipped" in skipped.stderr + skipped.stdout


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo PWNED > pwned.txt",))


def test_generate_refuses_a_crafted_checkpoint_in_one_line(reverse_bin, tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"cfg": None, "model": {}, "payload": _Payload()}, evil)
    proc = run_cli("fairseq-generate", reverse_bin, "--path", evil, "--user-dir", USER_DIR, "--cpu", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and not (tmp_path / "pwned.txt").exists()
    last = proc.stderr.strip().splitlines()[-1]
    assert "refusing to load checkpoint" in last and re.search(r"\b(posix|os|nt)\.system\b", last), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    shown = run_cli("fairseq-generate", reverse_bin, "--path", evil, "--user-dir", USER_DIR, "--cpu", cwd=tmp_path,
                    check=False, env_extra={"KVATTN_TRACEBACK": "1"})  # the traceback on request, then the line
    assert shown.returncode == 2 and "Traceback" in shown.stderr and shown.stderr.strip().splitlines()[-1] == last


def test_gated_delta_language_model_learns_and_evaluates(lm_bin, tmp_path):
    """Both gated delta kinds through fairseq-train and fairseq-eval-lm (whole sentences, and a sliding context
    window): the model learns the determined half of each line."""
    log = runs.train_lm(lm_bin, tmp_path, "kvattn_lm_tiny", "--decoder-attention-type",
                        "gated_delta,window_gated_delta", "--attention-window", "8", epochs=6)
    assert "GatedDeltaAttention" in log
    lines = runs.read_lines(lm_bin.parent / "lmraw" / "test.txt")
    uniform = 20 + 2
    for flags in (("--sample-break-mode", "eos"), ("--tokens-per-sample", "64", "--context-window", "32")):
        result = runs.eval_lm(lm_bin, tmp_path / "checkpoint_best.pt", *flags)
        assert result["tokens"] == sum(len(l.split()) + 1 for l in lines)
        assert result["ppl"] < 0.75 * uniform, (flags, result)


def test_delta_language_model_with_a_short_convolution_learns_and_reloads(lm_bin, tmp_path):
    """--short-conv 4 on delta (and on a window_linear layer beside it) through fairseq-train: each layer gets its
    convolution, the checkpoint keeps the flag, and fairseq-eval-lm rebuilds the model from it."""
    log = runs.train_lm(lm_bin, tmp_path, "kvattn_lm_tiny", "--decoder-attention-type", "delta,window_linear",
                        "--attention-window", "8", "--short-conv", "4", epochs=6)
    assert "DeltaAttention" in log and "short_conv=4" in log
    state = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "checkpoint_best.pt"))
    assert [k for k in state["model"] if k.endswith("conv.weight")] == [
        "decoder.layers.0.self_attn.conv.weight", "decoder.layers.1.self_attn.memory.conv.weight"]
    lines = runs.read_lines(lm_bin.parent / "lmraw" / "test.txt")
    result = runs.eval_lm(lm_bin, tmp_path / "checkpoint_best.pt", "--sample-break-mode", "eos")
    assert result["tokens"] == sum(len(l.split()) + 1 for l in lines)
    assert result["ppl"] < 0.75 * (20 + 2), result  # the determined half of each line is learnt
