"""The conversion chain through the real fairseq CLI: teacher (fairseq-train) -> convert -> attention transfer
(fairseq-train --criterion attention_transfer) -> finetune (fairseq-train --finetune-from-model) -> fairseq-generate /
fairseq-eval-lm with every sentence and token out, as `python -m kvattn_fairseq recovery --tiny` runs it; and
`convert-chain`'s reruns on the spine."""
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from conftest import run, run_cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("recovery")
    proc = run_cli("-m kvattn_fairseq recovery", "--tiny", "--plans", "hybrid,window", "--out", out, timeout=1800,
                   env_extra={"OMP_NUM_THREADS": "1"})
    return out, proc.stdout


@pytest.mark.slow
def test_tiny_recovery_runs_every_stage_and_writes_the_table(tiny):
    out, stdout = tiny
    results = json.loads((out / "results.json").read_text())
    for task, metric in (("mt", "bleu"), ("lm", "ppl")):
        r = results["tasks"][task]
        assert set(r["plans"]) == {"hybrid", "window"} and r["metric"] == metric
        assert r["budget_updates"] <= 0.2 * r["teacher_updates"]
        for plan in r["plans"].values():
            assert set(plan["rows"]) == {"a", "b", "c"}
            for row in [r["teacher"], *plan["rows"].values()]:  # every sentence / token was scored
                assert row.get("sentences", 0) > 0 or row.get("tokens", 0) > 0
    table = (out / "table.md").read_text()
    assert table in stdout and "| hybrid (`--decoder-attention-type memsizer*1,softmax" in table
    assert "| window" in table and "--cross-attention-type softmax" in table  # the window plans keep softmax cross


@pytest.mark.slow
def test_the_transfer_stage_trained_only_the_new_attention_and_logged_each_layer(tiny):
    out, stdout = tiny
    announced = {m.group(1): m.group(2) for m in re.finditer(r"^\[recovery\] (\S+): running: (.*)$", stdout, re.M)}
    assert "--criterion attention_transfer --teacher-checkpoint" in announced["mt/hybrid/a/transfer"]
    finetune = announced["mt/hybrid/a/finetune"]
    assert "--finetune-from-model" in finetune and "label_smoothed_cross_entropy" in finetune
    log = (out / "logs" / "mt-hybrid-a-transfer.log").read_text()
    assert re.search(r"train .*mse_cross0[ =][\d.]+.*mse_dec0[ =][\d.]+", log), log[-2000:]
    converted = torch.load(out / "mt" / "hybrid" / "a" / "converted.pt", weights_only=True)["model"]
    transferred = torch.load(out / "mt" / "hybrid" / "a" / "transfer" / "checkpoint_last.pt", weights_only=True)["model"]
    changed = {k for k in converted if not torch.equal(converted[k], transferred[k])}
    assert changed and all(k.startswith(("decoder.layers.0.self_attn.", "decoder.layers.0.encoder_attn."))
                           for k in changed)


@pytest.mark.slow
def test_a_rerun_of_the_tiny_recovery_redoes_nothing(tiny):
    out, _ = tiny
    before = (out / "mt" / "hybrid" / "a" / "converted.pt").stat().st_mtime_ns
    stdout = run_cli("-m kvattn_fairseq recovery", "--tiny", "--plans", "hybrid,window", "--out", out).stdout
    assert not re.search(r"^\[recovery\] (?!table)\S+: (running|continuing|making it again)", stdout, re.M), stdout
    assert "mt/hybrid/a/transfer: done earlier with the same settings, skipped" in stdout
    assert (out / "mt" / "hybrid" / "a" / "converted.pt").stat().st_mtime_ns == before


