"""fairseq's own tools refuse in one line, before doing any work, where they would give silently wrong numbers or a
traceback with a plugin model: fairseq-eval-lm windows the model cannot score, --print-alignment without attention
weights, fairseq-interactive with stdin closed, --fp16 without CUDA, size flags far too large, and the plugin's
flag errors without fairseq's usage block.  The fairseq CLI runs are marked slow."""
import argparse
import importlib.util
import os
import subprocess
import sys

import pytest
from fairseq import options

from kvattn_fairseq.patches import one_line_errors, tool_refusals
from kvattn_fairseq.modules.registry import AttentionConfigError, positive_float_list
from kvattn_fairseq.util.errors import OneLineError

import fairseq_runs as runs
from conftest import USER_DIR, build_model, fairseq_tool, run, run_cli


def test_an_empty_entry_in_a_number_list_is_refused():
    with pytest.raises(argparse.ArgumentTypeError, match="'1,,2'"):
        positive_float_list("1,,2")
    assert positive_float_list("1,2") == (1.0, 2.0)
    assert positive_float_list(str((3.0,))) == (3.0,)  # a one-element tuple as a checkpoint's config holds it


def test_a_plugin_flag_error_is_one_line_without_the_usage_block(capsys):
    with pytest.raises(SystemExit) as e:
        options.parse_args_and_arch(options.get_training_parser(),
                                    ["data", "--user-dir", USER_DIR, "--arch", "kvattn_transformer_tiny",
                                     "--mgk-inv-var-scales", "1,,2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "argument --mgk-inv-var-scales:" in err[0], err[:3]


def test_fairseqs_own_flag_errors_keep_their_usage(capsys):
    with pytest.raises(SystemExit):
        options.parse_args_and_arch(options.get_training_parser(), ["data", "--user-dir", USER_DIR, "--max-epoch",
                                                                    "x"])
    assert capsys.readouterr().err.startswith("usage:")


@pytest.mark.parametrize("flags", [("--decoder-attention-type", "memsizer", "--memsizer-self-slots", "1000000000"),
                                   ("--encoder-attention-type", "memsizer", "--memsizer-encoder-slots",
                                    "1000000000")])
def test_a_size_flag_far_too_large_is_one_line_naming_it(flags):
    with pytest.raises(AttentionConfigError, match=r"does not fit in memory \(.*1000000000") as e:
        build_model("kvattn_transformer_tiny", *flags)
    assert str(e.value).startswith(flags[0]) and "\n" not in str(e.value)


@pytest.mark.parametrize("flags,expected", [
    (("--decoder-attention-type", "mgk", "--mgk-pi", "em", "--mgk-pi-positions", "1000000000"),
     "argument --mgk-pi-positions: expected at most 1048576"),
    (("--decoder-attention-type", "mgk", "--mgk-inv-var-scales", "1e30"),
     "argument --mgk-inv-var-scales: expected scales of at most 1000"),
    (("--decoder-attention-type", "mgk", "--mgk-inv-var-scales", "1,nan"), "argument --mgk-inv-var-scales: expected"),
    (("--decoder-attention-type", "memsizer*100000000",),
     "--decoder-attention-type: the plan 'memsizer*100000000' gives 100000000 layers but the model has 2"),
    (("--decoder-attention-type", "memsizer*99999999999",),
     "--decoder-attention-type: the plan 'memsizer*99999999999' gives 99999999999 layers but the model has 2"),
])
def test_sizes_that_would_reach_the_allocator_are_one_line_at_parsing(capsys, flags, expected):
    """Refused while fairseq parses its arguments, before anything is allocated: a plan's layer count is checked
    before the plan is expanded, a table size and a scale have upper limits."""
    with pytest.raises((SystemExit, AttentionConfigError)) as e:
        options.parse_args_and_arch(options.get_training_parser(),
                                    ["data", "--user-dir", USER_DIR, "--arch", "kvattn_transformer_tiny", *flags])
    message = str(e.value) if e.type is AttentionConfigError else capsys.readouterr().err.strip()
    assert expected in message and "\n" not in message, message
    assert e.type is AttentionConfigError or e.value.code == 2


def test_an_allocator_failure_at_run_time_is_one_line():
    error = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                         "you tried to allocate 1024000000000 bytes. Error code 12 (Cannot allocate memory)")
    assert one_line_errors._is_memory_error(RuntimeError, error)
    assert one_line_errors._allocation(error) == "tried to allocate 1024000000000 bytes"
    assert not one_line_errors._is_memory_error(RuntimeError, RuntimeError("shape mismatch"))


def test_the_error_hook_goes_on_only_where_a_fairseq_tool_is_the_program(monkeypatch):
    import types
    from fairseq_cli import train

    assert one_line_errors.fairseq_tool() is None and not one_line_errors.hook_installed()  # pytest is the program
    script = types.ModuleType("__main__")  # the fairseq-train console script: `from fairseq_cli.train import cli_main`
    script.cli_main = train.cli_main
    as_module = types.ModuleType("__main__")  # python -m fairseq_cli.generate
    as_module.__spec__ = importlib.util.find_spec("fairseq_cli.generate")
    for main, tool in ((script, "fairseq_cli.train"), (as_module, "fairseq_cli.generate")):
        monkeypatch.setitem(sys.modules, "__main__", main)
        assert one_line_errors.fairseq_tool() == tool
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    one_line_errors.install_hook()
    assert one_line_errors.hook_installed() and one_line_errors.hook_as_due()
    hook = sys.excepthook
    one_line_errors.install_hook()
    assert sys.excepthook is hook


def test_the_hook_prints_the_plugins_errors_in_one_line_and_keeps_other_tracebacks(monkeypatch, capsys):
    seen = []
    hook = one_line_errors.excepthook(lambda *exc: seen.append(exc[0]))
    monkeypatch.setattr(sys, "argv", ["fairseq-train"])
    monkeypatch.delenv(one_line_errors.TRACEBACK_ENV, raising=False)
    with pytest.raises(SystemExit) as e:
        hook(AttentionConfigError, AttentionConfigError("--mgk-pi: 'em' is not supported by mlk"), None)
    assert e.value.code == 2 and capsys.readouterr().err == "fairseq-train: error: --mgk-pi: 'em' is not supported " \
                                                             "by mlk\n" and seen == []
    hook(KeyError, KeyError("a bug"), None)  # anyone else's error: the previous hook, its traceback
    assert seen == [KeyError] and capsys.readouterr().err == ""
    monkeypatch.setenv(one_line_errors.TRACEBACK_ENV, "1")
    with pytest.raises(SystemExit):
        hook(OneLineError, OneLineError("bad"), None)
    assert seen == [KeyError, OneLineError] and capsys.readouterr().err == "fairseq-train: error: bad\n"


def test_eval_lm_window_checks():
    tool_refusals.check_context_window(64, 32)
    with pytest.raises(OneLineError, match="--context-window 64 leaves nothing to score"):
        tool_refusals.check_context_window(64, 64)
    tool_refusals.check_blocks_fit([64, 64, 10], 64, 64, 0, "test")
    with pytest.raises(OneLineError, match="--tokens-per-sample 65: 2 of the 3 blocks"):
        tool_refusals.check_blocks_fit([65, 65, 10], 64, 65, 0, "test")
    with pytest.raises(OneLineError, match="plus --context-window 8"):
        tool_refusals.check_blocks_fit([60, 60], 64, 60, 8, "test")


def test_fp16_without_cuda_is_refused():
    cfg = argparse.Namespace(common=argparse.Namespace(fp16=True, memory_efficient_fp16=False, cpu=True))
    with pytest.raises(OneLineError, match="^--fp16: .*--cpu was given.*--bf16"):
        tool_refusals.check_fp16_device(cfg)
    cfg.common.fp16 = False
    tool_refusals.check_fp16_device(cfg)


# --- the real CLI -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    work = tmp_path_factory.mktemp("refusals_lm")
    bin_dir = runs.prepare_lm(work)
    runs.train_lm(bin_dir, work / "ckpt", "memsizer_lm_tiny", "--max-update", "2", epochs=1)
    return bin_dir, work / "ckpt" / "checkpoint_last.pt"


def _refused(proc, tool, flag):
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith(f"{tool}: error: {flag}"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Perplexity" not in proc.stdout + proc.stderr
    return last


@pytest.mark.slow
def test_eval_lm_refuses_windows_it_cannot_score(lm):
    bin_dir, ckpt = lm
    whole = runs.eval_lm(bin_dir, ckpt, "--tokens-per-sample", "64")["tokens"]
    assert runs.eval_lm(bin_dir, ckpt, "--tokens-per-sample", "32", "--context-window", "16")["tokens"] == whole
    base = ["fairseq-eval-lm", bin_dir, "--path", ckpt, "--cpu", "--user-dir", USER_DIR, "--gen-subset", "test"]
    for tps in ("2000", "65"):
        last = _refused(run_cli(*base, "--tokens-per-sample", tps, check=False), "fairseq-eval-lm",
                        f"--tokens-per-sample {tps}:")
        assert "64 positions" in last
    _refused(run_cli(*base, "--tokens-per-sample", "64", "--context-window", "64", check=False), "fairseq-eval-lm",
             "--context-window 64 leaves nothing to score")


@pytest.fixture(scope="module")
def mt(tmp_path_factory):
    work = tmp_path_factory.mktemp("refusals_mt")
    bin_dir = runs.prepare_reverse(work, train=200, valid=20, test=10)
    runs.train_translation(bin_dir, work / "ckpt", "memsizer_tiny", "--max-update", "2", epochs=1)
    return bin_dir, work / "ckpt" / "checkpoint_last.pt"


@pytest.mark.slow
def test_generate_interactive_and_train_refuse_in_one_line(mt, tmp_path):
    bin_dir, ckpt = mt
    proc = run_cli("fairseq-generate", bin_dir, "--path", ckpt, "--cpu", "--user-dir", USER_DIR, "--print-alignment",
                   check=False)
    assert "memsizer" in _refused(proc, "fairseq-generate", "--print-alignment:")

    closed = run([*fairseq_tool("fairseq-interactive"), str(bin_dir), "--path", str(ckpt), "--cpu",
                  "--user-dir", USER_DIR, "--source-lang", "src", "--target-lang", "tgt"],
                 stdin=subprocess.DEVNULL, timeout=600, preexec_fn=lambda: os.close(0))
    assert closed.returncode == 2 and "no standard input" in closed.stderr.strip().splitlines()[-1], \
        closed.stderr[-3000:]

    proc = run_cli("fairseq-train", bin_dir, "--arch", "memsizer_tiny", "--save-dir", tmp_path / "fp16", "--fp16",
                   "--max-update", "1", *runs.TRAIN_FLAGS, check=False)
    _refused(proc, "fairseq-train", "--fp16:")
    assert not (tmp_path / "fp16").exists() or not list((tmp_path / "fp16").iterdir())
