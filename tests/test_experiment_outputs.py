"""Every experiment command keeps to the spine's rules about files it did not make (run/spine.py): a fresh output
directory holding a results.json, table or plot of the user's is refused before any work, as is a work directory
that is the command's own input or an empty path; each refusal is one line and changes nothing.  (The rules
themselves are tested on a toy experiment in test_spine.py; nothing is trained here.)"""
import os

import pytest


def _one_line(capsys, prog):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
    return lines[0]


def _contents(root):
    return {p: open(os.path.join(root, p), "rb").read() for p in sorted(os.listdir(root))
            if os.path.isfile(os.path.join(root, p))}


def test_paper_tables_with_its_work_in_its_raw_input_writes_nothing_there(tmp_path, capsys):
    from kvattn_fairseq.run.specs import paper_tables

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "training-parallel-europarl-v7.tgz").write_bytes(b"the user's download")
    for work in (raw, raw / "work"):
        assert paper_tables.main(["memsizer_mt", "--work", str(work), "--raw", str(raw), "--tiny", "--rows",
                                  "transformer"]) == 2
        line = _one_line(capsys, paper_tables.PROG)
        assert f"--work {work} and --raw {raw} overlap" in line, line
    assert os.listdir(raw) == ["training-parallel-europarl-v7.tgz"]  # no lock, logs or records


@pytest.mark.parametrize("name", ["recall.png", "results.json", "table.md"])
def test_recall_into_a_fresh_out_with_the_users_summary_files_is_refused(tmp_path, capsys, name):
    from kvattn_fairseq.run.specs import recall

    out = tmp_path / "r"
    out.mkdir()
    (out / name).write_bytes(b"the user's")
    argv = ["--out", str(out), "--tiny", "--kinds", "softmax", "--pairs", "3", "--lengths", "24", "--window", "3"]
    assert recall.main(argv) == 2
    line = _one_line(capsys, recall.PROG)
    assert f"{out / name} exists and this tool has no record of writing it; move it away or pass --force" in line
    assert _contents(out) == {".kvattn.lock": b"", name: b"the user's"} and not (out / "data").exists()


def test_demo_into_a_workdir_with_the_users_results_is_refused(tmp_path, capsys):
    from kvattn_fairseq.run.specs import demo

    work = tmp_path / "d"
    work.mkdir()
    (work / "results.json").write_text('{"mine": true}')
    assert demo.main(["--workdir", str(work), "--epochs", "1"]) == 2
    assert "results.json exists and this tool has no record of writing it" in _one_line(capsys, demo.PROG)
    assert (work / "results.json").read_text() == '{"mine": true}' and not (work / "data").exists()


def test_an_empty_out_is_not_the_current_directory(tmp_path, capsys, monkeypatch):
    from kvattn_fairseq.run.specs import quality, recall

    monkeypatch.chdir(tmp_path)
    assert recall.main(["--out", "", "--tiny"]) == 2
    assert _one_line(capsys, recall.PROG).endswith("--out: an empty path; give a directory (it is created if needed)")
    assert quality.main(["--out", "", "--tiny"]) == 2
    assert "--out: an empty path" in _one_line(capsys, quality.PROG)
    assert os.listdir(tmp_path) == []


def test_an_out_whose_parent_is_a_file_is_one_line(tmp_path, capsys):
    from kvattn_fairseq.run.specs import recall

    (tmp_path / "notes").write_text("the user's")
    out = tmp_path / "notes" / "r"
    assert recall.main(["--out", str(out), "--tiny", "--kinds", "softmax"]) == 2
    assert f"--out {out}: cannot create it (Not a directory" in _one_line(capsys, recall.PROG)
    assert (tmp_path / "notes").read_text() == "the user's"
