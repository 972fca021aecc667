"""The recovery experiment's plans, its steps and its results file, without training anything (the chain itself runs
end to end in test_convert_chain.py)."""
import json

import pytest

from kvattn_fairseq.run.specs import recovery


def test_window_plans_replace_decoder_self_attention_and_keep_softmax_cross_attention():
    assert recovery.plan_flags("window_memsizer", "mt", 3, 4) == [
        "--decoder-attention-type", "window_memsizer", "--cross-attention-type", "softmax", "--attention-window", "4"]
    assert recovery.plan_flags("window_linear", "lm", 3, 64) == [
        "--decoder-attention-type", "window_linear", "--attention-window", "64"]
    assert recovery.plan_flags("hybrid", "mt", 3, 64) == [
        "--decoder-attention-type", "memsizer*2,softmax", "--cross-attention-type", "memsizer*2,softmax"]
    # any other plan: SELF[/CROSS], entries separated by ';' once one holds a comma
    assert recovery.split_plans("window;memsizer*2,softmax/softmax") == ["window", "memsizer*2,softmax/softmax"]
    assert recovery.plan_flags("window_memsizer/memsizer", "mt", 3, 8)[1::2] == ["window_memsizer", "memsizer", "8"]
    assert recovery.plan_label("window", 4) == "window W=4" and recovery.plan_label("window", 64) == "window"


@pytest.mark.parametrize("plans, message", [
    ("window/window", "--plans: 'window/window' (mt): --cross-attention-type: 'window' cannot be used for "
                      "cross-attention"),
    ("memsizer*2", "--plans: 'memsizer*2' (mt): --decoder-attention-type: the plan 'memsizer*2' gives 2 layers"),
])
def test_a_plan_that_cannot_be_built_is_refused_in_one_line_before_any_work(capsys, tmp_path, plans, message):
    with pytest.raises(SystemExit) as e:
        recovery.main(["--out", str(tmp_path / "r"), "--plans", plans])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m kvattn_fairseq recovery: error: {message}")
    assert not (tmp_path / "r").exists()


def test_each_plan_is_a_chain_of_steps_sharing_one_conversion(tmp_path):
    """(a) and (b) start from the same converted model, (a) transfers from the teacher first, (c) trains the plan
    from scratch, and every row is evaluated; nothing is written while the steps are declared."""
    a = recovery.build_parser().parse_args(["--out", str(tmp_path / "r"), "--tiny", "--plans", "hybrid"])
    cfg = recovery.TINY["mt"]
    steps, where = recovery.task_steps(a, "mt", cfg, ["hybrid"], str(tmp_path / "r"))
    by = {s.name: s for s in steps}
    assert list(by) == ["mt/data", "mt/teacher", "mt/evaluate/teacher", "mt/hybrid/a/convert", "mt/hybrid/a/transfer",
                        "mt/hybrid/a/finetune", "mt/hybrid/b/finetune", "mt/hybrid/c", "mt/evaluate/hybrid/a",
                        "mt/evaluate/hybrid/b", "mt/evaluate/hybrid/c"]
    assert by["mt/hybrid/a/convert"].needs == ("mt/teacher",)
    assert by["mt/hybrid/b/finetune"].needs[0] == by["mt/hybrid/a/transfer"].needs[0] == "mt/hybrid/a/convert"
    assert "--criterion attention_transfer --teacher-checkpoint" in by["mt/hybrid/a/transfer"].command
    assert "label_smoothed_cross_entropy" in by["mt/hybrid/a/finetune"].command
    assert "--arch kvattn_transformer" in by["mt/hybrid/c"].command
    assert "--decoder-attention-type 'memsizer*1,softmax'" in by["mt/hybrid/c"].command
    n, m, transfer = recovery.budget(cfg, a.budget, a.transfer_share)
    assert transfer >= 2  # a run's first update has the warmup's initial learning rate, 0: --tiny must train too
    assert by["mt/hybrid/a/transfer"].settings["updates"] + by["mt/hybrid/a/finetune"].settings["updates"] == m
    assert by["mt/hybrid/b/finetune"].settings["updates"] == m <= 0.2 * n
    assert set(where["plans"]["hybrid"]["rows"]) == {"a", "b", "c"}
    for step in steps:
        if step.check is not None:  # fairseq-train's own parser accepts every run's command line
            step.check()
    assert not (tmp_path / "r").exists()


def test_a_rerun_keeps_the_rows_of_plans_it_did_not_name_only_for_the_same_teacher(tmp_path):
    task = {"teacher_updates": 1500, "budget_updates": 300, "transfer_updates": 75, "transfer_lr": "1e-3",
            "finetune_lr": "1e-3", "teacher": {"bleu": 97.2}, "metric": "bleu"}
    earlier = {"tasks": {"mt": {**task, "plans": {"memsizer": {"rows": {"a": 1}}, "window": {"rows": {"a": 2}}}}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(earlier))
    now = {"tasks": {"mt": {**task, "plans": {"window": {"rows": {"a": 3}}}}}}
    recovery.keep_earlier(str(path), now)
    assert now["tasks"]["mt"]["plans"] == {"memsizer": {"rows": {"a": 1}}, "window": {"rows": {"a": 3}}}
    other = {"tasks": {"mt": {**task, "teacher": {"bleu": 90.0}, "plans": {"window": {"rows": {"a": 3}}}}}}
    recovery.keep_earlier(str(path), other)
    assert list(other["tasks"]["mt"]["plans"]) == ["window"]
