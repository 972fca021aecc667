"""Bad attention settings fail before anything is built or written, with one line naming the flag."""
import argparse

import pytest
import torch
from omegaconf import OmegaConf

from kvattn_fairseq.modules import (ATTENTION_KINDS, AttentionConfigError, LinearAttention, MemSizerAttention,
                                    register_attention_kind)
from kvattn_fairseq.modules.registry import check_kind

from conftest import USER_DIR, DummyTask, make_dictionary, parse_model_args, run_cli

from fairseq.models import ARCH_MODEL_REGISTRY


@pytest.mark.parametrize("flags,expected", [
    (["--decoder-attention-type", "nope"], "^--decoder-attention-type: unknown attention type 'nope'"),
    (["--cross-attention-type", "MemSizer"], "^--cross-attention-type: unknown attention type"),
    (["--decoder-attention-type", "memsizer*3"], r"^--decoder-attention-type: the plan 'memsizer\*3' gives 3 layers "
                                                 r"but the model has 2 \(--decoder-layers\)"),
    (["--encoder-attention-type", "softmax,memsizer,linear"], "^--encoder-attention-type: the plan .* gives 3 layers "
                                                              r"but the model has 2 \(--encoder-layers\)"),
    (["--cross-attention-type", "memsizer,memsizer,softmax"], r"but the model has 2 \(--decoder-layers\)"),
    (["--decoder-attention-type", "memsizer*0,softmax*2"], r"^--decoder-attention-type: cannot read 'memsizer\*0'"),
    (["--decoder-attention-type", "memsizer,,softmax"], "^--decoder-attention-type: cannot read ''"),
    (["--decoder-attention-type", "memsizer,nope"], "^--decoder-attention-type: unknown attention type 'nope'"),
    (["--decoder-attention-type", "linformer,softmax"], "^--decoder-attention-type: 'linformer' cannot be used"),
    (["--decoder-attention-type", "memsizer,mgk", "--mgk-inv-var-scales", "1,2,3"], "^--mgk-inv-var-scales: 3 values"),
    (["--decoder-attention-type", "memsizer,linear", "--decoder-layers-to-keep", "0"],
     "^--decoder-layers-to-keep: cannot prune a per-layer --decoder-attention-type plan"),
    (["--decoder-attention-type", "softmax,linear", "--cross-self-attention"], "^--cross-self-attention: only"),
])
def test_architecture_checks_the_plan_once_with_the_layer_count(flags, expected):
    """The position flags are plain strings to argparse; the architecture (run by fairseq's parse_args_and_arch,
    before anything is read or written) parses and checks them once, knowing the number of layers."""
    with pytest.raises(AttentionConfigError, match=expected):
        parse_model_args("memsizer_tiny", *flags)


@pytest.mark.parametrize("value,kinds", [("memsizer", ["memsizer"] * 3), ("memsizer*2,softmax", ["memsizer"] * 2 +
                                         ["softmax"]), ("linear, softmax ,memsizer", ["linear", "softmax", "memsizer"]),
                                         ("softmax*3", ["softmax"] * 3)])
def test_a_plan_gives_each_layer_its_kind(value, kinds):
    from kvattn_fairseq.modules.softmax_attention import SoftmaxAttention  # fairseq's MultiheadAttention

    types = {"memsizer": MemSizerAttention, "softmax": SoftmaxAttention, "linear": LinearAttention}
    model = ARCH_MODEL_REGISTRY["kvattn_lm_tiny"].build_model(
        parse_model_args("kvattn_lm_tiny", "--decoder-layers", "3", "--decoder-attention-type", value),
        DummyTask(make_dictionary()))
    assert [type(layer.self_attn) for layer in model.decoder.layers] == [types[k] for k in kinds]


@pytest.mark.parametrize("flags,expected", [
    (["--memsizer-self-slots", "0"], "argument --memsizer-self-slots: expected a positive integer, got 0"),
    (["--memsizer-cross-slots", "-3"], "argument --memsizer-cross-slots: expected a positive integer, got -3"),
    (["--memsizer-encoder-slots", "four"], "argument --memsizer-encoder-slots: expected a positive integer"),
    (["--memsizer-q-init-scale", "0"], "argument --memsizer-q-init-scale: expected a positive finite number"),
    (["--mgk-pi", "learned"], "argument --mgk-pi: expected one of softmax, clamp, uniform, position, em, got "
                              "'learned'"),
    (["--mgk-inv-var-scales", "1,-3"], "argument --mgk-inv-var-scales: expected comma-separated positive numbers"),
    (["--mgk-estep", "medium"], "argument --mgk-estep: expected one of soft, hard"),
    (["--mgk-components", "0"], "argument --mgk-components: expected a positive integer, got 0"),
    (["--short-conv", "-1"], "argument --short-conv: expected a kernel size from 0 (none) to 64"),
])
def test_parser_rejects_bad_values(flags, expected, capsys):
    with pytest.raises(SystemExit) as e:
        parse_model_args("memsizer_tiny", *flags)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert expected in err


