"""Each paper table regenerates end to end in --tiny mode: fixtures in the real formats -> prepare -> fairseq-train
per row -> evaluation -> Markdown table; one of them from a non-editable install of the package, run from another
directory; a rerun resumes without redoing work; bad input is one line."""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from kvattn_fairseq.util.errors import OneLineError
from conftest import run as run_command

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RUNNER = [sys.executable, "-m", "kvattn_fairseq", "paper-tables"]
# a subset of each table's rows keeps the suite short; every row is built and checked before anything runs
CASES = [("memsizer_mt", "transformer,memsizer", ()), ("memsizer_summarization", "memsizer", ("--drop", "fp16")),
         ("memsizer_lm", "memsizer", ()), ("mgk_lm", "mgk4,mlk4,mgk4-em", ()),
         ("kv_classification", "reverse-kv-d256-l4-h2-n128-s2", ())]


def run(*args, check=True, env_extra=None, cwd=None):
    return run_command([*RUNNER, *args], env=dict(os.environ, PYTHONWARNINGS="ignore"), env_extra=env_extra,
                       timeout=1200, cwd=cwd, check=check)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("tables")


def check_results(work: Path, table: str, rows: str) -> None:
    for row in rows.split(","):
        result = json.loads((work / "results" / table / f"{row}.json").read_text())
        assert result["table"] == table and result["name"] == row
        assert result["main"]["value"] is not None
    assert "not run" in (work / "tables.md").read_text()  # rows nobody ran are still listed


@pytest.fixture(scope="module")
def mt_rows(work):
    """The memsizer_mt rows the rerun tests look at: made here when the test below did not run first (a test
    selected alone with -k), skipped by the spine when it did."""
    run("memsizer_mt", "--work", work, "--tiny", "--rows", "transformer,memsizer")
    return work


