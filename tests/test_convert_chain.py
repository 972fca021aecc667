"""The conversion chain through the real fairseq CLI: teacher (fairseq-train) -> convert -> attention transfer
(fairseq-train --criterion attention_transfer) -> finetune (fairseq-train --finetune-from-model) -> fairseq-generate /
fairseq-eval-lm with every sentence and token out, as `python -m kvattn_fairseq.recovery --tiny` runs it."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("recovery")
    proc = run_cli("-m kvattn_fairseq.recovery", "--tiny", "--plans", "hybrid", "--out", out, timeout=1800)
    return out, proc.stdout


def test_tiny_recovery_runs_every_stage_and_writes_the_table(tiny):
    out, stdout = tiny
    results = json.loads((out / "results.json").read_text())
    for task, metric in (("mt", "bleu"), ("lm", "ppl")):
        r = results["tasks"][task]
        rows = r["plans"]["hybrid"]["rows"]
        assert set(rows) == {"a", "b", "c"} and r["metric"] == metric
        assert r["budget_updates"] <= 0.2 * r["teacher_updates"]
        for row in [r["teacher"], *rows.values()]:  # every sentence / token was scored (checked while running)
            assert row.get("sentences", 0) > 0 or row.get("tokens", 0) > 0
    table = (out / "table.md").read_text()
    assert table in stdout and "| hybrid (`--decoder-attention-type memsizer*1,softmax" in table


def test_the_transfer_stage_trained_only_the_new_attention_and_logged_each_layer(tiny):
    out, _ = tiny
    chain = json.loads((out / "mt" / "hybrid" / "a" / "chain.json").read_text())
    stages = [c["cmd"] for c in chain["commands"]]
    assert any("attention_transfer" in cmd for cmd in stages)
    assert any("--finetune-from-model" in cmd and "label_smoothed_cross_entropy" in cmd for cmd in stages)
    log = (out / "mt" / "hybrid" / "a" / "transfer.log").read_text()
    assert re.search(r"train .*mse_cross0[ =][\d.]+.*mse_dec0[ =][\d.]+", log), log[-2000:]
    converted = torch.load(out / "mt" / "hybrid" / "a" / "converted.pt", weights_only=True)["model"]
    transferred = torch.load(out / "mt" / "hybrid" / "a" / "transfer" / "checkpoint_last.pt", weights_only=True)["model"]
    changed = {k for k in converted if not torch.equal(converted[k], transferred[k])}
    assert changed and all(k.startswith(("decoder.layers.0.self_attn.", "decoder.layers.0.encoder_attn."))
                           for k in changed)


def test_convert_sh_refuses_bad_input_in_one_line(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "convert.sh"
    proc = subprocess.run([str(script), "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(tmp_path),
                           "--out", str(tmp_path / "out"), "--decoder-attention-type", "memsizer"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(f"error: --checkpoint: no such file: {tmp_path}/missing.pt")
    assert not (tmp_path / "out").exists()
