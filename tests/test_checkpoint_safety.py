"""Checkpoints survive interrupts and refuse to become another model: atomic checkpoint_last/best copies, a resume
that gets past a damaged checkpoint_last.pt, the attention plan each checkpoint records and the refusal of a load
into another plan (fairseq's own loader, as fairseq-generate / -interactive / -eval-lm call it), averaging only
checkpoints of one plan.  The end-to-end runs of the real CLI (a run killed during the copy, then resumed) are
marked slow."""
import os
import re
import shutil
import signal
import subprocess
import textwrap
import time

import pytest
import torch
from fairseq import checkpoint_utils

from kvattn_fairseq.checkpoints import average as avg, convert, files as checkpoint_files, plan as checkpoint_plan
from kvattn_fairseq.checkpoints.plan import PlanMismatch
from kvattn_fairseq.models import building
from kvattn_fairseq.util.errors import OneLineError

import fairseq_runs as runs
from conftest import build_model, fairseq_tool, make_dictionary, run, run_cli

TINY = ["--encoder-layers", "1", "--decoder-layers", "2", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
        "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2"]


def save(path, *flags, arch="kvattn_transformer", record=True, updates=7):
    """A checkpoint as fairseq-train writes it: config (model args as a Namespace), weights, and the plan record."""
    model = build_model(arch, *TINY, *flags, dictionary=make_dictionary())
    args = building.parse_model_args(arch, *TINY, *flags)
    state = {"cfg": {"model": args, "task": {"_name": "translation"}}, "args": None, "model": model.state_dict(),
             "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                                    "lr_scheduler_state": {"best": 1.0}, "num_updates": updates}],
             "extra_state": {"train_iterator": {"epoch": 1}}, "last_optimizer_state": None}
    if record:
        state["kvattn_plan"] = checkpoint_plan.plan_record(args)
    torch.save(state, path)
    return path


# --- the attention plan ---------------------------------------------------------------------------------------------
def test_the_plan_record_holds_kinds_per_layer_and_options():
    args = building.parse_model_args("kvattn_transformer", *TINY, "--decoder-attention-type", "memsizer,softmax",
                                     "--memsizer-self-slots", "8")
    record = checkpoint_plan.plan_record(args)
    assert record["decoder"]["kinds"] == ["memsizer", "softmax"] and record["encoder"]["kinds"] == ["softmax"]
    assert record["decoder"]["options"]["memsizer"]["memsizer_self_slots"] == 8
    assert checkpoint_plan.plan_record(building.parse_model_args("transformer")) is None  # fairseq's own model


@pytest.mark.parametrize("override", [{"decoder_attention_type": "linear"},
                                      {"decoder_attention_type": "memsizer"},
                                      {"decoder_attention_type": "softmax,linear"}])
def test_a_model_override_to_another_plan_is_refused_in_one_line(tmp_path, override):
    path = save(tmp_path / "softmax.pt")
    with pytest.raises(PlanMismatch) as e:
        checkpoint_utils.load_checkpoint_to_cpu(str(path), override)
    message = str(e.value)
    assert "\n" not in message and "--model-overrides" in message and "decoder attention softmax*2" in message
    assert "load_other_plan" in message and "kvattn_fairseq convert" in message
    # overrides that keep the plan (or touch nothing attention-related) load as before
    checkpoint_utils.load_checkpoint_to_cpu(str(path), {"decoder_attention_type": "softmax", "dropout": 0.0})


def test_an_option_override_is_refused_too(tmp_path):
    path = save(tmp_path / "memsizer.pt", "--decoder-attention-type", "memsizer", "--memsizer-self-slots", "8")
    with pytest.raises(PlanMismatch, match="memsizer option memsizer_self_slots 8 in the checkpoint, 16 here"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path), {"memsizer_self_slots": 16})


def test_the_flag_made_for_it_loads_another_plan_on_purpose(tmp_path):
    path = save(tmp_path / "softmax.pt")
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path), {"decoder_attention_type": "linear",
                                                                 "load_other_plan": True})
    assert state["cfg"]["model"].decoder_attention_type == "linear"


@pytest.mark.parametrize("value", ["False", "True", 1, None])
def test_only_a_real_boolean_loads_another_plan(tmp_path, value):
    path = save(tmp_path / "softmax.pt")
    with pytest.raises(PlanMismatch, match=f"^--model-overrides: 'load_other_plan' must be True or False .*"
                                           f"not {re.escape(repr(value))}$"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path), {"decoder_attention_type": "linear",
                                                             "load_other_plan": value})
    with pytest.raises(PlanMismatch, match="--model-overrides: .* was trained with"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path), {"decoder_attention_type": "linear",
                                                             "load_other_plan": False})


