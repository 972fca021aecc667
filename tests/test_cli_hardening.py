"""Bad flags through fairseq's own parser: every flag the plugin adds refuses a bad value with one line naming it,
before anything is written.  (Inputs longer than the model admits: tests/test_cli_e2e.py.)"""
import pytest

from fairseq import options

from kvattn_fairseq.modules.registry import (POSITION_FLAGS, AttentionConfigError, all_options, choice, positive_float,
                                             positive_float_list)

import fairseq_runs as runs
from conftest import USER_DIR, run_cli

BAD = {positive_float: "-1", positive_float_list: "1,-2"}


def bad_value(opt):
    if opt.type in BAD:
        return BAD[opt.type]
    if getattr(opt.type, "__name__", "") == "choice":
        return "no-such-choice"
    if getattr(opt.type, "__name__", "") == "short_conv_kernel":
        return "-1"  # 0 is valid here: no convolution
    return "0"


FLAGS = [(o.flag, bad_value(o)) for o in all_options()]


def _parse(*flags):
    options.parse_args_and_arch(options.get_training_parser(), ["data", "--user-dir", USER_DIR, "--task",
                                                                "translation", "--arch", "kvattn_transformer_tiny",
                                                                *flags])


@pytest.mark.parametrize("flag,value", FLAGS, ids=[f for f, _ in FLAGS])
def test_every_plugin_flag_refuses_a_bad_value_at_parse_time(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        _parse(flag, value)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"argument {flag}:" in err[0] and "error" in err[0], err[:2]  # no usage block


@pytest.mark.parametrize("flag", sorted(POSITION_FLAGS.values()))
@pytest.mark.parametrize("value", ["no-such-kind", "softmax*3", "softmax,no-such-kind"])
def test_every_position_flag_refuses_a_bad_plan_at_parse_time(flag, value):
    """A plan needs the layer count, so the architecture (run inside parse_args_and_arch) checks it; the CLI prints
    the error as one line (test_attention_args.py runs fairseq-train)."""
    with pytest.raises(AttentionConfigError, match=f"^{flag}: "):
        _parse(flag, value)


def test_choice_parser_names_the_choices():
    with pytest.raises(Exception, match="expected one of a, b"):
        choice("a", "b")("c")
