"""Converting trained checkpoints (python -m kvattn_fairseq convert) and attention transfer, in process: what is
carried over, what the converted checkpoint rebuilds to, constant-state decoding where the plan says so, and bad
input refused in one line before anything is written.  The real CLI chain is in test_convert_chain.py."""
import argparse
import os
import subprocess

import pytest
import torch
from fairseq.modules import MultiheadAttention

from kvattn_fairseq.checkpoints import convert
from kvattn_fairseq.models import building
from kvattn_fairseq.criterions.attention_transfer import AttentionTransferCriterion
from kvattn_fairseq.modules import LinearAttention, MemSizerAttention
from kvattn_fairseq.modules.registry import AttentionConfigError

from conftest import build_model, make_dictionary

MT_SIZE = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
           "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "4",
           "--decoder-attention-heads", "4", "--share-all-embeddings", "--dropout", "0"]
LM_SIZE = ["--decoder-layers", "3", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
           "--decoder-attention-heads", "4", "--decoder-input-dim", "32", "--decoder-output-dim", "32", "--dropout", "0"]


def save_checkpoint(path, arch, *flags, task="translation", seed=0):
    """A checkpoint as fairseq-train writes it: its config (model args as a Namespace), weights, training state."""
    model = build_model(arch, *flags, seed=seed, dictionary=make_dictionary(), max_target_positions=64)
    args = building.parse_model_args(arch, *flags)
    args.max_target_positions = 64
    torch.save({"cfg": {"model": args, "task": {"_name": task}, "dataset": {"max_tokens": 500}}, "args": None,
                "model": model.state_dict(),
                "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                                       "lr_scheduler_state": {"best": 1.0}, "num_updates": 7}],
                "extra_state": {"train_iterator": {"epoch": 3, "iterations_in_epoch": 0}},
                "last_optimizer_state": None}, path)
    return model


def load(path):
    state, args, _ = convert.load_source(str(path))
    return convert.source_model(state, args, str(path)), args, state


