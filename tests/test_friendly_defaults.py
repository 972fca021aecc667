"""What a user of the plugin's commands sees by default: fairseq's tools started with one OpenMP thread unless
OMP_NUM_THREADS says otherwise (util/proc.py), a training's progress on the terminal while it runs (run/progress.py),
and a demo rerun saying which results it reused (run/specs/demo.py)."""
import sys
import time

import pytest

from kvattn_fairseq.run import progress as progress_mod
from kvattn_fairseq.run.progress import Progress, stats
from kvattn_fairseq.run.specs import demo
from kvattn_fairseq.util import proc

PRINT_THREADS = [sys.executable, "-c", "import os; print('threads=' + os.environ.get('OMP_NUM_THREADS', 'unset'))"]


def test_tools_get_one_thread_unless_the_user_set_omp_num_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert "threads=1" in proc.run(PRINT_THREADS)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert "threads=3" in proc.run(PRINT_THREADS)
    # an environment given by the caller (the benchmark's) is passed as it is
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert "threads=unset" in proc.run(PRINT_THREADS, env=proc.tool_env())


SIMPLE = [
    "2024-05-01 10:00:00 | INFO | fairseq_cli.train | begin training epoch 1",
    "2024-05-01 10:00:01 | INFO | train_inner | epoch 001:     50 / 770 loss=4.123, nll_loss=3.9, ppl=15, wps=100, "
    "num_updates=50, lr=0.001, gnorm=1.2, train_wall=3, gb_free=None, wall=40",
    "2024-05-01 10:00:02 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 3.9 | nll_loss 3 | ppl 8 | "
    "num_updates 63 | best_loss 3.9",
    "2024-05-01 10:00:03 | INFO | train | epoch 001 | loss 4.1 | nll_loss 3.2 | ppl 9.2 | num_updates 63 | lr 0.0006 "
    "| wall 30",
]


def test_fairseq_statistics_lines_are_read_in_both_log_formats():
    assert stats(SIMPLE[0]) is None
    assert stats(SIMPLE[1]) == {**stats(SIMPLE[1]), "tag": "train_inner", "epoch": "1", "loss": "4.123",
                                "num_updates": "50"}
    assert stats(SIMPLE[2])["tag"] == "valid" and stats(SIMPLE[2])["loss"] == "3.9"
    assert stats(SIMPLE[3])["loss"] == "4.1" and stats(SIMPLE[3])["num_updates"] == "63"
    json_line = '2024-05-01 10:00:04 | INFO | valid | {"epoch": 2, "valid_loss": "3.7", "valid_num_updates": "80"}'
    assert stats(json_line) == {"tag": "valid", "epoch": "2", "loss": "3.7", "num_updates": "80"}


def test_progress_says_a_short_line_at_most_every_few_seconds_and_the_last_at_the_end():
    said, now = [], [0.0]
    p = Progress(said.append, "train/window", ["fairseq-train", "DATA", "--max-epoch", "40"], every=10,
                 clock=lambda: now[0])
    p(SIMPLE[0])
    p(SIMPLE[1])
    assert said == []  # nothing yet: under 10 s since the start
    now[0] = 12
    p(SIMPLE[2])
    assert said == []  # a validation is said with the epoch's training line that follows it
    p(SIMPLE[3])
    assert said == ["train/window: epoch 1 of 40, update 63, loss 4.1, valid loss 3.9 (12s)"]
    now[0] = 13
    p(SIMPLE[1])
    assert len(said) == 1
    p.finish()
    assert said[-1] == "train/window: epoch 1 of 40, update 50, loss 4.123, valid loss 3.9 (13s)"
    p.finish()
    assert len(said) == 2  # nothing new: nothing said twice
    q = Progress(said.append, "t", ["--max-update=300"], clock=lambda: now[0])
    q(SIMPLE[1])
    q.finish()
    assert said[-1].startswith("t: epoch 1, update 50 of 300, loss 4.123")


def test_the_demo_tells_results_made_by_an_earlier_run_from_those_made_now():
    started = time.time()
    before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started - 300))
    first = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started - 600))
    after = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started + 5))
    records = {"data": {"started": first, "finished": before}, "train/window": {"started": first, "finished": after}}
    assert demo.made_earlier(records, started) == ["data"]
    assert demo.steps_seconds(records) == pytest.approx(300 + 605, abs=2)


@pytest.mark.slow
def test_a_training_step_streams_fairseqs_progress(tmp_path, capsys, monkeypatch):
    """A real (tiny) fairseq-train through the spine's train step: its progress reaches the terminal while the whole
    output goes to the step's log."""
    from types import SimpleNamespace

    from kvattn_fairseq.run.spine import Runner

    monkeypatch.setattr(progress_mod, "EVERY", 0.0)  # every line
    a = SimpleNamespace(models=["vanilla"], epochs=2, train_size=40)
    steps = [s for s in demo.steps(a, str(tmp_path)) if s.name in ("data", "train/vanilla")]
    Runner("demo", str(tmp_path), flag="--workdir").run(steps)
    out = capsys.readouterr().out
    shown = [line for line in out.splitlines() if line.startswith("[demo] train/vanilla: epoch")]
    assert shown and "epoch 2 of 2" in shown[-1] and "loss" in shown[-1], out
    assert "| INFO | train |" in (tmp_path / "logs" / "runs-vanilla.log").read_text()
