"""Three of the fairseq fixes (kvattn_fairseq/patches: checkpoint globals, numpy compat, the last batch): each test
shows the failure without the plugin and its absence with it."""
import argparse
import multiprocessing
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import run


def run_python(code: str, with_plugin: bool) -> subprocess.CompletedProcess:
    prelude = "import kvattn_fairseq\n" if with_plugin else "import fairseq\n"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    return run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, timeout=300)


def test_checkpoints_with_namespace_load_with_weights_only(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"cfg": {"model": argparse.Namespace(arch="memsizer_tiny")}, "model": {"w": torch.ones(2)}}, path)
    code = f"""
        import os, torch
        state = torch.load({str(path)!r}, map_location="cpu")  # the call fairseq's checkpoint_utils makes
        assert state["cfg"]["model"].arch == "memsizer_tiny"
        assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
        print("LOADED")
    """
    without = run_python(code, with_plugin=False)
    assert without.returncode != 0 and "Weights only load failed" in without.stderr
    with_plugin = run_python(code, with_plugin=True)
    assert with_plugin.returncode == 0, with_plugin.stderr[-3000:]
    assert "LOADED" in with_plugin.stdout


def test_checkpoints_with_numpy_metrics_load_but_object_arrays_do_not(tmp_path):
    """fairseq keeps --eval-bleu's n-gram counts as numpy arrays in extra_state['metrics']."""
    path, evil = tmp_path / "ckpt.pt", tmp_path / "objects.pt"
    metrics = {"_bleu_counts": np.array([3, 2, 1, 0]), "loss": np.float64(2.5), "ppl": np.float32(1.5)}
    torch.save({"extra_state": {"metrics": metrics}, "model": {"w": torch.ones(2)}}, path)
    torch.save({"extra_state": {"metrics": {"x": np.array([print], dtype=object)}}}, evil)
    code = f"""
        import torch
        state = torch.load({str(path)!r}, map_location="cpu")
        assert state["extra_state"]["metrics"]["_bleu_counts"].tolist() == [3, 2, 1, 0]
        print("LOADED")
        torch.load({str(evil)!r}, map_location="cpu")
    """
    proc = run_python(code, with_plugin=True)
    assert "LOADED" in proc.stdout, proc.stderr[-3000:]
    assert proc.returncode != 0 and "ObjectDType" in proc.stderr


class Evil:
    def __reduce__(self):
        return (os.system, ("echo PWNED > pwned.txt",))


def test_checkpoint_with_other_globals_is_still_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"cfg": {"model": argparse.Namespace()}, "payload": Evil()}, path)
    code = f"""
        import os, torch
        os.chdir({str(tmp_path)!r})
        torch.load({str(path)!r}, map_location="cpu")
    """
    proc = run_python(code, with_plugin=True)
    assert proc.returncode != 0 and "Weights only load failed" in proc.stderr
    assert not (tmp_path / "pwned.txt").exists()


def test_token_block_dataset_eos_mode_under_numpy2():
    code = """
        import torch
        from fairseq.data import TokenBlockDataset
        items = [torch.tensor([4, 5, 2]), torch.tensor([6, 2])]
        ds = TokenBlockDataset(items, [3, 2], block_size=8, pad=1, eos=2, break_mode="eos")
        assert len(ds) == 2
        print("OK")
    """
    if int(np.__version__.split(".")[0]) >= 2:
        assert run_python(code, with_plugin=False).returncode != 0
    proc = run_python(code, with_plugin=True)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


BATCH_CODE = """
    import numpy as np
    from fairseq.data import data_utils
    idx = np.arange(100)
    batches = data_utils.batch_by_size(idx, lambda i: 5, max_sentences=32, required_batch_size_multiple=8)
    covered = np.concatenate(batches)
    print(len(covered), sorted(covered.tolist()) == list(range(100)))
"""


def test_batch_by_size_keeps_the_last_batch():
    without = run_python(BATCH_CODE, with_plugin=False)
    assert without.stdout.split()[0] == "96"  # fairseq main drops the last 4
    with_plugin = run_python(BATCH_CODE, with_plugin=True)
    assert with_plugin.stdout.split() == ["100", "True"], with_plugin.stderr[-2000:]


def test_batch_by_size_keeps_batches_within_limits():
    from fairseq.data import data_utils

    sizes = np.random.RandomState(0).randint(1, 30, size=203)
    idx = np.argsort(sizes, kind="mergesort")
    batches = data_utils.batch_by_size(idx, lambda i: sizes[i], max_tokens=100, required_batch_size_multiple=8)
    assert sorted(np.concatenate(batches).tolist()) == list(range(203))
    for b in batches:
        assert len(b) * sizes[b].max() <= 100


def _spawned_forward(payload, queue):
    module, x = payload
    with torch.no_grad():
        # plain lists: a shared-memory tensor would not outlive this process
        queue.put((module(x, x, x)[0].tolist(), np.compat.long is int))


def test_plugin_objects_work_in_a_spawned_process():
    """A spawned worker (data loader, distributed) imports the plugin, and its fixes, by itself."""
    from kvattn_fairseq.modules import MemSizerAttention

    m = MemSizerAttention(8, 2, 3, "decoder").eval()
    x = torch.randn(4, 1, 8)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_spawned_forward, args=((m, x), queue))
    proc.start()
    out, compat_ok = queue.get(timeout=120)
    proc.join(60)
    assert proc.exitcode == 0 and compat_ok
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(out), m(x, x, x)[0])


@pytest.mark.parametrize("argv", [["--user-dir"]])
def test_user_dir_command(argv):
    proc = run([sys.executable, "-m", "kvattn_fairseq", *argv], timeout=None)
    assert proc.returncode == 0
    path = proc.stdout.strip().splitlines()[-1]
    assert os.path.isfile(os.path.join(path, "__init__.py")) and os.path.basename(path) == "kvattn_fairseq"