def sample(d, bsz=3, src_len=6, tgt_len=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(d.nspecial, len(d), (bsz, src_len), generator=gen)
    src[0, :2] = d.pad()  # left padding, as the translation task makes it
    src[:, -1] = d.eos()
    prev = torch.randint(d.nspecial, len(d), (bsz, tgt_len), generator=gen)
    prev[:, 0] = d.eos()
    prev[1, -2:] = d.pad()
    return {"src_tokens": src, "src_lengths": src.ne(d.pad()).sum(1), "prev_output_tokens": prev}


@pytest.fixture
def mt_teacher(tmp_path):
    path = tmp_path / "teacher.pt"
    return path, save_checkpoint(path, "transformer", *MT_SIZE)


def run(capsys, *argv):
    code = convert.main([str(a) for a in argv])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("arch,flags,positions", [("transformer", MT_SIZE, 3), ("transformer_lm", LM_SIZE, 1)])
def test_converting_without_new_kinds_keeps_the_model_exactly(tmp_path, capsys, arch, flags, positions):
    """Every weight is carried over: the plugin's model of the same sizes computes the same function (fairseq's
    plain transformer_lm is post-norm; kvattn_lm_post_norm keeps that)."""
    src = tmp_path / "in.pt"
    original = save_checkpoint(src, arch, *flags, task="translation" if arch == "transformer" else "language_modeling")
    assert run(capsys, "--checkpoint", src, "--out", tmp_path / "out.pt")[0] == 0
    converted, args, state = load(tmp_path / "out.pt")
    assert args.arch == ("kvattn_transformer" if arch == "transformer" else "kvattn_lm_post_norm")
    net = sample(make_dictionary())
    with torch.no_grad():
        if arch == "transformer":
            expected, got = original(**net)[0], converted(**net)[0]
        else:
            expected, got = original(net["prev_output_tokens"])[0], converted(net["prev_output_tokens"])[0]
    torch.testing.assert_close(got, expected)
    assert state["optimizer_history"][-1]["num_updates"] == 0 and state["last_optimizer_state"] is None


def test_new_kinds_start_from_the_softmax_they_replace(tmp_path, capsys, mt_teacher):
    src, teacher = mt_teacher
    code, out = run(capsys, "--checkpoint", src, "--out", tmp_path / "out.pt", "--decoder-attention-type",
                    "linear,memsizer", "--cross-attention-type", "memsizer,softmax", "--memsizer-cross-slots", "5")
    assert code == 0
    assert "decoder layer 0: softmax -> linear: q_proj, k_proj, v_proj, out_proj" in out
    assert "decoder layer 1: softmax -> memsizer: v_proj (W_r) <- out_proj·v_proj" in out
    assert "kept 3 attention modules" in out  # two encoder layers and the second cross-attention
    model, args, state = load(tmp_path / "out.pt")
    assert args.decoder_attention_type == "linear,memsizer"  # the plan is stored as given
    t, m = teacher.state_dict(), model.state_dict()
    lin, ms = model.decoder.layers[0].self_attn, model.decoder.layers[1].self_attn
    assert isinstance(lin, LinearAttention) and isinstance(ms, MemSizerAttention)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        torch.testing.assert_close(m[f"decoder.layers.0.self_attn.{name}.weight"],
                                   t[f"decoder.layers.0.self_attn.{name}.weight"])
    w_o, w_v = t["decoder.layers.1.self_attn.out_proj.weight"], t["decoder.layers.1.self_attn.v_proj.weight"]
    b_o, b_v = t["decoder.layers.1.self_attn.out_proj.bias"], t["decoder.layers.1.self_attn.v_proj.bias"]
    torch.testing.assert_close(ms.v_proj.weight, (w_o.double() @ w_v.double()).float())
    torch.testing.assert_close(ms.v_proj.bias, (w_o.double() @ b_v.double() + b_o.double()).float())
    assert isinstance(model.decoder.layers[0].encoder_attn, MemSizerAttention)
    assert model.decoder.layers[0].encoder_attn.slots == 5
    kept = [k for k in t if not k.startswith(("decoder.layers.0.self_attn.", "decoder.layers.1.self_attn.",
                                               "decoder.layers.0.encoder_attn."))]
    assert kept and all(torch.equal(m[k], t[k]) for k in kept)  # encoder, FFNs, norms, embeddings, softmax kept
    sites = state["extra_state"]["kvattn_conversion"]["sites"]
    assert [(s["position"], s["layer"], s["to"]) for s in sites] == [("decoder", 0, "linear"), ("cross", 0, "memsizer"),
                                                                    ("decoder", 1, "memsizer")]


@pytest.mark.parametrize("plan", ["window", "window_memsizer", "window_linear", "window_gated_delta"])
def test_a_window_conversion_starts_as_the_teacher_cut_to_its_window(tmp_path, capsys, plan):
    """The window takes the softmax projections and the memory branch starts silent: with a window as long as
    the text, the converted LM computes exactly the teacher's function; a shorter window changes only the
    positions past it."""
    src = tmp_path / "lm.pt"
    teacher = save_checkpoint(src, "transformer_lm", *LM_SIZE, task="language_modeling")
    tokens = sample(make_dictionary(), tgt_len=12)["prev_output_tokens"].clamp(min=4)
    with torch.no_grad():
        expected = teacher(tokens)[0]
    for window, same in ((12, 12), (5, 5)):
        out = tmp_path / f"{plan}{window}.pt"
        assert run(capsys, "--checkpoint", src, "--out", out, "--decoder-attention-type", plan,
                   "--attention-window", window)[0] == 0
        model, args, _ = load(out)
        assert args.decoder_attention_type == plan and args.attention_window == window
        with torch.no_grad():
            got = model(tokens)[0]
        torch.testing.assert_close(got[:, :same], expected[:, :same], atol=1e-5, rtol=1e-5)
        if same < tokens.size(1):
            assert not torch.allclose(got[:, same:], expected[:, same:], atol=1e-3)


def test_model_flags_rebuild_the_converted_model(tmp_path, capsys, mt_teacher):
    """What `--model-flags` prints is what fairseq-train --finetune-from-model needs: the model it builds loads the
    converted weights strictly."""
    src, _ = mt_teacher
    run(capsys, "--checkpoint", src, "--out", tmp_path / "out.pt", "--decoder-attention-type", "memsizer*2",
        "--cross-attention-type", "linear,softmax")
    code, out = run(capsys, "--model-flags", tmp_path / "out.pt")
    flags = out.strip().replace("'", "").split()
    assert code == 0 and flags[:2] == ["--arch", "kvattn_transformer"]
    rebuilt = building.build_model(flags[1], *flags[2:], dictionary=make_dictionary())
    rebuilt.load_state_dict(torch.load(tmp_path / "out.pt", weights_only=True)["model"], strict=True)


def test_a_plugin_checkpoint_converts_too(tmp_path, capsys):
    """No mapping from MemSizer to linear attention keeps a meaning: the new module keeps its own initialisation."""
    src = tmp_path / "ms.pt"
    save_checkpoint(src, "memsizer_lm_tiny", task="language_modeling")
    code, out = run(capsys, "--checkpoint", src, "--out", tmp_path / "out.pt", "--decoder-attention-type",
                    "linear,memsizer")
    assert code == 0
    assert "decoder layer 0: memsizer -> linear: own initialisation (no mapping from memsizer)" in out
    assert "kept 1 attention modules" in out
    model, args, _ = load(tmp_path / "out.pt")
    assert args.arch == "kvattn_lm" and args.memsizer_self_slots == 8  # the source's options are kept


def test_a_converted_plan_decodes_with_constant_state_where_it_says_so(tmp_path, capsys):
    src = tmp_path / "lm.pt"
    save_checkpoint(src, "transformer_lm", *LM_SIZE, task="language_modeling")
    run(capsys, "--checkpoint", src, "--out", tmp_path / "out.pt", "--decoder-attention-type", "memsizer,linear,softmax")
    model, _, _ = load(tmp_path / "out.pt")
    tokens = sample(make_dictionary(), tgt_len=12)["prev_output_tokens"][:1].clamp(min=4)
    state, sizes = {}, []
    with torch.no_grad():
        full = model(tokens)[0]
        for t in range(tokens.size(1)):
            step = model.decoder(tokens[:, :t + 1], incremental_state=state)[0]
            torch.testing.assert_close(step[:, -1], full[:, t], atol=1e-5, rtol=1e-5)
            sizes.append([sum(v.numel() for v in layer.self_attn._get_input_buffer(state).values()
                              if torch.is_tensor(v)) for layer in model.decoder.layers])
    first, last = sizes[0], sizes[-1]
    assert last[0] == first[0] and last[1] == first[1]  # memsizer and linear: constant
    assert last[2] == 12 * first[2]  # softmax: its key/value cache grows with every token


def test_attention_transfer_trains_only_the_new_attention_on_the_teachers_hidden_states(tmp_path, capsys,
                                                                                        mt_teacher):
    src, teacher = mt_teacher
    run(capsys, "--checkpoint", src, "--out", tmp_path / "out.pt", "--decoder-attention-type", "memsizer,softmax",
        "--cross-attention-type", "softmax,linear")
    model, _, _ = load(tmp_path / "out.pt")
    d = make_dictionary()
    task = argparse.Namespace(source_dictionary=d, target_dictionary=d)
    crit = AttentionTransferCriterion(task, str(src))
    net = sample(d)
    batch = {"net_input": net, "target": net["prev_output_tokens"], "ntokens": 15}
    loss, size, logs = crit(model, batch)
    assert size == 1 and set(k for k in logs if k.startswith("mse_")) == {"mse_dec0", "mse_cross1"}
    torch.testing.assert_close(loss, logs["mse_dec0"] + logs["mse_cross1"])
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("decoder.layers.0.self_attn.", "decoder.layers.1.encoder_attn."))
                           for n in trained)
    with torch.no_grad():  # the hooks hand on the teachers' outputs: the model computes the original function
        torch.testing.assert_close(model(**net)[0], teacher(**net)[0])
    assert not list(crit.parameters()) and not crit.state_dict()  # teachers stay out of checkpoints
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = crit(model, batch)[0]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def _trainer_cfg(tmp_path):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from conftest import USER_DIR

    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(tmp_path), "--user-dir", USER_DIR, "--task", "translation", "--arch", "kvattn_transformer", "--cpu",
        "--criterion", "attention_transfer", "--teacher-checkpoint", "set below"])
    return convert_namespace_to_omegaconf(args)


