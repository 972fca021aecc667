"""Shared helpers: building models the way fairseq's CLI does, and running the real fairseq command-line tools."""
import argparse
import os
import subprocess
import sys

import pytest
import torch

import kvattn_fairseq
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

USER_DIR = kvattn_fairseq.USER_DIR
BIN_DIR = os.path.dirname(sys.executable)


def make_dictionary(n_symbols: int = 24) -> Dictionary:
    d = Dictionary()
    for i in range(n_symbols):
        d.add_symbol(f"w{i}")
    return d


class DummyTask:
    def __init__(self, dictionary: Dictionary):
        self.source_dictionary = dictionary
        self.target_dictionary = dictionary


def parse_model_args(arch: str, *flags: str) -> argparse.Namespace:
    """What fairseq's parse_args_and_arch does for the model: its flags without defaults, then the arch function."""
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    ARCH_MODEL_REGISTRY[arch].add_args(parser)
    args = parser.parse_args(list(flags))
    args.arch = arch
    ARCH_CONFIG_REGISTRY[arch](args)
    return args


def build_model(arch: str, *flags: str, dictionary: Dictionary = None, seed: int = 0):
    torch.manual_seed(seed)
    args = parse_model_args(arch, *flags)
    model = ARCH_MODEL_REGISTRY[arch].build_model(args, DummyTask(dictionary or make_dictionary()))
    return model.eval()


def run_cli(tool: str, *args, cwd=None, input: str = None, timeout: int = 900, check: bool = True,
            env_extra: dict = None) -> subprocess.CompletedProcess:
    """Run a fairseq console script (or `python -m ...` when tool starts with '-m') and capture its output."""
    cmd = [sys.executable, *tool.split()] if tool.startswith("-m ") else [os.path.join(BIN_DIR, tool)]
    cmd += [str(a) for a in args]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    env.update(env_extra or {})
    proc = subprocess.run(cmd, cwd=cwd, input=input, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}"
                             f"\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture
def fresh_rng():
    torch.manual_seed(1234)
    yield
