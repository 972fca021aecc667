"""The experiment spine (run/spine.py): the one resume rule, settings record, lock and --force every experiment
gets, on a toy experiment of plain Python steps (the experiments' own tests run the real ones)."""
import json
import os
import re
import sys
import time

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


def test_a_work_given_as_an_empty_path_under_a_file_or_where_nothing_can_be_written_is_one_line(tmp_path):
    with pytest.raises(OneLineError, match=r"^--work: an empty path; give a directory"):
        Toy("").run()  # not the current directory
    (tmp_path / "notes").write_text("the user's")
    with pytest.raises(OneLineError, match=rf"^--work {tmp_path / 'notes' / 'w'}: cannot create it \(Not a directory"):
        Toy(tmp_path / "notes" / "w").run()
    unwritable = "/sys/kernel"  # exists; no file can be created in it (sysfs), root or not
    if os.path.isdir(unwritable):
        for work in (unwritable, os.path.join(unwritable, "kvattn-test")):
            with pytest.raises(OneLineError) as e:
                Toy(work).run()
            assert str(e.value).startswith((f"--work {work}: ", f"cannot write the run's lock file {work}/"))
            assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "hardlink"])
def test_the_lock_file_is_never_a_link_or_a_pipe(tmp_path, kind):
    """The run truncates and writes its lock file: a link to a file outside the work directory (or a second name
    of one) would lose that file, and opening a pipe would hang or fail with a traceback."""
    work, outside = tmp_path / "w", tmp_path / "thesis.tex"
    work.mkdir()
    outside.write_text("the user's")
    lock = work / ".kvattn.lock"
    {"symlink": lambda: lock.symlink_to(outside), "fifo": lambda: os.mkfifo(lock),
     "hardlink": lambda: os.link(outside, lock)}[kind]()
    toy = Toy(work)
    with pytest.raises(OneLineError, match=rf"^{lock} is (a symbolic link|a pipe|a file with 1 other name).*"
                                           rf"not the lock file this tool makes"):
        toy.run()
    assert toy.runs == [] and outside.read_text() == "the user's" and not (work / "steps").exists()


class Summary(Toy):
    """The toy experiment whose table step also writes results.json and a plot, as every experiment's does."""

    def steps(self):
        steps = super().steps()

        def table(ctx):
            from kvattn_fairseq.util.io import write_atomic

            self.runs.append("table")
            write_atomic(ctx.out, "| score |\n")
            write_atomic(os.path.join(ctx.work, "results.json"), '{"score": 3}\n')
            write_atomic(os.path.join(ctx.work, "plot.png"), b"\x89PNG")

        steps[-1] = Step("table", "table.md", {}, table, needs=("score",), always=True,
                         also=("results.json", "plot.png"))
        return steps


@pytest.mark.parametrize("name", ["results.json", "table.md", "plot.png"])
def test_a_fresh_work_holding_the_users_summary_files_is_refused_without_force(tmp_path, name):
    (tmp_path / name).write_text("the user's")
    toy = Summary(tmp_path)
    with pytest.raises(OneLineError, match=rf"^table: {tmp_path / name} exists and this tool has no record of "
                                           rf"writing it; move it away or pass --force"):
        toy.run()
    assert toy.runs == [] and (tmp_path / name).read_text() == "the user's"
    toy.run(force=True)
    assert (tmp_path / name).read_bytes() != b"the user's"