def test_convert_sh_refuses_bad_input_in_one_line(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "convert.sh"
    proc = run([script, "--checkpoint", tmp_path / "missing.pt", "--data", tmp_path, "--out", tmp_path / "out",
                "--decoder-attention-type", "memsizer"], env_extra={"PYTHON": sys.executable}, timeout=None)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(f"error: --checkpoint: no such file: {tmp_path}/missing.pt")
    assert not (tmp_path / "out").exists()


# --- reruns: the same settings resume, other settings are refused or (--force) redone ------------------------------
def _chain(*argv):
    from kvattn_fairseq.run.specs import convert_chain

    try:
        return convert_chain.main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def _plan(path):
    return torch.load(path, weights_only=True)["kvattn_plan"]["decoder"]["kinds"]


def test_a_rerun_with_other_settings_is_refused_or_redone_with_force(tmp_path, capsys):
    from test_convert import MT_SIZE, save_checkpoint

    teacher, data, out = tmp_path / "teacher.pt", tmp_path / "data", tmp_path / "ch"
    save_checkpoint(teacher, "transformer", *MT_SIZE)
    data.mkdir()
    base = ["--checkpoint", teacher, "--data", data, "--out", out, "--transfer-updates", "0", "--finetune-updates",
            "0"]
    assert _chain(*base, "--decoder-attention-type", "memsizer*1,softmax") == 0
    assert _plan(out / "converted.pt") == ["memsizer", "softmax"]
    capsys.readouterr()
    other = ["--decoder-attention-type", "linear*2", "--cross-attention-type", "linear"]
    assert _chain(*base, *other) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "was made with other settings (" in err[0] and "decoder_attention_type" in err[0] \
        and "--force" in err[0], err
    assert _plan(out / "converted.pt") == ["memsizer", "softmax"]  # the earlier model, untouched
    (out / "notes.txt").write_text("the user's")  # beside the chain's files: kept
    assert _chain(*base, *other, "--force") == 0
    assert _plan(out / "converted.pt") == ["linear", "linear"] and (out / "notes.txt").read_text() == "the user's"
    chain = json.loads((out / "chain.json").read_text())
    assert chain["settings"]["convert"]["cross_attention_type"] == "linear"
    assert chain["commands"][0]["step"] == "convert" and "--cross-attention-type linear" in chain["commands"][0]["cmd"]
    assert chain["result"] == "converted.pt"
    made = (out / "converted.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert _chain(*base, *other) == 0  # the same settings again: nothing redone
    assert "convert: done earlier with the same settings, skipped" in capsys.readouterr().out
    assert (out / "converted.pt").stat().st_mtime_ns == made


def test_an_out_that_is_a_file_is_one_line(tmp_path, capsys):
    from test_convert import MT_SIZE, save_checkpoint

    save_checkpoint(tmp_path / "teacher.pt", "transformer", *MT_SIZE)
    (tmp_path / "ch").write_text("the user's")
    assert _chain("--checkpoint", tmp_path / "teacher.pt", "--data", tmp_path, "--out", tmp_path / "ch") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--out" in err[0] and "is not a directory" in err[0], err
    assert (tmp_path / "ch").read_text() == "the user's"


def test_another_teacher_at_the_same_path_is_not_taken_for_the_converted_one(tmp_path, capsys):
    """The steps record the teacher's size and sha256, not only its path: a model trained again into the same file
    is another input, refused in one line, and converted again with --force."""
    from test_convert import MT_SIZE, save_checkpoint

    teacher, data, out = tmp_path / "teacher.pt", tmp_path / "data", tmp_path / "ch"
    save_checkpoint(teacher, "transformer", *MT_SIZE, seed=0)
    data.mkdir()
    argv = ["--checkpoint", teacher, "--data", data, "--out", out, "--transfer-updates", "0", "--finetune-updates",
            "0", "--decoder-attention-type", "linear"]
    assert _chain(*argv) == 0
    first = (out / "converted.pt").read_bytes()
    save_checkpoint(teacher, "transformer", *MT_SIZE, seed=1)  # another trained model, the same path
    capsys.readouterr()
    assert _chain(*argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and f"made from another --checkpoint ({teacher}: its content changed)" in err[0], err
    assert (out / "converted.pt").read_bytes() == first
    assert _chain(*argv, "--force") == 0
    key = "decoder.embed_tokens.weight"  # carried over from the new teacher
    assert torch.equal(torch.load(out / "converted.pt", weights_only=True)["model"][key],
                       torch.load(teacher, weights_only=True)["model"][key])


def test_a_fresh_out_holding_the_users_chain_json_is_refused(tmp_path, capsys):
    from test_convert import MT_SIZE, save_checkpoint

    save_checkpoint(tmp_path / "teacher.pt", "transformer", *MT_SIZE)
    out = tmp_path / "ch"
    out.mkdir()
    (out / "chain.json").write_text("the user's")
    assert _chain("--checkpoint", tmp_path / "teacher.pt", "--data", tmp_path, "--out", out, "--transfer-updates",
                  "0", "--finetune-updates", "0", "--decoder-attention-type", "linear") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "chain.json exists and this tool has no record of writing it" in err[0], err
    assert (out / "chain.json").read_text() == "the user's"
    assert sorted(os.listdir(out)) == [".kvattn.lock", "chain.json"]  # nothing was run: only the run's lock