def test_attention_transfer_refuses_a_teacher_that_does_not_fit(tmp_path, capsys, mt_teacher):
    """Checked when fairseq-train builds its Trainer from the model and the criterion: before any checkpoint is
    loaded or batch read (an error in the first step would leave crash.pt behind)."""
    from fairseq.trainer import Trainer

    src, _ = mt_teacher
    cfg = _trainer_cfg(tmp_path)
    d = make_dictionary()
    task = argparse.Namespace(source_dictionary=d, target_dictionary=d)
    run(capsys, "--checkpoint", src, "--out", tmp_path / "out.pt")
    model, _, _ = load(tmp_path / "out.pt")
    with pytest.raises(AttentionConfigError, match="^--teacher-checkpoint: every attention of the model is of the "
                                                   "same kind"):
        Trainer(cfg, task, model, AttentionTransferCriterion(task, str(src)))
    with pytest.raises(AttentionConfigError, match="^--teacher-checkpoint: required"):
        AttentionTransferCriterion(task, "")
    other = tmp_path / "other.pt"
    save_checkpoint(other, "transformer", *[v.replace("32", "48") for v in MT_SIZE])
    run(capsys, "--checkpoint", src, "--out", tmp_path / "ms.pt", "--decoder-attention-type", "memsizer")
    model, _, _ = load(tmp_path / "ms.pt")
    with pytest.raises(AttentionConfigError, match="^--teacher-checkpoint: .* sizes do not fit"):
        Trainer(cfg, task, model, AttentionTransferCriterion(task, str(other)))
    crit = AttentionTransferCriterion(task, str(src))
    assert Trainer(cfg, task, model, crit).criterion is crit  # the teacher it was converted from: accepted


