"""Shared helpers: building models the way fairseq's CLI does, and running the real fairseq command-line tools."""
import os
import subprocess
import sys

import pytest
import torch

import kvattn_fairseq
from fairseq.data import Dictionary
from kvattn_fairseq.models import building
from kvattn_fairseq.models.building import DictionaryTask as DummyTask, make_dictionary, parse_model_args  # noqa: F401
from kvattn_fairseq.util.proc import fairseq_tool

USER_DIR = kvattn_fairseq.USER_DIR


def build_model(arch: str, *flags: str, dictionary: Dictionary = None, seed: int = 0, **task_args):
    torch.manual_seed(seed)
    return building.build_model(arch, *flags, dictionary=dictionary, **task_args)


def run(cmd, *, cwd=None, input: str = None, timeout=900, env: dict = None, env_extra: dict = None,
        check: bool = False, stdin=None, preexec_fn=None) -> subprocess.CompletedProcess:
    """The one way the tests run a command: text output captured, a timeout (None for none), `env` (default: this
    process's environment) plus `env_extra`; with check, a non-zero exit fails with the tails of both streams."""
    cmd = [str(c) for c in cmd]
    if env_extra:
        env = dict(os.environ if env is None else env, **env_extra)
    proc = subprocess.run(cmd, cwd=cwd, input=input, stdin=stdin, preexec_fn=preexec_fn, capture_output=True,
                          text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}"
                             f"\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def run_cli(tool: str, *args, cwd=None, input: str = None, timeout: int = 900, check: bool = True,
            env_extra: dict = None) -> subprocess.CompletedProcess:
    """Run a fairseq console script (or `python -m ...` when tool starts with '-m') and capture its output."""
    cmd = [sys.executable, *tool.split()] if tool.startswith("-m ") else fairseq_tool(tool)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    return run([*cmd, *args], cwd=cwd, input=input, timeout=timeout, env=env, env_extra=env_extra, check=check)


def decode_token_by_token(module, x):
    """Feed self-attention `module` the time-first input x one position per call, as fairseq's incremental decoder
    does -> (the outputs concatenated, the state's element count after each step, the last step's state buffer);
    every floating-point state tensor must be fp32."""
    state, outs, sizes = {}, [], []
    for t in range(x.size(0)):
        step = x[t:t + 1]
        outs.append(module(step, step, step, incremental_state=state)[0])
        buf = next(iter(state.values()))
        sizes.append(sum(v.numel() for v in buf.values()))
        assert all(v.dtype == torch.float32 for v in buf.values() if v.is_floating_point())
    return torch.cat(outs), sizes, buf


@pytest.fixture
def fresh_rng():
    torch.manual_seed(1234)
    yield