def test_kind_at_a_position_it_cannot_take():
    @register_attention_kind("encoder_only_test", positions=("encoder",), summary="test kind",
                             unsupported={"decoder": "it is not causal"})
    def build(site):
        raise AssertionError("never built")

    try:
        with pytest.raises(AttentionConfigError, match=r"^--decoder-attention-type: 'encoder_only_test' cannot be "
                                                        r"used for decoder self-attention: it is not causal"):
            check_kind("decoder", "encoder_only_test")
        with pytest.raises(AttentionConfigError, match="^--cross-attention-type: 'encoder_only_test' cannot"):
            check_kind("cross", "encoder_only_test")
        assert check_kind("encoder", "encoder_only_test") == "encoder_only_test"
        with pytest.raises(AttentionConfigError, match="^--decoder-attention-type: 'encoder_only_test' cannot"):
            parse_model_args("kvattn_transformer_tiny", "--decoder-attention-type", "encoder_only_test")
        parse_model_args("kvattn_transformer_tiny", "--encoder-attention-type", "encoder_only_test,softmax")
    finally:
        del ATTENTION_KINDS["encoder_only_test"]


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_attention_kind("memsizer", positions=("encoder",), summary="again")(lambda site: None)
    with pytest.raises(ValueError, match="unknown attention position"):
        register_attention_kind("x_test", positions=("middle",), summary="x")(lambda site: None)


def _namespace(**over):
    args = parse_model_args("memsizer_tiny")
    for k, v in over.items():
        setattr(args, k, v)
    return args


@pytest.mark.parametrize("over,flag", [({"memsizer_self_slots": 0}, "--memsizer-self-slots"),
                                       ({"decoder_attention_type": "mgk", "mgk_inv_var_scales": "1,2,3"},
                                        "--mgk-inv-var-scales"),
                                       ({"decoder_attention_type": "mlk", "mgk_pi": "position"}, "--mgk-pi"),
                                       ({"decoder_attention_type": "mgk", "mgk_pi": "position",
                                         "mgk_pi_positions": 100}, "--mgk-pi-positions"),
                                       ({"decoder_attention_type": "mgk", "mgk_pi": "em",
                                         "mgk_pi_positions": 100}, "--mgk-pi-positions"),
                                       ({"decoder_attention_type": "mlk", "mgk_pi": "em"}, "--mgk-pi"),
                                       ({"decoder_attention_type": "smgk", "mgk_pi": "em", "mgk_estep": "hard"},
                                        "--mgk-pi"),
                                       ({"cross_attention_type": "mgk", "mgk_pi": "em"}, "--mgk-pi"),
                                       ({"decoder_attention_type": "bogus"}, "--decoder-attention-type"),
                                       ({"decoder_attention_type": "gated_delta", "short_conv": -2}, "--short-conv"),
                                       ({"decoder_attention_type": "delta", "short_conv": "x"}, "--short-conv"),
                                       ({"encoder_attention_type": "linear", "short_conv": 4}, "--short-conv 4"),
                                       ({"memsizer_kv_init_scale": -1.0}, "--memsizer-kv-init-scale")])
def test_python_api_and_hydra_values_are_checked_at_build(over, flag):
    """Values that bypass argparse (hydra configs, the Python API) are checked before any module is built."""
    args = _namespace(**over)
    with pytest.raises(AttentionConfigError, match=f"^{flag}: "):
        ARCH_MODEL_REGISTRY["memsizer_tiny"].build_model(args, DummyTask(make_dictionary()))


def test_build_from_dictconfig_keeps_the_attention_settings():
    """hydra hands models a DictConfig; fairseq's TransformerConfig would drop unknown keys from one."""
    args = OmegaConf.create(vars(_namespace(memsizer_self_slots=5, decoder_attention_type="softmax,memsizer")))
    model = ARCH_MODEL_REGISTRY["memsizer_tiny"].build_model(args, DummyTask(make_dictionary()))
    first, second = (layer.self_attn for layer in model.decoder.layers)
    assert not isinstance(first, MemSizerAttention)
    assert isinstance(second, MemSizerAttention) and second.slots == 5
    assert OmegaConf.to_container(args)["decoder_attention_type"] == "softmax,memsizer"  # stored as given