class Evil:
    def __reduce__(self):
        return (os.system, ("echo PWNED > pwned.txt",))


def _bad_inputs(tmp):
    (tmp / "text.pt").write_text("not a checkpoint")
    torch.save({"cfg": {"model": argparse.Namespace(arch="transformer")}, "payload": Evil()}, tmp / "evil.pt")
    torch.save({"cfg": {"model": argparse.Namespace(arch="lstm")}, "model": {}, "extra_state": {},
                "optimizer_history": [{"criterion_name": "x", "optimizer_name": "y", "lr_scheduler_state": {},
                                       "num_updates": 0}]}, tmp / "lstm.pt")
    (tmp / "exists.pt").write_text("")
    (tmp / "adir").mkdir()
    os.symlink("teacher.pt", tmp / "vlink.pt")
    # the device through a link: code that wrongly writes replaces the link, never the machine's /dev/null
    os.symlink(os.devnull, tmp / "null.pt")


BAD = [
    (["--checkpoint", "missing.pt"], "--checkpoint: no such file: missing.pt"),
    (["--checkpoint", "text.pt"], "--checkpoint: cannot read text.pt as a fairseq checkpoint"),
    (["--checkpoint", "evil.pt"], "refusing to load checkpoint evil.pt: it references posix.system"),
    (["--checkpoint", "lstm.pt"], "--checkpoint: lstm.pt holds a 'lstm' model (arch 'lstm'); convert reads"),
    (["--checkpoint", "teacher.pt", "--cross-attention-type", "kv"],
     "--cross-attention-type: 'kv' cannot be used for cross-attention"),
    (["--checkpoint", "teacher.pt", "--decoder-attention-type", "memsizer*3"],
     "--decoder-attention-type: the plan 'memsizer*3' gives 3 layers but the model has 2 (--decoder-layers)"),
    (["--checkpoint", "teacher.pt", "--decoder-attention-type", "mgk", "--mgk-head-dim", "4"],
     "--decoder-attention-type: layer 0's mgk does not fit the softmax attention it replaces: q_proj.weight is "
     "[16, 32] here but [32, 32]"),
    (["--checkpoint", "lm.pt", "--encoder-attention-type", "memsizer"],
     "--encoder-attention-type: a language model has only decoder self-attention"),
    (["--checkpoint", "teacher.pt", "--out", "exists.pt"], "--out exists.pt exists; remove it or pass --force"),
    (["--checkpoint", "teacher.pt", "--out", "teacher.pt"], "--out teacher.pt is the same file as --checkpoint"),
    # writes through devices and links: the output is a regular file, and never the input under another name
    (["--checkpoint", "teacher.pt", "--out", "null.pt", "--force"], "--out null.pt is a device, not a regular"),
    (["--checkpoint", "vlink.pt", "--out", "teacher.pt", "--force"],
     "--out teacher.pt is the same file as --checkpoint vlink.pt"),
    (["--checkpoint", "teacher.pt", "--out", "vlink.pt", "--force"], "--out vlink.pt is the same file as --checkpoint"),
    (["--checkpoint", "teacher.pt", "--out", "adir"], "--out adir is a directory, not a regular file"),
    (["--checkpoint", "teacher.pt", "--seed", "99999999999999999999999"],
     "argument --seed: expected an integer from 0 to 9223372036854775807"),
    (["--model-flags", "lm.pt"], "--model-flags: lm.pt holds fairseq's own 'transformer_lm' model"),
    (["--model-flags", "missing.pt"], "--model-flags: no such file: missing.pt"),
    (["--model-flags", "teacher.pt", "--out", "x.pt"], "--model-flags: only prints the flags of a checkpoint and "
                                                       "takes no other flag (got --out)"),
    (["--model-flags", "teacher.pt", "--decoder-attention-type", "linear"], "(got --decoder-attention-type)"),
]


