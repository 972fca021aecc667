"""kvattn_fairseq/util: the one atomic write, the one subprocess runner with a log (and its in-process twin), the
`--` splitter, and the one-line error every command of the orchestration half reports."""
import os
import stat
import sys

import pytest

from kvattn_fairseq.util import proc
from kvattn_fairseq.util.cli import ArgumentParser, positive_int, run_main, split_passthrough
from kvattn_fairseq.util.errors import OneLineError, StepFailed
from kvattn_fairseq.util.io import install_dir, temp_dir_beside, write_atomic


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
                                                             "integer, got '0'\n"
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
    assert e.value.exit_code == 1 and str(e.value) == f"thing failed (exit 1): ValueError: bad value; full log: {log}"
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