@pytest.mark.slow
@pytest.mark.parametrize("flags,expected", [
    (["--decoder-attention-type", "nope"], "--decoder-attention-type: unknown attention type 'nope'"),
    (["--memsizer-self-slots", "0"], "--memsizer-self-slots: expected a positive integer, got 0"),
    (["--cross-self-attention"], "--cross-self-attention: only supported with softmax attention everywhere"),
    (["--decoder-attention-type", "linformer"],
     "--decoder-attention-type: 'linformer' cannot be used for decoder self-attention: Linformer compresses along "
     "positions, so every output would see future tokens; it cannot be causal"),
    (["--cross-attention-type", "kv"], "--cross-attention-type: 'kv' cannot be used for cross-attention: a "
                                       "query-less attention takes each query from its own key"),
    (["--linformer-k", "0"], "--linformer-k: expected a positive integer, got 0"),
    (["--decoder-attention-type", "gated_delta", "--short-conv", "-1"],
     "--short-conv: expected a kernel size from 0 (none) to 64 (a short convolution; longer-range mixing is a "
     "window's job), got -1"),
    (["--encoder-attention-type", "linear", "--short-conv", "4"],
     "--short-conv 4: the short convolution is causal, for decoder self-attention only, and --encoder-attention-type "
     "puts linear attention at encoder self-attention; use --short-conv 0 or another kind there"),
    (["--decoder-attention-type", "memsizer*5,softmax"], "--decoder-attention-type: the plan 'memsizer*5,softmax' "
                                                         "gives 6 layers but the model has 2 (--decoder-layers)"),
    (["--decoder-attention-type", "mgk", "--mgk-components", "2", "--mgk-inv-var-scales", "1,2,3"],
     "--mgk-inv-var-scales: 3 values for 2 components (--mgk-components); give one value or 2"),
    (["--decoder-attention-type", "mlk", "--mgk-pi", "em"], "--mgk-pi: 'em' is not supported by mlk"),
])
def test_cli_errors_are_one_line_and_nothing_is_written(tmp_path, flags, expected):
    data = tmp_path / "no-data-needed"
    save = tmp_path / "ckpt"
    proc = run_cli("fairseq-train", data, "--user-dir", USER_DIR,
                   "--arch", "memsizer_tiny", "--task", "translation", "--cpu", "--save-dir", save, *flags,
                   check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [l for l in proc.stderr.splitlines() if l.strip() and "INFO" not in l and "Warning" not in l]
    assert expected in lines[-1]
    assert "Traceback" not in proc.stderr
    assert not save.exists()


def test_argparse_type_names_in_help():
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    ARCH_MODEL_REGISTRY["memsizer_tiny"].add_args(parser)
    text = parser.format_help()
    for flag in ("--encoder-attention-type", "--decoder-attention-type", "--cross-attention-type",
                 "--memsizer-self-slots", "--memsizer-cross-slots", "--memsizer-q-init-scale"):
        assert flag in text


def test_linformer_refuses_a_source_longer_than_its_projections():
    from kvattn_fairseq.modules import LinformerAttention

    m = LinformerAttention(8, 2, "encoder", max_positions=6, compressed=3)
    x = torch.randn(7, 1, 8)
    with pytest.raises(ValueError, match="a source of 7 tokens is longer than the 6 positions"):
        m(x, x, x)
    with pytest.raises(ValueError, match="cannot be causal"):
        LinformerAttention(8, 2, "decoder", max_positions=6, compressed=3)


def test_kinds_and_archs_listings_show_plans(capsys):
    from kvattn_fairseq.commands import main
    from kvattn_fairseq.modules.plan import compact

    assert compact(["memsizer"] * 5 + ["softmax"]) == "memsizer*5,softmax"
    assert compact(["linear", "softmax", "linear"]) == "linear,softmax,linear"
    assert main(["--kinds"]) == 0
    listing = capsys.readouterr().out
    assert "e.g. memsizer*5,softmax" in listing
    kinds = {line.split()[0]: line.split()[1] for line in listing.splitlines() if line.strip() and
             not line.startswith("A position")}
    assert kinds["gated_delta"] == kinds["window_gated_delta"] == "decoder"
    assert main(["--archs"]) == 0
    lines = {line.split()[1]: line.split()[2:] for line in capsys.readouterr().out.splitlines()}
    assert lines["memsizer_wmt_en_de_big"] == ["encoder=softmax", "decoder=memsizer", "cross=memsizer"]
    assert lines["memsizer_lm_tiny"] == ["decoder=memsizer"]
