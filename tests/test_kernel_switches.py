"""KVATTN_KERNELS (kernels/__init__.py) is checked when the plugin is imported: a value the kernels cannot run with
stops every command of the plugin and every fairseq tool given --user-dir in one line, before any work, whatever the
device (CPU training never reads it otherwise); `interpret` without TRITON_INTERPRET sets it, since the plugin's
kernels are defined only at their first use."""
import os
import sys

import pytest

from conftest import USER_DIR, run
from kvattn_fairseq.util.proc import fairseq_tool

BAD = {"KVATTN_KERNELS": "bogus"}
MESSAGE = "KVATTN_KERNELS: expected one of auto, torch, interpret, got 'bogus' (unset: auto)"


def _env(**values):
    env = {k: v for k, v in os.environ.items() if k not in ("KVATTN_KERNELS", "TRITON_INTERPRET")}
    return dict(env, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **values)


def _error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.strip() and " | INFO | " not in line]


def test_a_bad_value_stops_a_command_of_the_plugin_before_any_work(tmp_path):
    out = tmp_path / "r"
    proc = run([sys.executable, "-m", "kvattn_fairseq", "recall", "--out", out, "--tiny"], env=_env(**BAD),
               timeout=300)
    assert proc.returncode == 2 and _error_lines(proc) == [f"python -m kvattn_fairseq: error: {MESSAGE}"]
    assert not out.exists()


def test_a_bad_value_stops_a_fairseq_tool_on_the_plugin_in_one_line(tmp_path):
    proc = run([*fairseq_tool("fairseq-train"), tmp_path, "--user-dir", USER_DIR, "--arch", "kvattn_lm", "--task",
                "language_modeling", "--cpu", "--save-dir", tmp_path / "save"], env=_env(**BAD), timeout=300)
    assert proc.returncode == 2 and _error_lines(proc) == [f"fairseq-train: error: {MESSAGE}"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "save").exists()


STEP = """import os, torch
import kvattn_fairseq
from kvattn_fairseq import kernels
from kvattn_fairseq.ops import linear
q, k, v = (torch.randn(3, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
assert kernels.triton_ok(k)  # the plugin's Triton step serves this CPU tensor, interpreted
fused = linear.causal_step(q, k, v)
os.environ["KVATTN_KERNELS"] = "torch"
reference = linear.causal_step(q, k, v)
print(os.environ["TRITON_INTERPRET"], all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fused, reference)))
"""


def test_interpret_sets_triton_interpret_or_refuses_another_value_in_one_line():
    pytest.importorskip("triton", reason="the gpu extra (triton) is not installed")
    proc = run([sys.executable, "-c", STEP], env=_env(KVATTN_KERNELS="interpret"), timeout=600)
    assert proc.returncode == 0 and proc.stdout.split() == ["1", "True"], proc.stderr[-3000:]
    proc = run([sys.executable, "-m", "kvattn_fairseq", "--user-dir"],
               env=_env(KVATTN_KERNELS="interpret", TRITON_INTERPRET="0"), timeout=300)
    assert proc.returncode == 2 and _error_lines(proc) == [
        "python -m kvattn_fairseq: error: KVATTN_KERNELS=interpret needs TRITON_INTERPRET=1 (it is '0'): without "
        "it triton compiles for a GPU driver; set both, or KVATTN_KERNELS=torch"]
