"""The papers' recipes (kvattn_fairseq/papers) as fairseq-train commands (kvattn_fairseq/run/train.py, behind
`python -m kvattn_fairseq experiments` and scripts/train.sh) and hydra configs (run/hydra.py): every command parses
with fairseq's own parser, --kind placement, passthrough overrides, --tiny, bad input, a real tiny training run that
resumes, and fairseq-hydra-train on a generated config."""
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import kvattn_fairseq
from fairseq import models as fairseq_models
from kvattn_fairseq.data import synthetic
from kvattn_fairseq.papers import RECIPES
from kvattn_fairseq.run import hydra as H
from kvattn_fairseq.commands import experiments
from kvattn_fairseq.run import train as E
from kvattn_fairseq.util.errors import OneLineError
from kvattn_fairseq.models.building import DictionaryTask, make_dictionary, parse_model_args
from kvattn_fairseq.modules.registry import ATTENTION_KINDS, position_dest
from conftest import USER_DIR, fairseq_tool, run

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SH = ROOT / "scripts" / "train.sh"
CONFIGS = ROOT / "configs"
KINDS = sorted(ATTENTION_KINDS)


def _fitting(name):
    positions = E.positions_of(RECIPES[name].arch)
    return [k for k in KINDS if any(p in ATTENTION_KINDS[k].positions for p in positions)]


def _parse(name, kind=None, tiny=False, extra=()):
    exp = RECIPES[name]
    arch, flags, notes = E.train_args(name, kind, tiny, extra)
    argv = ["DATA_BIN", "--user-dir", USER_DIR, "--task", exp.task, "--arch", arch, "--save-dir", "SAVE", *flags]
    args, _ = H.parse_training_args(argv)
    return args, notes


# --- the recipes ------------------------------------------------------------------------------------------------------
def test_recipes_cover_the_papers():
    names = set(RECIPES)
    assert {"memsizer_wmt16_en_de", "memsizer_cnn_dm", "memsizer_wikitext103", "kv_multi30k_en_de"} <= names
    assert {f"kv_synthetic_{t}" for t in synthetic.TASKS} <= names
    rows = ("softmax8", "mgk4", "smgk4", "mgk8", "smgk8", "linear8", "mlk4", "mlk8")  # MGK paper Table 3
    assert {f"mgk_wikitext103_{r}" for r in rows} <= names
    for exp in RECIPES.values():
        assert exp.source and exp.data and exp.summary
        assert E.model_of(exp.arch) in E.TINY_ARCH
        groups = E.groups(exp.flags)
        flags = [f for f, _ in groups]
        assert len(flags) == len(set(flags)), f"{exp.name}: a flag is set twice"
        assert "--arch" not in flags and "--task" not in flags and "--save-dir" not in flags


