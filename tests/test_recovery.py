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


def test_a_tiny_runs_rows_are_never_kept_beside_a_real_runs_and_the_tiny_table_says_so(tmp_path):
    task = {"teacher_updates": 30, "budget_updates": 6, "transfer_updates": 2, "transfer_lr": "1e-3",
            "finetune_lr": "1e-3", "teacher": {"bleu": 3.0}, "metric": "bleu", "seeds": [1],
            "teacher_checkpoint": "checkpoint_best.pt"}
    rows = {"a": {"bleu": 99.0}, "b": {"bleu": 99.0}, "c": {"bleu": 1.0}}
    tiny = {"tiny": True, "tasks": {"mt": {**task, "plans": {"memsizer": {"flags": [], "rows": rows}}},
                                    "lm": {**task, "metric": "ppl", "teacher": {"ppl": 9.0}, "plans": {}}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(tiny))
    real = {"tiny": False, "tasks": {"mt": {**task, "plans": {"window": {"flags": [], "rows": rows}}}}}
    recovery.keep_earlier(str(path), real)
    assert list(real["tasks"]) == ["mt"] and list(real["tasks"]["mt"]["plans"]) == ["window"]
    assert "--tiny" not in recovery.table(real)
    assert recovery.table(tiny).startswith("**--tiny**: tiny models, data and runs: a check of the chain, not a result")


def test_several_seeds_repeat_the_whole_experiment_and_the_table_shows_their_spread(tmp_path):
    a = recovery.build_parser().parse_args(["--out", str(tmp_path / "r"), "--tiny", "--plans", "window",
                                            "--seeds", "1,2"])
    steps, where = recovery.task_steps(a, "mt", recovery.TINY["mt"], ["window"], str(tmp_path / "r"))
    by = {s.name: s for s in steps}
    assert "mt/teacher" in by and "mt/seed2/teacher" in by and "mt/seed2/window/a/convert" in by
    assert by["mt/seed2/teacher"].settings["flags"][by["mt/seed2/teacher"].settings["flags"].index("--seed") + 1] == "2"
    assert by["mt/seed2/window/a/convert"].settings["seed"] == 2
    assert by["mt/seed2/window/a/convert"].settings["checkpoint"] == "mt/seed2/teacher/checkpoint_best.pt"
    assert by["mt/seed2/evaluate/teacher"].settings["checkpoint"] == "checkpoint_best.pt"  # not the last one
    assert "--seed 2" in by["mt/seed2/window/a/finetune"].command
    assert where["teacher"] == {"1": "mt/results/teacher.json", "2": "mt/seed2/results/teacher.json"}
    assert set(where["plans"]["window"]["rows"]["a"]) == {"1", "2"}

    def result(bleu):
        return {"bleu": bleu, "sentences": 500}

    seeds = {"1": (70.0, 99.0, 98.0, 5.0), "2": (97.0, 98.0, 99.0, 6.0), "3": (96.0, 90.0, 91.0, 7.0)}
    rows = {k: recovery.over_seeds("mt", {s: result(v[i]) for s, v in seeds.items()})
            for i, k in enumerate(("d", "a", "b", "c"))}
    assert rows["d"]["bleu"] == 87.667 and rows["d"]["by_seed"] == {"1": 70.0, "2": 97.0, "3": 96.0}
    task = {"teacher_updates": 1500, "budget_updates": 300, "transfer_updates": 75, "metric": "bleu",
            "seeds": [1, 2, 3], "teacher": rows.pop("d"), "plans": {"window": {"flags": ["--x"], "rows": rows}}}
    table = recovery.table({"tiny": False, "tasks": {"mt": task}})
    assert "seeds 1, 2, 3: mean ± standard deviation" in table
    line = table.splitlines()[-1]
    assert line.startswith("| window (`--x`) | 87.67 ± 15.31 | 95.67 ± 4.93 | 96.00 ± 4.36 | 6.00 ± 1.00 | n/a |")
    # (a)/(d) per seed: 141.4%, 101.0%, 93.75%; the target met in the first two seeds only
    assert line.endswith("| 112.1% ± 25.7 | missed (2 of 3 seeds) |"), line
