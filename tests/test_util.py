"""kvattn_fairseq/util: the one atomic write, the one subprocess runner with a log (and its in-process twin), the
`--` splitter, and the one-line error every command of the orchestration half reports."""
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from kvattn_fairseq.util import proc
from kvattn_fairseq.util.cli import ArgumentParser, positive_int, run_main, split_passthrough
from kvattn_fairseq.util.errors import OneLineError, StepFailed
from kvattn_fairseq.util.io import (MARKER, adopt_writes, check_output_file, check_replaceable, install_dir,
                                   made_entries, mark, remove_made, temp_dir_beside, tracking_writes, write_atomic)
from kvattn_fairseq.util.lock import LOCK, work_lock


def test_write_atomic_replaces_whole_files_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "x" / "r.json"
    write_atomic(str(path), "first\n")
    write_atomic(str(path), b"second\n")
    assert path.read_text() == "second\n" and os.listdir(path.parent) == ["r.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # an ordinary file, not mkstemp's 0600

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(str(path), broken)
    assert path.read_text() == "second\n" and os.listdir(path.parent) == ["r.json"]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_install_dir_swaps_the_old_output_out_only_at_the_end(tmp_path):
    out = tmp_path / "out"
    for text in ("old", "new"):
        built = temp_dir_beside(str(out))
        (tmp_path / built / "f").write_text(text)
        install_dir(built, str(out))
    assert (out / "f").read_text() == "new" and os.listdir(tmp_path) == ["out"]
    assert sorted(os.listdir(out)) == sorted(["f", MARKER])


def test_overwrites_remove_only_what_the_tool_made(tmp_path):
    out = tmp_path / "out"
    built = temp_dir_beside(str(out))
    (tmp_path / built / "data").write_text("ours")
    install_dir(built, str(out))
    (out / "thesis.tex").write_text("the user's")
    again = temp_dir_beside(str(out))
    with pytest.raises(OneLineError, match=r"^--force: .* holds files this tool did not make \(thesis.tex\)"):
        install_dir(again, str(out))
    assert (out / "thesis.tex").read_text() == "the user's" and (out / "data").read_text() == "ours"
    (tmp_path / again / "notes.txt").write_text("x")
    with pytest.raises(OneLineError, match=r"did not make \(notes.txt\)"):  # no marker: everything is the user's
        remove_made(str(tmp_path / again))
    mine = tmp_path / "run"
    mine.mkdir()
    (mine / "checkpoint_last.pt").write_text("x")
    (mine / "checkpoint_my_teacher.pt").write_text("the user's")
    mark(str(mine), ["checkpoint*", "checkpoint_last.pt"])  # names, never patterns
    with pytest.raises(OneLineError, match=r"did not make \(checkpoint_my_teacher.pt\)"):
        remove_made(str(mine))
    (mine / "checkpoint_my_teacher.pt").unlink()
    remove_made(str(mine))
    assert not mine.exists()
    raw = tmp_path / "raw"
    raw.mkdir()
    for o in (raw, raw / "sub"):  # an output equal to or inside an input, and an input inside the output
        with pytest.raises(OneLineError, match="overlap"):
            check_replaceable(str(o), inputs=[("--raw", str(raw))])
    with pytest.raises(OneLineError, match="overlap"):
        check_replaceable(str(tmp_path), inputs=[("--raw", str(raw))])


def _dead_pid():
    dead = subprocess.Popen(["true"])
    dead.wait()
    return dead.pid


def test_the_marker_records_the_files_a_tool_run_made_even_a_killed_one(tmp_path):
    from kvattn_fairseq.checkpoints.files import written_by_fairseq_train as fairseq_names

    run = tmp_path / "run"
    run.mkdir()
    mark(str(run), ["kvattn-train.json"])
    (run / "checkpoint_best.pt").write_text("the user's, named like fairseq's")
    (run / "important.tmp").write_text("the user's")
    with tracking_writes(str(run), fairseq_names):
        for name in ("checkpoint1.pt", "checkpoint_last.pt", "notes.txt"):  # notes.txt: not a name fairseq writes
            (run / name).write_text("made")
    assert made_entries(str(run)) == {"kvattn-train.json", "checkpoint1.pt", "checkpoint_last.pt"}
    killed = tracking_writes(str(run), fairseq_names)
    killed.__enter__()  # and never left: the runner was killed with its tool
    (run / "checkpoint2.pt").write_text("made")
    write_atomic(str(run / "checkpoint_best.pt"), "made: replaced by the run")
    adopt_writes(str(run), fairseq_names)  # the next run of the runner
    assert made_entries(str(run)) == {"kvattn-train.json", "checkpoint1.pt", "checkpoint_last.pt", "checkpoint2.pt",
                                      "checkpoint_best.pt"}


def test_outputs_are_regular_files_never_an_input_and_temporaries_of_dead_writers_go(tmp_path):
    (tmp_path / "in.pt").write_text("input")
    os.symlink("in.pt", tmp_path / "link.pt")
    os.mkfifo(tmp_path / "pipe")
    os.symlink(os.devnull, tmp_path / "null")  # a link: code that wrongly writes replaces it, not /dev/null
    for path, kind in ((tmp_path / "null", "a device"), (tmp_path / "pipe", "a pipe"), (tmp_path, "a directory")):
        with pytest.raises(OneLineError, match=f"^--out {path} is {kind}, not a regular file"):
            check_output_file(str(path), "--out")
        with pytest.raises(OneLineError, match="not a regular file: refusing to replace it"):
            write_atomic(str(path), "x")
    assert os.readlink(tmp_path / "null") == os.devnull and stat.S_ISFIFO(os.stat(tmp_path / "pipe").st_mode)
    with pytest.raises(OneLineError, match="is the same file as --in"):
        check_output_file(str(tmp_path / "link.pt"), "--out", [("--in", str(tmp_path / "in.pt"))])
    with pytest.raises(OneLineError, match="exists; remove it or pass --force"):
        check_output_file(str(tmp_path / "in.pt"), "--out", force=False)
    check_output_file(str(tmp_path / "in.pt"), "--out", force=True)

    pid = _dead_pid()
    stale = [tmp_path / f".r.json.{pid}-abc.tmp", tmp_path / f".data.tmp-{pid}-xyz", tmp_path / f".data.old-{pid}-q"]
    kept = [tmp_path / ".r.json.mine.tmp", tmp_path / ".data.tmp-abc", tmp_path / f".other.tmp-{pid}-xyz"]
    for path in stale + kept:
        path.mkdir() if "data" in path.name or "other" in path.name else path.write_text("x")
    write_atomic(str(tmp_path / "r.json"), "{}")
    built = temp_dir_beside(str(tmp_path / "data"))
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert f".data.tmp-{os.getpid()}-" in built


def test_one_run_per_work_directory_and_a_dead_runs_lock_is_taken_over(tmp_path):
    work = tmp_path / "w"
    with work_lock(str(work)):  # flock excludes another open of the file, in this process as in any other
        with pytest.raises(OneLineError, match=rf"--work {work} is in use by another run \(process {os.getpid()}: "):
            with work_lock(str(work)):
                pass
    dead = subprocess.Popen(["true"])
    dead.wait()
    (work / LOCK).write_text('{"pid": %d, "command": "killed"}' % dead.pid)  # what a SIGKILLed run leaves
    notes = []
    with work_lock(str(work), note=notes.append):
        pass
    assert notes and f"process {dead.pid}, which is no longer running" in notes[0]
    assert not (work / LOCK).read_text()  # released: nobody holds it now


def test_a_failed_rerun_keeps_the_log_of_the_earlier_success(tmp_path):
    log = tmp_path / "r.generate.log"
    proc.run([sys.executable, "-c", "print('good run')"], str(log))
    with pytest.raises(StepFailed, match="r.generate.failed.log"):
        proc.run([sys.executable, "-c", "print('bad run'); raise SystemExit(3)"], str(log))
    assert "good run" in log.read_text() and "bad run" in (tmp_path / "r.generate.failed.log").read_text()
    with pytest.raises(RuntimeError):  # staged: a successful tool whose results then fail leaves the old log too
        with proc.staged_logs():
            proc.run([sys.executable, "-c", "print('second good run')"], str(log))
            raise RuntimeError("scoring failed")
    assert "good run" in log.read_text() and "second" in (tmp_path / "r.generate.failed.log").read_text()
    with proc.staged_logs():
        proc.run([sys.executable, "-c", "print('third run')"], str(log))
        assert "good run" in log.read_text()  # not before the results are written
        proc.install_staged_logs()
        assert "third run" in log.read_text()
    assert sorted(os.listdir(tmp_path)) == ["r.generate.failed.log", "r.generate.log"]


def test_a_killed_runner_takes_its_tool_with_it(tmp_path):
    pid_file = tmp_path / "tool.pid"
    tool = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    # the runner loads util alone (it imports neither torch nor fairseq), to start in a fraction of a second
    runner = subprocess.Popen([sys.executable, "-c", "import sys, types\npkg = types.ModuleType('kvattn_fairseq')\n"
                               "pkg.__path__ = [sys.argv[3]]\nsys.modules['kvattn_fairseq'] = pkg\n"
                               "from kvattn_fairseq.util import proc\n"
                               "proc.run([sys.executable, '-c', sys.argv[1]], sys.argv[2])", tool,
                               str(tmp_path / "tool.log"), os.path.dirname(proc.__file__.rsplit(os.sep, 1)[0])])
    deadline = time.time() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    tool_pid = int(pid_file.read_text())
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    while time.time() < deadline:
        try:
            os.kill(tool_pid, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{tool_pid}/stat") as f:  # a zombie (reaped by init later) is gone too
            if f.read().split(") ")[1].startswith("Z"):
                break
        time.sleep(0.05)
    else:
        os.kill(tool_pid, signal.SIGKILL)
        raise AssertionError("the tool outlived the runner that was killed")


def test_split_passthrough_and_positive_int():
    assert split_passthrough(["a", "--x", "--", "--lr", "1", "--", "b"]) == (["a", "--x"], ["--lr", "1", "--", "b"])
    assert split_passthrough(["a"]) == (["a"], [])
    assert positive_int("3") == 3
    for bad in ("0", "-1", "x"):
        with pytest.raises(Exception, match="positive integer"):
            positive_int(bad)


def test_parser_and_run_main_report_one_line(capsys):
    p = ArgumentParser(prog="tool", passthrough=True)
    p.add_argument("--n", type=positive_int)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--n", "0"])
    assert e.value.code == 2 and capsys.readouterr().err == "tool: error: argument --n: expected a positive " \
                                                             "integer, got 0\n"
    with pytest.raises(SystemExit):
        p.parse_args(["--lr", "1"])
    assert "(flags for fairseq go after --)" in capsys.readouterr().err

    def bad():
        raise OneLineError("--data x: no such directory")

    assert run_main("tool", bad) == 2 and capsys.readouterr().err == "tool: error: --data x: no such directory\n"
    assert run_main("tool", lambda: (_ for _ in ()).throw(StepFailed("it broke"))) == 1


def test_run_keeps_a_log_echoes_lines_and_returns_the_output(tmp_path):
    log = tmp_path / "logs" / "a.log"
    seen = []
    code = "import sys; print('one'); print('t\\u2028wo\\r!'); print('err', file=sys.stderr)"
    out = proc.run([sys.executable, "-c", code], str(log), echo=seen.append)
    assert out.split("\n")[:3] == ["one", "t\u2028wo\r!", "err"]  # split on \\n only
    assert seen == ["one\n", "t\u2028wo\r!\n", "err\n"]
    text = log.read_text(encoding="utf-8")
    assert text.startswith(f"$ {sys.executable} -c ") and text.endswith("err\n")
    proc.run([sys.executable, "-c", "print('again')"], str(log), append=True)
    text = log.read_text(encoding="utf-8")
    assert text.startswith(f"$ {sys.executable} -c ") and text.endswith("err\n\n$ " + proc.shell(
        [sys.executable, "-c", "print('again')"]) + "\nagain\n")


def test_run_failures_name_the_tool_the_error_and_the_log(tmp_path):
    log = str(tmp_path / "b.log")
    with pytest.raises(StepFailed) as e:
        proc.run([sys.executable, "-c", "raise ValueError('bad value')"], log, label="thing")
    failed = str(tmp_path / "b.failed.log")  # a failed command's log has a name of its own
    assert e.value.exit_code == 1
    assert str(e.value) == f"thing failed (exit 1): ValueError: bad value; full log: {failed}"
    with pytest.raises(StepFailed) as e:  # a tool refusing its command line is bad input: exit 2
        proc.run([sys.executable, "-c", "import argparse; argparse.ArgumentParser(prog='t').parse_args(['-x'])"])
    assert e.value.exit_code == 2 and "t: error: unrecognized arguments: -x" in str(e.value)
    with pytest.raises(StepFailed, match="timed out after 0.5s"):
        proc.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    with pytest.raises(StepFailed, match="cannot run"):
        proc.run([str(tmp_path / "no-such-program")])


def test_logged_sends_output_to_the_log_and_failures_to_one_line(tmp_path, capsys):
    log = tmp_path / "c.log"
    with proc.logged(str(log), "step one"):
        print("inside")
    assert capsys.readouterr().out == "" and "inside" in log.read_text()
    with pytest.raises(StepFailed, match=f"step two failed: --raw: missing; full log: {log}"):
        with proc.logged(str(log), "step two"):
            raise OneLineError("--raw: missing")
    with pytest.raises(StepFailed, match=r"step three failed \(KeyError: 'x'\); traceback in"):
        with proc.logged(str(log), "step three"):
            {}["x"]
    assert "Traceback" in log.read_text()