def test_paper_values_reach_fairseq():
    """Spot checks of the values fairseq ends up with (sources in kvattn_fairseq/papers/*.py)."""
    a, _ = _parse("memsizer_wmt16_en_de")
    assert (a.arch, a.lr, a.lr_scheduler, a.warmup_updates, a.warmup_init_lr) == \
        ("memsizer_wmt_en_de_big", [5e-4], "inverse_sqrt", 4000, 1e-7)
    assert (a.max_tokens, a.update_freq, a.fp16, a.dropout, a.label_smoothing, a.max_update, a.seed) == \
        (3584, [16], True, 0.3, 0.1, 90000, 8)
    assert a.share_all_embeddings and a.eval_bleu and a.best_checkpoint_metric == "bleu"
    assert (a.eval_bleu_remove_bpe, a.eval_bleu_detok) == ("sentencepiece", "space")  # prepare-wmt16-en-de.sh's
    assert (a.encoder_layers, a.encoder_embed_dim, a.encoder_attention_heads) == (6, 1024, 16)
    assert (a.encoder_attention_type, a.decoder_attention_type, a.cross_attention_type) == \
        ("softmax", "memsizer", "memsizer")
    assert (a.memsizer_self_slots, a.memsizer_cross_slots) == (4, 32)
    a, _ = _parse("memsizer_wikitext103")
    assert (a.task, a.optimizer, a.lr, a.min_lr, a.stop_min_lr, a.t_mult, a.lr_period_updates, a.lr_shrink) == \
        ("language_modeling", "nag", [1.0], 1e-4, 1e-9, 2.0, 270000, 0.75)
    assert (a.warmup_updates, a.max_tokens, a.update_freq, a.tokens_per_sample, a.max_update, a.clip_norm) == \
        (16000, 3072, [3], 512, 286000, 0.1)
    assert (a.criterion, a.decoder_layers, a.decoder_layerdrop, a.decoder_attention_type) == \
        ("adaptive_loss", 32, 0.2, "memsizer")
    a, _ = _parse("mgk_wikitext103_mgk4")
    assert (a.lr, a.warmup_updates, a.max_update, a.tokens_per_sample, a.batch_size, a.clip_norm, a.seed) == \
        ([2.5e-4], 2000, 500000, 256, 96, 0.25, 1111)
    assert (a.decoder_layers, a.decoder_embed_dim, a.decoder_attention_heads, a.decoder_attention_type) == \
        (16, 128, 4, "mgk")
    a, _ = _parse("kv_synthetic_sort")
    assert (a.lr, a.lr_scheduler, a.warmup_updates, a.clip_norm, a.batch_size, a.max_epoch, a.max_update) == \
        ([1e-3], "cosine", 5, 5.0, 128, 2, 780)
    assert (a.encoder_attention_type, a.decoder_attention_type, a.cross_attention_type) == ("kv", "kv", "softmax")
    a, _ = _parse("kv_multi30k_en_de")
    assert abs(a.lr[0] - (256 * 4000) ** -0.5) < 1e-6  # the notebook's Noam peak at d_model 256
    assert (a.batch_size, a.max_epoch, a.label_smoothing, a.adam_eps) == (50, 20, 0.1, 1e-9)


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_command_parses_for_every_kind_that_fits(name):
    """fairseq's own parser (and the architecture function, which validates the attention) accepts the command
    with the experiment's attention and with --kind K for every kind that fits somewhere in its model."""
    arch = RECIPES[name].arch
    own = parse_model_args(arch)
    for kind in [None, *_fitting(name)]:
        args, notes = _parse(name, kind)
        assert args.arch == arch
        for p in E.positions_of(arch):
            if kind is None:
                expected = getattr(own, position_dest(p))
            else:
                expected = kind if p in ATTENTION_KINDS[kind].positions else "softmax"
            assert getattr(args, position_dest(p)) == expected, (kind, p)
        assert bool(notes) == (kind is not None)


def test_kind_placement_puts_softmax_where_the_kind_does_not_fit():
    flags, notes = E.kind_placement("memsizer_wmt_en_de_big", "kv")
    assert flags == ["--encoder-attention-type", "kv", "--decoder-attention-type", "kv",
                     "--cross-attention-type", "softmax"]
    assert notes == ["--kind kv: encoder self-attention: kv; decoder self-attention: kv; cross-attention: softmax "
                     f"(kv cannot go there: {ATTENTION_KINDS['kv'].unsupported['cross']})"]
    flags, notes = E.kind_placement("kv_synthetic", "linformer")
    assert flags == ["--encoder-attention-type", "linformer", "--decoder-attention-type", "softmax",
                     "--cross-attention-type", "linformer"]
    assert "decoder self-attention: softmax (linformer cannot go there: " in notes[0]
    flags, _ = E.kind_placement("memsizer_lm_wiki103", "mlk")
    assert flags == ["--decoder-attention-type", "mlk"]
    with pytest.raises(OneLineError, match="fits no attention position"):
        E.kind_placement("mgk_lm_wiki103_mgk4", "linformer")
    with pytest.raises(OneLineError, match="unknown attention kind 'nope'"):
        E.kind_placement("kv_synthetic", "nope")