@pytest.mark.parametrize("argv,expected", BAD, ids=[" ".join(a[1:]) for a, _ in BAD])
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys, mt_teacher, argv, expected,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    _bad_inputs(tmp_path)
    save_checkpoint(tmp_path / "lm.pt", "transformer_lm", *LM_SIZE, task="language_modeling")
    before = {n: os.lstat(tmp_path / n).st_mtime_ns for n in os.listdir(tmp_path)}
    if "--out" not in argv and "--checkpoint" in argv:
        argv = argv + ["--out", "out.pt"]
    assert _exit_code(convert.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m kvattn_fairseq convert: error: "), err[:3]  # no usage
    assert expected in err[0], err[0]
    after = {n: os.lstat(tmp_path / n).st_mtime_ns for n in os.listdir(tmp_path)}
    assert after == before  # nothing written (and nothing run: no pwned.txt)
    assert os.readlink("null.pt") == os.devnull


def _exit_code(main, argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own refusals
        return e.code


def test_a_killed_conversions_temporary_file_is_removed_by_the_next_one(tmp_path, capsys, mt_teacher):
    src, _ = mt_teacher
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = tmp_path / f".out.pt.{dead.pid}-k1ll3d.tmp"  # what a SIGKILLed convert leaves
    leftover.write_bytes(b"half a checkpoint")
    # the user's files, and another output's temporary: not this conversion's to remove
    kept = [tmp_path / ".out.pt.notes.tmp", tmp_path / "important.tmp", tmp_path / f".other.pt.{dead.pid}-x.tmp"]
    for path in kept:
        path.write_text("kept")
    assert run(capsys, "--checkpoint", src, "--out", tmp_path / "out.pt")[0] == 0
    assert not leftover.exists() and all(p.read_text() == "kept" for p in kept)