@pytest.mark.parametrize("table,rows,extra", CASES)
def test_tiny_table_runs_end_to_end(work, table, rows, extra):
    proc = run(table, "--work", work, "--tiny", "--rows", rows, *extra)
    if extra:  # the recipe flag is gone from every fairseq-train command
        assert "--drop: removed --fp16" in proc.stdout
        assert not [line for line in proc.stdout.splitlines() if "fairseq-train" in line and "--fp16" in line]
    check_results(work, table, rows)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package installed from a copy of the checkout's sources with `pip install --target` (a wheel is built
    and unpacked: no editable link back to the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(REPO / "kvattn_fairseq", src / "kvattn_fairseq",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    site = root / "site"
    proc = run_command([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                        "--quiet", "--target", str(site), str(src)], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return site


def test_tiny_table_runs_from_an_installed_package(work, installed, tmp_path):
    """`pip install .` without -e, then the chain from a directory that is not the checkout: nothing may need the
    checkout's scripts/ or configs/."""
    assert not (installed / "scripts").exists() and (installed / "kvattn_fairseq" / "papers" / "kv.py").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run("kv_synthetic", "--work", work, "--tiny", "--rows", "reverse-kv_asym", cwd=elsewhere,
               env_extra={"PYTHONPATH": str(installed)})
    plugin = next(line for line in proc.stdout.splitlines() if line.startswith("[paper_tables] plugin: "))
    assert plugin.split(": ", 1)[1] == str(installed / "kvattn_fairseq")  # the installed copy, not the checkout
    check_results(work, "kv_synthetic", "reverse-kv_asym")
    assert os.listdir(elsewhere) == []  # everything went to --work
    kv = (work / "tables.md").read_text().split("## Key-Value Transformer: synthetic tasks")[1]
    assert "| reverse | not run | " in kv and "| reverse | not run | not run |" not in kv  # this run's cell


def test_console_script_of_the_installed_package(installed):
    """pyproject.toml's `kvattn-fairseq` entry point (kvattn_fairseq.commands:main); importing
    kvattn_fairseq.__main__ runs nothing."""
    env = dict(os.environ, PYTHONPATH=str(installed), PYTHONWARNINGS="ignore")
    proc = run_command([sys.executable, str(installed / "bin" / "kvattn-fairseq"), "--user-dir"], env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == str(installed / "kvattn_fairseq"), proc.stderr[-2000:]
    proc = run_command([sys.executable, "-c", "import kvattn_fairseq.__main__"], env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr[-2000:]


def test_rerun_resumes_without_redoing_work(mt_rows):
    work = mt_rows
    before = {p: p.stat().st_mtime for p in (work / "results" / "memsizer_mt").glob("*.json")}
    proc = run("memsizer_mt", "--work", work, "--tiny", "--rows", "transformer,memsizer")
    assert "data/wmt16: done earlier with the same settings, skipped" in proc.stdout
    assert "train/memsizer: done earlier with the same settings, skipped" in proc.stdout
    assert {p: p.stat().st_mtime for p in (work / "results" / "memsizer_mt").glob("*.json")} == before
    md = (work / "tables.md").read_text()
    assert md.count("| Transformer (tiny) | softmax / softmax / softmax |") == 1  # MT: a --tiny run, marked
    assert md.count("| Transformer | softmax / softmax / softmax |") == 1  # summarization: not run
    assert "come from `--tiny` runs" in md
    mt = md.split("## MemSizer: machine translation")[1].split("## ")[0]
    assert mt.count("not run") < 6  # the two MT rows now hold numbers


def test_other_settings_are_refused_or_redone_with_force_and_one_run_per_work(mt_rows, capsys):
    work = mt_rows
    from kvattn_fairseq.run.specs import paper_tables as tables
    from kvattn_fairseq.util.lock import work_lock

    results = work / "results" / "memsizer_mt"
    before = {p: p.read_text() for p in results.glob("*.json")}

    def refused(*argv):
        assert tables.main(["memsizer_mt", "--work", str(work), *map(str, argv)]) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"{tables.PROG}: error: "), lines
        return lines[0]

    line = refused("--rows", "transformer")  # the full run after the tiny one: nothing tiny is reused
    assert "data/wmt16" in line and "tiny True -> False" in line and "--force" in line
    line = refused("--tiny", "--rows", "transformer", "--", "--max-update", "5")
    assert "train/transformer" in line and "other settings" in line and "--force" in line
    with work_lock(str(work)):  # another run holds the directory (flock: this process counts as another)
        line = refused("--tiny", "--rows", "transformer")
        assert f"is in use by another run (process {os.getpid()}: " in line
    assert {p: p.read_text() for p in results.glob("*.json")} == before
    # --force redoes what changed, the evaluation of the retrained row included, and keeps the rest
    proc = run("memsizer_mt", "--work", work, "--tiny", "--rows", "transformer", "--force", "--",
               "--max-update", "5")
    assert "train/transformer: making it again" in proc.stdout
    assert "evaluate/transformer: making it again" in proc.stdout
    redone = json.loads((results / "transformer.json").read_text())
    assert redone["training"]["settings"]["flags"][-2:] == ["--max-update", "5"]
    assert redone["training"]["finished"] and redone["model"]["num_updates"] == 5


@pytest.mark.parametrize("args,expected", [
    (["kv_synthetic", "--rows", "nope"], "--rows: nope not in table kv_synthetic"),
    (["kv_classification", "--rows", "reverse-kv-*,sort-kv-d99-*"],
     "--rows: sort-kv-d99-* not in table kv_classification (rows: 720 rows, e.g. reverse-softmax-d64-l2-h2-n64-s1)"),
    (["memsizer_mt", "--kinds", "nope"], "--kinds: unknown attention kind 'nope'"),
    (["memsizer_mt", "--raw", "/nonexistent/raw"], "--raw: /nonexistent/raw is not a directory"),
    (["mgk_lm", "--kinds", "linear"], "--kinds: table mgk_lm fixes its rows' kinds"),
    (["memsizer_mt", "--drop", "nope"], "--drop: --nope is not a flag of memsizer_wmt16_en_de"),
    (["memsizer_mt", "--bench", "/nonexistent/bench.json"], "--bench /nonexistent/bench.json: cannot read it"),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, args, expected, capsys):
    from kvattn_fairseq.run.specs import paper_tables as tables  # the command's main, in this process (saves starting one per case)

    assert tables.main([args[0], "--work", str(tmp_path / "w"), *args[1:]]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{tables.PROG}: error: ") and expected in lines[0], lines
    assert not (tmp_path / "w").exists()


# --- --force: nothing removed before everything is checked, and only what the tool made ------------------------------
FAKE_TRAIN = """import os, sys
save = sys.argv[sys.argv.index("--save-dir") + 1]
for name in ("checkpoint_1_4.pt", "checkpoint_best.pt", "checkpoint_last.pt"):
    with open(os.path.join(save, name), "w") as f:
        f.write("trained by " + " ".join(sys.argv[1:]))
"""


@pytest.fixture
def trained_row(tmp_path, monkeypatch):
    """A row of kv_synthetic trained by the runner's own train step, with a stand-in for fairseq-train that writes
    what it writes into --save-dir (checkpoints), so that the runner's bookkeeping is the real one."""
    from kvattn_fairseq.papers import TABLES
    from kvattn_fairseq.run.spine import Runner, Step
    from kvattn_fairseq.run.specs import paper_tables as tables
    from kvattn_fairseq.util import proc
    from kvattn_fairseq.util.io import mark

    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    real = proc.fairseq_tool
    monkeypatch.setattr(proc, "fairseq_tool", lambda name: [sys.executable, str(fake)] if name == "fairseq-train"
                        else real(name))
    work = tmp_path / "w"

    def fake_data(ctx):  # the dictionaries fairseq-train's check wants, nothing else
        (Path(ctx.out) / "data-bin").mkdir(parents=True)
        for name in ("dict.src.txt", "dict.tgt.txt", "train.src-tgt.src.bin"):
            (Path(ctx.out) / "data-bin" / name).write_text("")
        mark(ctx.out)

    table = TABLES["kv_synthetic"]
    row = next(r for r in table.rows if r.name == "copy-kv")

    def steps(extra=()):
        return [Step("data/synthetic-copy", "data/synthetic-copy", {"fake": True}, fake_data),
                tables.row_train_step(row, table, str(work), True, list(extra), [])]

    Runner("test", str(work)).run(steps())
    save = work / "runs" / "kv_synthetic" / "copy-kv"
    assert sorted(os.listdir(save)) == sorted([".kvattn-made.json", "kvattn-train.json", "checkpoint_1_4.pt",
                                               "checkpoint_best.pt", "checkpoint_last.pt"])
    return work, steps, save


def _contents(root: Path):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_force_with_a_bad_plan_removes_nothing(trained_row, capsys):
    from kvattn_fairseq.run.specs import paper_tables as tables

    work, _, save = trained_row
    (work / "results" / "kv_synthetic").mkdir(parents=True)
    (work / "results" / "kv_synthetic" / "copy-kv.json").write_text("{}")
    (work / "tables.md").write_text("the table")
    before = _contents(work)
    assert tables.main(["kv_synthetic", "--work", str(work), "--tiny", "--rows", "copy-kv", "--force", "--",
                        "--decoder-attention-type", "memsizer*3"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "train/copy-kv: --decoder-attention-type: the plan 'memsizer*3' gives 3 layers" in \
        lines[0], lines
    assert _contents(work) == before  # checkpoints, results and table as they were


def test_force_removes_only_the_files_the_tool_made(trained_row):
    from kvattn_fairseq.run.spine import Runner

    work, steps, save = trained_row
    (save / "checkpoint_my_teacher.pt").write_text("the user's")
    (save / "important.tmp").write_text("the user's")
    before = _contents(save)
    with pytest.raises(OneLineError) as e:
        Runner("test", str(work), force=True).run(steps(["--max-update", "5"]))
    assert "holds files this tool did not make (checkpoint_my_teacher.pt, important.tmp)" in str(e.value)
    assert "\n" not in str(e.value) and _contents(save) == before
    for name in ("checkpoint_my_teacher.pt", "important.tmp"):
        (save / name).unlink()
    Runner("test", str(work), force=True).run(steps(["--max-update", "5"]))  # redone
    assert "--max-update 5" in (save / "checkpoint_last.pt").read_text()


def test_a_work_that_is_a_file_is_one_line(tmp_path, capsys):
    from kvattn_fairseq.run.specs import paper_tables as tables

    (tmp_path / "notes").write_text("the user's")
    assert tables.main(["kv_synthetic", "--work", str(tmp_path / "notes"), "--tiny", "--rows", "copy-kv"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--work" in lines[0] and "is not a directory" in lines[0], lines
    assert (tmp_path / "notes").read_text() == "the user's"
