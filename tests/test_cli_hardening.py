"""Bad flags through fairseq's own parser: every flag the plugin adds refuses a bad value with one line naming it,
before anything is written.  (Inputs longer than the model admits: tests/test_cli_e2e.py.)"""
import pytest

from fairseq import options

from kvattn_fairseq.modules.registry import POSITION_FLAGS, all_options, choice, positive_float, positive_float_list

import fairseq_runs as runs
from conftest import USER_DIR, run_cli

BAD = {positive_float: "-1", positive_float_list: "1,-2"}


def bad_value(opt):
    if opt.type in BAD:
        return BAD[opt.type]
    if getattr(opt.type, "__name__", "") == "choice":
        return "no-such-choice"
    return "0"


FLAGS = [(flag, "no-such-kind") for flag in POSITION_FLAGS.values()] + [(o.flag, bad_value(o)) for o in all_options()]


@pytest.mark.parametrize("flag,value", FLAGS, ids=[f for f, _ in FLAGS])
def test_every_plugin_flag_refuses_a_bad_value_at_parse_time(flag, value, capsys):
    parser = options.get_training_parser()
    with pytest.raises(SystemExit) as e:
        options.parse_args_and_arch(parser, ["data", "--user-dir", USER_DIR, "--task", "translation", "--arch",
                                             "kvattn_transformer_tiny", flag, value])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}:" in last and "error" in last


def test_choice_parser_names_the_choices():
    with pytest.raises(Exception, match="expected one of a, b"):
        choice("a", "b")("c")