def test_a_checkpoint_without_a_record_loads_as_before(tmp_path):
    path = save(tmp_path / "old.pt", record=False)
    checkpoint_utils.load_checkpoint_to_cpu(str(path), {"decoder_attention_type": "linear"})


def test_a_converted_checkpoint_records_its_new_plan_and_its_source(tmp_path, capsys):
    source = save(tmp_path / "softmax.pt")
    out = tmp_path / "linear.pt"
    assert convert.main(["--checkpoint", str(source), "--out", str(out), "--decoder-attention-type", "linear"]) == 0
    state = torch.load(out, weights_only=True)
    assert state["kvattn_plan"]["decoder"]["kinds"] == ["linear", "linear"]
    assert state["extra_state"]["kvattn_conversion"]["source"] == str(source.resolve())
    assert (os.stat(out).st_mode & 0o777) == 0o666 & ~_umask()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    checkpoint_utils.load_checkpoint_to_cpu(str(out), {"dropout": 0.0})  # its own plan: no refusal
    with pytest.raises(PlanMismatch):
        checkpoint_utils.load_checkpoint_to_cpu(str(out), {"decoder_attention_type": "softmax"})


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("record", [True, False])
def test_average_refuses_checkpoints_of_different_plans(tmp_path, capsys, record):
    a = save(tmp_path / "a.pt", record=record)
    b = save(tmp_path / "b.pt", "--decoder-attention-type", "linear", record=record)  # same shapes as softmax
    code = avg.main(["--inputs", str(a), str(b), "--output", str(tmp_path / "avg.pt")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "different attention plans" in err and "decoder attention softmax*2" in err
    assert not (tmp_path / "avg.pt").exists()


def test_average_records_full_paths_and_the_plan(tmp_path, capsys):
    a, b = save(tmp_path / "a.pt"), save(tmp_path / "b.pt")
    out = tmp_path / "avg.pt"
    assert avg.main(["--inputs", str(a), str(b), "--output", str(out)]) == 0
    state = torch.load(out, weights_only=True)
    assert state["kvattn_averaged_from"] == [str(a.resolve()), str(b.resolve())]
    assert state["kvattn_plan"] == checkpoint_plan.checkpoint_record(torch.load(a, weights_only=False))
    assert (os.stat(out).st_mode & 0o777) == 0o666 & ~_umask()


def test_average_writes_only_a_regular_file_that_is_no_input_and_replaces_one_only_with_force(tmp_path, capsys):
    a, b = save(tmp_path / "a.pt"), save(tmp_path / "b.pt")
    os.symlink("a.pt", tmp_path / "alink.pt")
    # the device through a link: code that wrongly writes replaces the link, never the machine's /dev/null
    os.symlink(os.devnull, tmp_path / "null.pt")
    (tmp_path / "avg.pt").write_text("an earlier average")

    def refused(output, *more):
        assert avg.main(["--inputs", str(a), str(b), "--output", str(output), *more]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    assert f"--output {tmp_path / 'null.pt'} is a device, not a regular file" in refused(tmp_path / "null.pt")
    assert "is a device" in refused(tmp_path / "null.pt", "--force")
    assert os.readlink(tmp_path / "null.pt") == os.devnull
    assert "is the same file as --inputs" in refused(tmp_path / "alink.pt", "--force")  # a link to an input
    assert "exists; remove it or pass --force" in refused(tmp_path / "avg.pt")
    assert (tmp_path / "avg.pt").read_text() == "an earlier average"
    assert avg.main(["--inputs", str(a), str(b), "--output", str(tmp_path / "avg.pt"), "--force"]) == 0
    assert "kvattn_averaged_from" in torch.load(tmp_path / "avg.pt", weights_only=True)
    assert torch.load(a, weights_only=True)["optimizer_history"]  # the input is whole


# --- resuming past a damaged checkpoint_last.pt -------------------------------------------------------------------
def _touch_later(path, seconds):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + int(seconds * 1e9)))


def test_resume_choice(tmp_path):
    assert checkpoint_files.resume_choice(str(tmp_path)) == (None, "")  # nothing saved yet: fairseq starts afresh
    good = save(tmp_path / "checkpoint_1_5.pt", updates=5)
    last = tmp_path / "checkpoint_last.pt"
    shutil.copyfile(good, last)
    assert checkpoint_files.resume_choice(str(tmp_path)) == (None, "")  # whole: fairseq's own choice
    last.write_bytes(good.read_bytes()[:4096])  # truncated as a kill during fairseq's copy leaves it
    path, why = checkpoint_files.resume_choice(str(tmp_path))
    assert path == str(good) and "checkpoint_last.pt is unreadable" in why
    last.unlink()
    assert checkpoint_files.resume_choice(str(tmp_path))[0] == str(good)  # killed before the copy began


def test_resume_decides_by_what_the_checkpoints_hold_never_by_their_times(tmp_path):
    """A copied save directory (cp -r resets the times, in any order): an intact checkpoint_last.pt is used as fairseq
    uses it, however old it looks; a damaged one gives way to the readable checkpoint with the most updates."""
    last = save(tmp_path / "checkpoint_last.pt", updates=42)
    held = save(tmp_path / "checkpoint_4_39.pt", updates=39)
    early = save(tmp_path / "checkpoint1.pt", updates=10)
    (tmp_path / "checkpoint_5_50.pt").write_bytes(held.read_bytes()[:4096])  # a later save, cut short
    for age, path in enumerate([early, tmp_path / "checkpoint_5_50.pt", held, last]):  # last looks the oldest
        os.utime(path, (1e9 - age * 1000, 1e9 - age * 1000))
    assert checkpoint_files.resume_choice(str(tmp_path)) == (None, "")
    last.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    path, why = checkpoint_files.resume_choice(str(tmp_path))
    assert path == str(held) and "checkpoint_4_39.pt holds the most updates (39)" in why
    os.utime(early, (2e9, 2e9))  # the newest by far: still not the one with the most updates
    assert checkpoint_files.resume_choice(str(tmp_path))[0] == str(held)


def test_no_readable_checkpoint_is_refused_naming_it(tmp_path):
    (tmp_path / "checkpoint_last.pt").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    (tmp_path / "checkpoint_1_5.pt").write_bytes(b"garbage")
    with pytest.raises(OneLineError) as e:
        checkpoint_files.resume_choice(str(tmp_path))
    assert str(tmp_path / "checkpoint_last.pt") in str(e.value) and "checkpoint_1_5.pt" in str(e.value)
    assert "--restore-file" in str(e.value) and "\n" not in str(e.value)


def test_fairseqs_copy_and_save_are_atomic(tmp_path):
    from fairseq.file_io import PathManager

    src = save(tmp_path / "checkpoint_1_5.pt")
    dst = tmp_path / "checkpoint_last.pt"
    dst.write_bytes(b"the previous checkpoint")

    def failing_copy(a, b):  # an interrupt halfway through the copy
        with open(a, "rb") as f, open(b, "wb") as g:
            g.write(f.read(100))
        raise KeyboardInterrupt

    real = shutil.copyfile
    shutil.copyfile = failing_copy
    try:
        with pytest.raises(KeyboardInterrupt):
            PathManager.copy(str(src), str(dst), overwrite=True)
    finally:
        shutil.copyfile = real
    assert dst.read_bytes() == b"the previous checkpoint" and sorted(os.listdir(tmp_path)) == sorted(
        ["checkpoint_1_5.pt", "checkpoint_last.pt"])
    assert PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == src.read_bytes()
    checkpoint_utils.torch_persistent_save({"x": 1}, str(tmp_path / "new.pt"))
    assert torch.load(tmp_path / "new.pt") == {"x": 1} and not [n for n in os.listdir(tmp_path) if "tmp" in n]


# --- the real CLI -------------------------------------------------------------------------------------------------
SLOW_COPY = textwrap.dedent('''
    # Test-only fault injection: a copy onto checkpoint_last copies half, says so, then hangs until killed.
    import os, shutil, time
    _real = shutil.copyfile
    def copyfile(src, dst, *a, **k):
        if "checkpoint_last" not in os.path.basename(dst):
            return _real(src, dst, *a, **k)
        with open(src, "rb") as f, open(dst, "wb") as g:
            data = f.read()
            g.write(data[: len(data) // 2])
            g.flush()
        open(os.environ["KVATTN_TEST_COPYING"], "w").close()
        time.sleep(600)
        return _real(src, dst, *a, **k)
    shutil.copyfile = copyfile
''')


@pytest.fixture(scope="module")
def reverse_bin(tmp_path_factory):
    return runs.prepare_reverse(tmp_path_factory.mktemp("ckpt_safety"), train=300, valid=40, test=20)


def _train_cmd(bin_dir, save_dir, updates):
    return [*fairseq_tool("fairseq-train"), str(bin_dir), "--arch", "memsizer_tiny", "--save-dir",
            str(save_dir), "--max-update", str(updates), "--lr", "5e-3", "--save-interval-updates", "4",
            *runs.TRAIN_FLAGS, "--max-tokens", "500"]


@pytest.mark.slow
def test_a_run_killed_during_the_checkpoint_copy_resumes(reverse_bin, tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_COPY)
    marker = tmp_path / "copying"
    save_dir = tmp_path / "save"
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=str(hooks), KVATTN_TEST_COPYING=str(marker))
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(_train_cmd(reverse_bin, save_dir, 8), stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 600
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), (tmp_path / "first.log").read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)  # halfway through the copy onto checkpoint_last.pt
        proc.wait()
    assert (save_dir / "checkpoint_1_4.pt").exists()
    last = save_dir / "checkpoint_last.pt"
    assert not last.exists() or checkpoint_files.unreadable(str(last)) is None  # never a half-copied file

    env.pop("PYTHONPATH")
    resumed = run(_train_cmd(reverse_bin, save_dir, 8), env=env, timeout=900)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert re.search(r"resuming from .*checkpoint_1_4\.pt, the readable checkpoint .* with the most updates", log), \
        log[-3000:]
    assert re.search(r"Loaded checkpoint .*checkpoint_1_4\.pt \(epoch 1 @ 4 updates\)", log), log[-3000:]
    assert "num_updates 8" in log or "@ 8 updates" in log
    assert checkpoint_files.unreadable(str(last)) is None
    assert not [n for n in os.listdir(save_dir) if n.endswith(".tmp")]