def test_the_summary_replaces_only_the_files_it_wrote_and_never_writes_through_a_link(tmp_path):
    toy = Summary(tmp_path)
    toy.run()
    toy.runs.clear()
    toy.run()  # its own files, as it wrote them: replaced at every run
    assert toy.runs == ["table"]
    (tmp_path / "results.json").write_text('{"my": "notes"}')  # changed since the tool wrote it
    with pytest.raises(OneLineError, match=r"results.json is not the file this tool wrote there"):
        Summary(tmp_path).run()
    assert (tmp_path / "results.json").read_text() == '{"my": "notes"}'
    (tmp_path / "results.json").rename(tmp_path.parent / f"{tmp_path.name}-notes.json")  # moved away
    outside = tmp_path.parent / f"{tmp_path.name}-figure.png"
    outside.write_text("the user's figure")
    (tmp_path / "plot.png").unlink()
    (tmp_path / "plot.png").symlink_to(outside)
    with pytest.raises(OneLineError, match=r"plot.png is a link; this tool writes no link"):
        Summary(tmp_path).run()
    Summary(tmp_path).run(force=True)
    assert outside.read_text() == "the user's figure" and not (tmp_path / "plot.png").is_symlink()
    assert (tmp_path / "plot.png").read_bytes() == b"\x89PNG"


def _converted(tmp_path, teacher):
    """A step converting a file from outside the work directory (as convert-chain's --checkpoint)."""
    runs = []

    def convert(ctx):
        runs.append("convert")
        with open(teacher) as f, open(ctx.out, "w") as g:
            g.write("converted " + f.read())

    return runs, [Step("convert", "converted.pt", {"checkpoint": str(teacher)}, convert,
                       sources={"--checkpoint": str(teacher)})]


def test_an_input_replaced_at_the_same_path_is_another_input(tmp_path):
    teacher, work = tmp_path / "teacher.pt", tmp_path / "w"
    teacher.write_text("model one")
    runs, steps = _converted(tmp_path, teacher)
    Runner("toy", str(work)).run(steps)
    os.utime(teacher, (1, 1))  # touched, same bytes: still the same input, not read again for nothing
    Runner("toy", str(work)).run(steps)
    assert runs == ["convert"]
    seen = json.loads((work / "steps" / "converted.pt.json").read_text())["sources"]["--checkpoint"]["stat"]
    assert seen[1] == 10 ** 9  # the record knows the touched file now
    teacher.write_text("model two")  # another trained model at the same path
    with pytest.raises(OneLineError, match=rf"^convert \(.*\) was made with other settings \(made from another "
                                           rf"--checkpoint \({teacher}: its content changed\)\); pass --force"):
        Runner("toy", str(work)).run(steps)
    assert (work / "converted.pt").read_text() == "converted model one"
    Runner("toy", str(work), force=True).run(steps)
    assert runs == ["convert", "convert"] and (work / "converted.pt").read_text() == "converted model two"
    record = json.loads((work / "steps" / "converted.pt.json").read_text())
    assert record["sources"]["--checkpoint"]["size"] == len("model two")


def test_a_work_inside_an_input_is_refused_before_anything_is_written(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "corpus.txt").write_text("the user's")

    def data(ctx):
        raise AssertionError("must not run")

    steps = [Step("data", "data", {}, data, sources={"--raw": str(raw)})]
    for work in (raw, raw / "w"):
        with pytest.raises(OneLineError, match=rf"^--work {work} and --raw {raw} overlap"):
            Runner("toy", str(work)).run(steps)
    assert os.listdir(raw) == ["corpus.txt"]  # no lock, no logs, no records
    steps = [Step("data", "data", {}, data, sources={"--raw": str(tmp_path / "w" / "data" / "raw")})]
    with pytest.raises(OneLineError, match=r"is an output of this run \(data\)"):
        Runner("toy", str(tmp_path / "w")).run(steps)


FAKE_TRAIN = """import os, signal, sys
save = sys.argv[sys.argv.index("--save-dir") + 1]
names = ["checkpoint_best.pt", "checkpoint_last.pt"] if "--killed" in sys.argv else ["checkpoint_last.pt"]
for name in names:
    with open(os.path.join(save, name), "w") as f:
        f.write("trained")
if "--killed" in sys.argv:
    os.kill(os.getppid(), signal.SIGKILL)  # the runner dies with its run half done
"""


class FakeCommand:
    """A run/train.Command of the stand-in trainer."""
    notes, check = [], None

    def __init__(self, argv):
        self.argv = argv

    def shell(self):
        return " ".join(self.argv)