def test_passthrough_flags_come_last_and_win():
    extra = ["--lr", "3e-4", "--max-tokens", "100", "--decoder-attention-type", "softmax", "--update-freq", "2",
             "--distributed-world-size", "1"]
    args, _ = _parse("memsizer_wmt16_en_de", kind="linear", extra=extra)
    assert (args.lr, args.max_tokens, args.update_freq) == ([3e-4], 100, [2])
    assert (args.encoder_attention_type, args.decoder_attention_type, args.cross_attention_type) == \
        ("linear", "softmax", "linear")
    _, flags, _ = E.train_args("memsizer_wmt16_en_de", "linear", extra=extra)
    assert flags[-len(extra):] == extra
    cmd = E.build_command("kv_synthetic_copy", "D", "S", extra=["--max-update", "7"])
    assert cmd.argv[1:9] == ["D", "--user-dir", USER_DIR, "--task", "translation", "--arch", "kv_synthetic",
                             "--save-dir"] and cmd.argv[-2:] == ["--max-update", "7"]
    assert os.path.basename(cmd.argv[0]) == "fairseq-train"
    assert E.last_value(cmd.argv, "--max-update") == "7"


def test_tiny_keeps_the_attention_layout_and_drops_the_big_settings():
    args, notes = _parse("memsizer_wmt16_en_de", tiny=True)
    assert args.arch == "kvattn_transformer_tiny" and args.encoder_embed_dim == 64
    assert (args.encoder_attention_type, args.decoder_attention_type, args.cross_attention_type) == \
        ("softmax", "memsizer", "memsizer")
    assert (args.memsizer_self_slots, args.memsizer_cross_slots, args.memsizer_q_init_scale) == (4, 32, 8.0)
    assert (args.max_update, args.update_freq, args.max_tokens, args.warmup_updates, args.max_valid_steps) == \
        (4, [1], 1024, 1, 2)
    assert not args.fp16
    assert args.lr == [5e-4] and args.label_smoothing == 0.1 and args.eval_bleu  # the recipe otherwise stays
    assert notes and notes[0].startswith("--tiny")
    args, _ = _parse("mgk_wikitext103_mgk4", tiny=True)
    assert (args.arch, args.decoder_attention_type, args.mgk_head_dim, args.criterion, args.tokens_per_sample) == \
        ("kvattn_lm_tiny", "mgk", 16, "cross_entropy", 64)


@pytest.mark.parametrize("name", list(RECIPES))
def test_tiny_models_build(name):
    kinds = [None] + (_fitting(name) if name in ("memsizer_wmt16_en_de", "memsizer_wikitext103") else [])
    for kind in kinds:
        args, _ = _parse(name, kind, tiny=True)
        torch.manual_seed(0)
        model = fairseq_models.build_model(args, DictionaryTask(make_dictionary(40)))
        # (linformer's projections are k x max positions per layer)
        assert sum(p.numel() for p in model.parameters()) < 4_000_000, (name, kind)


def _compose(config_dir, name, overrides=("task.data=D",)):
    """The config as fairseq-hydra-train sees it: composed over the FairseqConfig schema stored under the config's
    name, fairseq's add_defaults, then resolved."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fairseq.dataclass.initialize import add_defaults, hydra_init

    GlobalHydra.instance().clear()
    hydra_init(name)
    # version_base 1.1: what fairseq-hydra-train runs under (it names none), and what fairseq-train's own use of
    # hydra.experimental needs to stay the process-wide setting
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.1"):
        cfg = compose(config_name=name, overrides=list(overrides))
    GlobalHydra.instance().clear()
    add_defaults(cfg)
    return cfg


def _resolved(cfg):
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    return cfg


def _components(cfg):
    """Criterion, optimizer and learning-rate schedule as fairseq's trainer builds them (fp32)."""
    from fairseq import criterions, optim
    from fairseq.optim import lr_scheduler

    criterion = criterions.build_criterion(cfg.criterion, DictionaryTask(make_dictionary(40)))
    optimizer = optim.build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(3))])
    schedule = lr_scheduler.build_lr_scheduler(cfg.lr_scheduler, optimizer)
    return criterion, optimizer, schedule