@pytest.mark.slow
def test_a_truncated_checkpoint_last_is_skipped_and_generate_refuses_another_plan(reverse_bin, tmp_path):
    save_dir = tmp_path / "save"
    first = run(_train_cmd(reverse_bin, save_dir, 4), timeout=900, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = save_dir / "checkpoint_1_4.pt"
    assert torch.load(ckpt, weights_only=True)["kvattn_plan"]["decoder"]["kinds"] == ["memsizer"] * 2

    # fairseq-generate with an override to another kind: one line, exit 2, nothing translated
    proc = run_cli("fairseq-generate", reverse_bin, "--path", ckpt, "--cpu", "--user-dir", runs.USER_DIR,
                   "--model-overrides", "{'decoder_attention_type': 'softmax'}", check=False)
    assert proc.returncode == 2 and "--model-overrides" in proc.stderr and "S-" not in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("fairseq-generate: error: --model-overrides")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # asked for on purpose: loaded, and weights that do not fit are one line, not torch's list of every tensor
    proc = run_cli("fairseq-generate", reverse_bin, "--path", ckpt, "--cpu", "--user-dir", runs.USER_DIR,
                   "--model-overrides", "{'decoder_attention_type': 'softmax', 'load_other_plan': True}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "on purpose" in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith(
        "fairseq-generate: error: the checkpoint's weights do not fit the model being built:")

    last = save_dir / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[:720_896 if last.stat().st_size > 720_896 else 2048])
    resumed = run(_train_cmd(reverse_bin, save_dir, 6), timeout=900, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert "checkpoint_last.pt is unreadable" in log and "Loaded checkpoint" in log
    assert checkpoint_files.unreadable(str(last)) is None

    # a rerun that builds another plan on these weights is refused in one line
    other = run(_train_cmd(reverse_bin, save_dir, 8) + ["--decoder-attention-type", "linear"],
                timeout=900, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert other.returncode == 2 and "kvattn_fairseq convert" in other.stderr, other.stderr[-3000:]
    assert "Traceback" not in other.stderr and "decoder attention memsizer*2 in the checkpoint, linear*2" in \
        other.stderr.strip().splitlines()[-1]


def test_an_option_a_kind_gained_later_does_not_refuse_an_older_record(tmp_path):
    path = save(tmp_path / "memsizer.pt", "--decoder-attention-type", "memsizer")
    state = torch.load(path, weights_only=False)
    del state["kvattn_plan"]["decoder"]["options"]["memsizer"]["memsizer_q_init_scale"]
    torch.save(state, path)
    checkpoint_utils.load_checkpoint_to_cpu(str(path), {"dropout": 0.0})
    with pytest.raises(PlanMismatch):
        checkpoint_utils.load_checkpoint_to_cpu(str(path), {"memsizer_self_slots": 16})