def test_force_after_a_killed_and_resumed_run_removes_the_checkpoints_that_run_made(tmp_path):
    from kvattn_fairseq.run.steps import train_step

    (tmp_path / "fake.py").write_text(FAKE_TRAIN)
    work = tmp_path / "w"

    def steps(setting, *args):
        argv = [sys.executable, str(tmp_path / "fake.py"), "--save-dir", str(work / "run"), *args]
        return [train_step("train", "run", FakeCommand(argv), {"x": setting})]

    child = os.fork()
    if child == 0:  # the runner, SIGKILLed by its tool halfway through the run
        try:
            Runner("toy", str(work)).run(steps(1, "--killed"))
        finally:
            os._exit(0)
    assert os.waitpid(child, 0)[1] == 9
    Runner("toy", str(work)).run(steps(1))  # resumed: writes checkpoint_last.pt, not checkpoint_best.pt
    Runner("toy", str(work), force=True).run(steps(2))  # the killed run's checkpoint_best.pt is the tool's too
    assert sorted(os.listdir(work / "run")) == [".kvattn-made.json", "checkpoint_last.pt", "kvattn-train.json"]


def test_jobs_run_concurrent_steps_side_by_side_and_a_failure_lets_the_others_finish(tmp_path):
    """Two concurrent steps wait for each other (each starts only when it sees the other started), so they must run
    at once; a step that is not concurrent runs alone after them; after a concurrent step fails, the one beside it
    still finishes and is recorded, nothing new starts, and the failure is raised."""
    import threading

    started = {name: threading.Event() for name in ("a", "b", "c")}
    order = []

    def concurrent(name, other, fail=False):
        def run(ctx):
            started[name].set()
            assert started[other].wait(timeout=30), f"{name} ran alone"
            os.makedirs(ctx.out)
            mark(ctx.out)
            order.append(name)
            if fail:
                raise OneLineError(f"{name} failed")
        return run

    def alone(ctx):
        order.append("alone")
        open(ctx.out, "w").write("done\n")

    steps = [Step("a", "a", {}, concurrent("a", "b"), concurrent=True),
             Step("b", "b", {}, concurrent("b", "a"), concurrent=True),
             Step("alone", "alone.txt", {}, alone, needs=("a", "b"))]
    Runner("toy", str(tmp_path / "w"), flag="--out").run(steps, jobs=2)
    assert sorted(order[:2]) == ["a", "b"] and order[2] == "alone"

    for event in started.values():
        event.clear()
    order.clear()
    steps = [Step("b", "b2", {}, concurrent("b", "c", fail=True), concurrent=True),
             Step("c", "c", {}, concurrent("c", "b"), concurrent=True),
             Step("after", "after.txt", {}, alone, needs=("b",))]
    with pytest.raises(OneLineError, match="b failed"):
        Runner("toy", str(tmp_path / "w2"), flag="--out").run(steps, jobs=2)
    assert sorted(order) == ["b", "c"]  # "after" never started
    assert json.load(open(tmp_path / "w2" / "steps" / "c.json"))["finished"]


def test_lines_said_from_steps_side_by_side_never_run_together(tmp_path, monkeypatch):
    """print() writes a line and its newline apart; two threads saying at once must still give whole lines (a slow
    stdout makes the interleaving all but certain without the runner's lock)."""
    import threading

    class SlowOut:
        def __init__(self):
            self.text = ""

        def write(self, s):
            time.sleep(0.001)
            self.text += s
            return len(s)

        def flush(self):
            pass

    out = SlowOut()
    monkeypatch.setattr(sys, "stdout", out)
    runner = Runner("toy", str(tmp_path / "w"), flag="--out")
    threads = [threading.Thread(target=lambda n=n: [runner.say(f"{n}: line {i}") for i in range(20)]) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.text.splitlines()
    assert len(lines) == 40 and all(re.fullmatch(r"\[toy\] [ab]: line \d+", line) for line in lines), lines
