"""The experiment spine (run/spine.py): the one resume rule, settings record, lock and --force every experiment
gets, on a toy experiment of plain Python steps (the experiments' own tests run the real ones)."""
import json
import os

import pytest

from kvattn_fairseq.run.spine import Runner, Step
from kvattn_fairseq.util.errors import OneLineError
from kvattn_fairseq.util.io import mark


class Toy:
    """data -> model -> score, and a table drawn at every run; each step counts its runs."""

    def __init__(self, work, size=3, fail_model=False, check=None):
        self.work, self.runs = str(work), []
        self.size, self.fail_model, self.check = size, fail_model, check

    def steps(self):
        def data(ctx):
            self.runs.append("data")
            os.makedirs(ctx.out)
            with open(os.path.join(ctx.out, "numbers.txt"), "w") as f:
                f.write(" ".join(map(str, range(self.size))))
            mark(ctx.out)

        def model(ctx):
            self.runs.append("model")
            os.makedirs(ctx.out, exist_ok=True)
            with open(os.path.join(ctx.out, "progress.txt"), "a") as f:
                f.write("x")
            mark(ctx.out)
            if self.fail_model:
                raise OneLineError("the model step failed")
            with open(os.path.join(ctx.inputs["data"], "numbers.txt")) as f:
                total = sum(map(int, f.read().split()))
            with open(os.path.join(ctx.out, "weights.txt"), "w") as f:
                f.write(str(total))
            mark(ctx.out)

        def score(ctx):
            self.runs.append("score")
            with open(os.path.join(ctx.inputs["model"], "weights.txt")) as f:
                json.dump({"score": int(f.read())}, open(ctx.out, "w"))

        def table(ctx):
            self.runs.append("table")
            open(ctx.out, "w").write("| score |\n")

        return [Step("data", "data", {"size": self.size}, data),
                Step("model", "model", {"kind": "toy"}, model, needs=("data",), resumable=True, check=self.check),
                Step("score", "score.json", {}, score, needs=("model",)),
                Step("table", "table.md", {}, table, needs=("score",), always=True)]

    def run(self, force=False):
        return Runner("toy", self.work, force=force).run(self.steps())


def test_a_rerun_skips_what_was_made_with_the_same_settings(tmp_path):
    toy = Toy(tmp_path)
    toy.run()
    assert toy.runs == ["data", "model", "score", "table"]
    assert json.loads((tmp_path / "score.json").read_text()) == {"score": 3}
    toy.runs.clear()
    toy.run()
    assert toy.runs == ["table"]  # the table is drawn at every run
    record = json.loads((tmp_path / "steps" / "model.json").read_text())
    assert record["settings"] == {"kind": "toy"} and record["finished"] and record["inputs"]["data"]


def test_other_settings_are_refused_before_any_step_and_redone_with_force(tmp_path, capsys):
    Toy(tmp_path).run()
    before = (tmp_path / "score.json").read_text()
    toy = Toy(tmp_path, size=5)
    with pytest.raises(OneLineError) as e:
        toy.run()
    assert str(e.value) == (f"data ({tmp_path / 'data'}) was made with other settings (size 3 -> 5); pass --force to "
                            f"make it again (only what this tool made is removed)")
    assert toy.runs == [] and (tmp_path / "score.json").read_text() == before
    toy.run(force=True)  # the data, and everything made from it
    assert toy.runs == ["data", "model", "score", "table"]
    assert json.loads((tmp_path / "score.json").read_text()) == {"score": 10}


def test_an_interrupted_step_is_continued_where_it_can_be(tmp_path):
    toy = Toy(tmp_path, fail_model=True)
    with pytest.raises(OneLineError, match="the model step failed"):
        toy.run()
    assert not json.loads((tmp_path / "steps" / "model.json").read_text())["finished"]
    toy = Toy(tmp_path)
    toy.run()  # no --force needed: same settings, not finished
    assert toy.runs == ["model", "score", "table"]
    assert (tmp_path / "model" / "progress.txt").read_text() == "xx"  # continued, not started over


def test_a_retrained_input_needs_force_to_replace_what_was_made_from_it(tmp_path):
    Toy(tmp_path).run()
    import shutil

    shutil.rmtree(tmp_path / "model")  # the user removes a model to train it again
    toy = Toy(tmp_path)
    with pytest.raises(OneLineError, match=r"score \(.*\) was made with other settings \(made from another model\)"):
        toy.run()
    assert toy.runs == [] and not (tmp_path / "model").exists()
    toy.run(force=True)
    assert toy.runs == ["model", "score", "table"]


def test_force_removes_only_what_the_tool_made(tmp_path):
    Toy(tmp_path).run()
    (tmp_path / "data" / "mine.txt").write_text("the user's")
    with pytest.raises(OneLineError, match=r"holds files this tool did not make \(mine.txt\)"):
        Toy(tmp_path, size=4).run(force=True)
    assert (tmp_path / "data" / "numbers.txt").read_text() == "0 1 2"


def test_an_output_without_a_record_is_not_replaced_silently(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "numbers.txt").write_text("9")
    with pytest.raises(OneLineError, match=r"data .* has no record of this tool's.*--force"):
        Toy(tmp_path).run()
    assert (tmp_path / "data" / "numbers.txt").read_text() == "9"


def test_every_check_runs_before_the_first_step(tmp_path):
    def refuse():
        raise OneLineError("--arch: no such architecture")

    toy = Toy(tmp_path, check=refuse)
    with pytest.raises(OneLineError) as e:
        toy.run()
    assert str(e.value) == "model: --arch: no such architecture" and toy.runs == []
    assert not (tmp_path / "data").exists()


def test_one_run_per_work_directory(tmp_path):
    from kvattn_fairseq.util.lock import work_lock

    with work_lock(str(tmp_path)):
        with pytest.raises(OneLineError, match=rf"is in use by another run \(process {os.getpid()}: "):
            Toy(tmp_path).run()


def test_a_work_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "w").write_text("notes")
    with pytest.raises(OneLineError, match="--work .* exists and is not a directory"):
        Toy(tmp_path / "w").run()