@pytest.mark.parametrize("name", list(RECIPES))
def test_committed_hydra_config_is_the_command(name):
    """The committed YAML composes the way fairseq-hydra-train does it and holds the values fairseq's parser gives
    the recipe's flags; the criterion, optimizer and schedule build from it and from fairseq-train's own
    namespace-to-config conversion alike, with the same learning rates."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args, _ = _parse(name)
    cfg = _compose(CONFIGS, name, ["task.data=D", "checkpoint.save_dir=S"])
    assert cfg.task.data == "D" and cfg.checkpoint.save_dir == "S"
    for group, body in H.hydra_config(name).items():
        if group == "hydra":
            continue
        resolved = OmegaConf.to_container(cfg[group], resolve=True)
        for key, value in body.items():
            if key == "data":
                continue
            assert OmegaConf.to_container(cfg[group], resolve=False)[key] == value, (group, key)
            if key != "_name" and not str(value).startswith("${"):  # as fairseq-train's parser has it
                assert resolved[key] == H._plain(getattr(args, key)), (group, key)
    built = [_components(convert_namespace_to_omegaconf(args)), _components(_resolved(cfg))]
    (crit_a, opt_a, sched_a), (crit_b, opt_b, sched_b) = built
    assert type(crit_a) is type(crit_b) and type(opt_a) is type(opt_b) and type(sched_a) is type(sched_b)
    assert opt_a.optimizer.defaults == opt_b.optimizer.defaults
    horizon = args.max_update
    for step in sorted({0, 1, 2, args.warmup_updates, 2 * args.warmup_updates + 7, horizon // 2, horizon - 1}):
        assert sched_a.step_update(step) == pytest.approx(sched_b.step_update(step), rel=1e-12), (name, step)


def test_memsizer_lm_schedule_is_the_fairseq_010_one():
    """lm_wikitext-103.sh's fairseq-0.10 cosine (--lr 1e-4 --max-lr 1 --min-lr 1e-9) in fairseq 0.12 terms: warm-up
    from 1e-7 to 1.0 over 16k updates, then cosine periods of 270k (doubling) down to 1e-4, shrinking by 0.75."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args, _ = _parse("memsizer_wikitext103")
    _, _, sched = _components(convert_namespace_to_omegaconf(args))
    assert sched.step_update(0) == pytest.approx(1e-7)
    assert sched.step_update(16000) == pytest.approx(1.0)
    assert sched.step_update(16000 + 135000) == pytest.approx((1.0 + 1e-4) / 2, rel=1e-6)
    assert sched.step_update(16000 + 270000 - 1) == pytest.approx(1e-4, rel=1e-3)
    assert sched.step_update(16000 + 270000) == pytest.approx(0.75, rel=1e-6)  # second period, shrunk
    assert args.stop_min_lr == 1e-9


def test_drop_removes_a_recipe_flag(capsys):
    arch, flags, notes = E.train_args("memsizer_wmt16_en_de", drop=["fp16", "--eval-bleu-args"])
    assert "--fp16" not in flags and "--eval-bleu-args" not in flags and "--eval-bleu" in flags
    assert notes == ["--drop: removed --fp16 --eval-bleu-args from the recipe's flags"]
    with pytest.raises(OneLineError, match="--drop: --fp32 is not a flag of memsizer_wmt16_en_de"):
        E.train_args("memsizer_wmt16_en_de", drop=["fp32"])
    assert experiments.main(["show", "memsizer_wikitext103", "--drop", "fp16", "--drop=--fp16-init-scale"]) == 0
    command = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert "--fp16" not in command and "--fp16-init-scale" not in command and "--max-tokens" in command


# --- command line: show, list, bad input ------------------------------------------------------------------------------
def test_show_and_list(capsys):
    assert experiments.main(["show", "kv_synthetic_reverse", "--kind", "kv_asym", "--", "--max-update", "9"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("# --kind kv_asym: encoder self-attention: kv_asym; decoder self-attention: kv_asym; "
                             "cross-attention: softmax (kv_asym cannot go there")
    assert "fairseq-train DATA_BIN --user-dir" in out[1] and out[1].endswith("--max-update 9")
    assert experiments.main(["list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.strip().splitlines()]
    assert listed == list(RECIPES)


@pytest.fixture(scope="module")
def reverse_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "reverse"
    return Path(synthetic.generate(str(out), "reverse", train=200, valid=20, test=20, min_len=3, max_len=10))


def _one_line_error(capsys, argv, needle):
    assert experiments.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{experiments.PROG}: error: ") and needle in err[0], err


def test_bad_input_is_one_line_and_nothing_starts(tmp_path, capsys, reverse_data):
    save = tmp_path / "save"
    _one_line_error(capsys, ["train", "nope", str(reverse_data), str(save)], "unknown experiment 'nope'")
    _one_line_error(capsys, ["train", "kv_synthetic_reverse", str(reverse_data), str(save), "--kind", "nope"],
                    "unknown attention kind 'nope'")
    _one_line_error(capsys, ["train", "kv_synthetic_reverse", str(tmp_path / "missing"), str(save)],
                    "is not a directory")
    _one_line_error(capsys, ["train", "kv_multi30k_en_de", str(reverse_data), str(save)], "dict.en.txt is missing")
    _one_line_error(capsys, ["train", "memsizer_wikitext103", str(reverse_data), str(save)], "dict.txt is missing")
    _one_line_error(capsys, ["train", "mgk_wikitext103_mlk8", str(reverse_data), str(save), "--kind", "linformer"],
                    "fits no attention position")
    # the language pair comes from the effective flags, passthrough included
    _one_line_error(capsys, ["train", "kv_synthetic_reverse", str(reverse_data), str(save), "--", "--target-lang",
                             "xx"], "dict.xx.txt is missing")
    _one_line_error(capsys, ["show", "nope"], "unknown experiment")
    assert not save.exists()


@pytest.mark.slow
def test_train_sh_bad_input_exits_2(tmp_path):
    proc = run([str(TRAIN_SH), "kv_synthetic_reverse", str(tmp_path / "none"), str(tmp_path / "s")],
               env=_env(), timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == [f"train.sh: error: DATA_BIN: {tmp_path / 'none'} is not a directory (the fairseq-preprocess "
                      f"output: {RECIPES['kv_synthetic_reverse'].data})"]
    assert not (tmp_path / "s").exists() and proc.stdout == ""


# --- real runs --------------------------------------------------------------------------------------------------------
def _env():
    return dict(os.environ, PYTHON=sys.executable, PYTHONWARNINGS="ignore",
                OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))


def _losses(log):
    return [(int(m.group(2)), m.group(1)) for m in re.finditer(r"loss=([\d.]+),.*?num_updates=(\d+)", log)]


@pytest.fixture(scope="module")
def tiny_run(reverse_data, tmp_path_factory):
    """scripts/train.sh EXPERIMENT DATA_BIN SAVE_DIR --tiny, run once for the tests below: (save dir, output)."""
    save = tmp_path_factory.mktemp("train_sh") / "ckpt"
    proc = run([str(TRAIN_SH), "kv_synthetic_reverse", str(reverse_data), str(save), "--tiny"],
               env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save, proc


@pytest.mark.slow
def test_train_sh_tiny_run_writes_a_checkpoint_and_resumes(tiny_run, reverse_data):
    save, proc = tiny_run
    head = proc.stdout.splitlines()[:2]
    assert head[0].startswith("# --tiny: --arch kvattn_transformer_tiny")
    assert "fairseq-train" in head[1] and "--max-update 4" in head[1]
    assert [u for u, _ in _losses(proc.stdout + proc.stderr)] == [1, 2, 3, 4]
    assert (save / "checkpoint_last.pt").exists()
    ckpt = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    model_cfg = ckpt["cfg"]["model"]
    assert (model_cfg.arch, model_cfg.encoder_attention_type, model_cfg.decoder_attention_type) == \
        ("kvattn_transformer_tiny", "kv", "kv")

    again = run([str(TRAIN_SH), "kv_synthetic_reverse", str(reverse_data), str(save), "--tiny", "--",
                 "--max-update", "6"], env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "Loaded checkpoint" in log and "(epoch 1 @ 4 updates)" in log
    assert [u for u, _ in _losses(log)] == [5, 6]
    assert torch.load(save / "checkpoint_last.pt", map_location="cpu",
                      weights_only=False)["optimizer_history"][-1]["num_updates"] == 6


# --- hydra ------------------------------------------------------------------------------------------------------------
def test_committed_hydra_configs_are_in_sync_with_the_recipes():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(RECIPES)
    stale = H.write_hydra_configs(str(CONFIGS), check=True)
    assert stale == [], "run: python -m kvattn_fairseq experiments hydra-configs --out configs"
    for path in CONFIGS.glob("*.yaml"):  # nothing tied to one machine: no value is an absolute path
        assert not re.search(r"^\s*(- |[\w.]+: )['\"]?/", path.read_text(), re.M), path


@pytest.mark.slow
def test_fairseq_hydra_train_runs_a_tiny_config(tmp_path, reverse_data, tiny_run):
    configs = tmp_path / "configs"
    assert experiments.main(["hydra-configs", "--tiny", "--out", str(configs)]) == 0
    save = tmp_path / "hydra_ckpt"
    proc = run([*fairseq_tool("fairseq-hydra-train"), "--config-dir", str(configs),
                "--config-name", "kv_synthetic_reverse", f"common.user_dir={kvattn_fairseq.USER_DIR}",
                f"task.data={reverse_data}", f"checkpoint.save_dir={save}",
                "optimization.max_update=2"], env=_env(), timeout=600, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    losses = _losses(log)
    assert [u for u, _ in losses] == [1, 2]
    assert (save / "checkpoint_last.pt").exists()
    assert (save / ".hydra" / "config.yaml").exists()  # hydra's record sits with the checkpoints
    assert sorted(os.listdir(tmp_path)) == sorted(["configs", "hydra_ckpt"])  # the working directory stays clean
    # the hydra config is the argparse command: the same model and data order give the same losses
    _, argparse_run = tiny_run
    assert losses == _losses(argparse_run.stdout + argparse_run.stderr)[:2]
    ckpt = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert (ckpt["cfg"]["model"]["_name"], ckpt["cfg"]["model"]["encoder_attention_type"]) == \
        ("kvattn_transformer_tiny", "kv")
    assert ckpt["kvattn_plan"]["encoder"]["kinds"] == ["kv", "kv"]  # a hydra run records its plan too
    # and the checkpoint decodes with fairseq-generate, every sentence out
    gen = run([*fairseq_tool("fairseq-generate"), str(reverse_data), "--path",
               str(save / "checkpoint_last.pt"), "--user-dir", USER_DIR, "--beam", "2", "--cpu"],
              env=_env(), timeout=600)
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert "Translated 20 sentences" in gen.stdout + gen.stderr


@pytest.mark.parametrize("name", ["memsizer_wmt16_en_de", "memsizer_wikitext103", "kv_synthetic_reverse"])
def test_hydra_and_argparse_build_the_same_model(tmp_path, name):
    """The tiny config composed as fairseq-hydra-train does (schema, add_defaults, resolution) builds, through
    fairseq's legacy-model path, exactly the model fairseq-train builds from the command line."""
    (tmp_path / f"{name}.yaml").write_text(H.hydra_yaml(name, tiny=True))
    cfg = _resolved(_compose(tmp_path, name))
    args, _ = _parse(name, tiny=True)
    task = DictionaryTask(make_dictionary(40))
    torch.manual_seed(0)
    from_hydra = fairseq_models.build_model(cfg.model, task)
    torch.manual_seed(0)
    from_argparse = fairseq_models.build_model(args, task)
    assert type(from_hydra) is type(from_argparse)
    assert from_hydra.max_positions() == from_argparse.max_positions()
    a, b = from_hydra.state_dict(), from_argparse.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert repr(from_hydra) == repr(from_argparse)
