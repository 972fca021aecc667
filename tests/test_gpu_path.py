"""Installing on a machine with no network and checking a GPU in one command: the wheelhouse holds every requirement
but torch (with checksums), `setup_env.sh --offline` installs from it with pip's index unreachable into a venv that
uses the machine's own torch, and `gpu-check.sh --dry-run` runs the GPU check's phases on the CPU and writes its
report, results and plots."""
import hashlib
import importlib.metadata as md
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYVER = "%d.%d" % sys.version_info[:2]
sys.path.insert(0, str(ROOT / "scripts"))
import wheelhouse  # noqa: E402
from conftest import run as run_command  # noqa: E402

# Any attempt to reach an index fails fast: nothing listens on port 9.
NO_NETWORK = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "http_proxy": "http://127.0.0.1:9",
              "https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
              "HTTPS_PROXY": "http://127.0.0.1:9"}


def run(*cmd, env_extra=None, timeout=1200):
    return run_command(cmd, cwd=ROOT, timeout=timeout, env_extra=env_extra)


@pytest.fixture(scope="module")
def house(tmp_path_factory):
    """This Python's wheelhouse: the one `make setup` downloaded minutes ago if it is current, else a new one."""
    cached = ROOT / ".cache" / f"wheelhouse-cp{PYVER.replace('.', '')}" / "manifest.json"
    newest = max((ROOT / "pyproject.toml").stat().st_mtime, (ROOT / "scripts" / "wheelhouse.py").stat().st_mtime)
    if cached.is_file() and cached.stat().st_mtime > newest:
        return cached.parent
    out = tmp_path_factory.mktemp("wh") / "house"
    proc = run("scripts/wheelhouse.sh", out, "--python", PYVER, env_extra={"PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _names(reqs):
    Requirement, _ = wheelhouse._packaging()
    return {wheelhouse.canon(Requirement(r).name) for r in reqs
            if wheelhouse.applies(Requirement(r), PYVER)}


@pytest.mark.slow
def test_wheelhouse_holds_every_requirement_but_torch(house):
    manifest = json.loads((house / "manifest.json").read_text())
    assert manifest["python"] == PYVER
    files = {f["name"]: f for f in manifest["files"]}
    on_disk = {p.name for p in house.iterdir() if p.name != "manifest.json"}
    assert on_disk == set(files)
    for name, f in files.items():  # what was checked in is what is there
        data = (house / name).read_bytes()
        assert len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"], name
    # the torch stack is the target's; triton only where asked for (--triton: a CPU torch brings none)
    carried = {f"triton-{manifest['triton']}-"} if manifest.get("triton") else set()
    assert not [n for n in files if re.match(r"(torch|triton|nvidia)[-_]", n) and not n.startswith("torchaudio")
                and not any(n.startswith(c) for c in carried)]
    # fairseq as source, pinned as pyproject.toml pins it; its own and its build requirements resolved
    sdist = house / manifest["fairseq"]["sdist"]
    assert sdist.name.endswith(".tar.gz") and manifest["fairseq"]["requirement"].split("==")[1] in sdist.name
    runtime, build = wheelhouse.sdist_metadata(str(sdist))
    resolved = {wheelhouse.canon(n) for n in manifest["resolved"]}
    needed = (_names(wheelhouse.project_requirements()) | _names(runtime) | _names(build)) - {"torch"}
    needed -= {wheelhouse.canon(manifest["fairseq"]["requirement"].split("==")[0])}
    assert needed <= resolved, needed - resolved
    wheels = [n for n in files if n.endswith(".whl")]
    assert len(wheels) == len(manifest["resolved"])
    tag = f"cp{PYVER.replace('.', '')}"
    for n in wheels:  # every wheel installs on the target Python
        assert re.search(rf"-({tag}-{tag}|{tag}-abi3|py3-none|py2\.py3-none)-", n), n


# What a GPU node's Python may already have besides torch (the kind of node gpu-check.sh is written for): none of
# fairseq, hydra, omegaconf, bitarray, torchaudio, sacremoses or rouge-score.  scipy and scikit-learn are counted
# as present only to keep this test short (unpacking them is most of an install's time); the borrowed node lacks
# them, so its set-up installs them too.
NODE_HAS = ["torch", "numpy", "cython", "setuptools", "wheel", "pytest", "hypothesis", "sacrebleu", "sentencepiece",
            "pyyaml", "tqdm", "matplotlib", "scipy", "scikit-learn"]


def _machine_with_torch(tmp: Path, claims=None) -> Path:
    """A Python like a GPU node's: a venv whose site-packages link to this environment's torch and the few
    packages in NODE_HAS (with their dependencies), and nothing else of the stack.  `claims` {package: version}
    makes those packages' metadata state another version than they are (files unchanged), as a node's packages may
    not meet its own torch's declared requirements while everything imports and runs."""
    claims = claims or {}
    node = tmp / "node"
    run_command([sys.executable, "-m", "venv", "--without-pip", node], timeout=None, check=True)
    site = next(node.glob("lib/python*/site-packages"))
    todo, seen = list(NODE_HAS), set()
    while todo:
        dist = md.distribution(todo.pop())
        name = wheelhouse.canon(dist.metadata["Name"])
        if name in seen:
            continue
        seen.add(name)
        base = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            if (site / top).exists() or not (base / top).exists() or top == "..":
                continue
            if top.endswith(".dist-info") and name in claims:
                info = site / f"{dist.metadata['Name']}-{claims[name]}.dist-info"
                shutil.copytree(base / top, info)
                meta = (info / "METADATA").read_text()
                (info / "METADATA").write_text(re.sub(r"(?m)^Version: .*$", f"Version: {claims[name]}", meta, 1))
            else:
                (site / top).symlink_to(base / top)
        for req in dist.requires or []:
            r = wheelhouse._packaging()[0](req)
            if wheelhouse.applies(r, PYVER) and "extra" not in str(r.marker or ""):
                todo.append(r.name)
    return node / "bin" / "python"


@pytest.mark.slow
def test_offline_setup_uses_the_machines_torch_and_only_the_wheelhouse(house, tmp_path):
    """The machine's torch declares a requirement its machine does not meet by metadata (sympy claims 1.12, torch
    asks for >= 1.13.3), as on a GPU node whose torch pins CUDA packages it carries at other versions: pip's
    resolver, asked to install anything that depends on torch, refuses that torch and has no other ('No matching
    distribution found for sympy>=1.13.3'); the set-up never resolves, so it installs, checks and imports."""
    node_python = _machine_with_torch(tmp_path, claims={"sympy": "1.12"})
    venv = tmp_path / "venv"
    proc = run("scripts/setup_env.sh", "--offline", house, venv,
               env_extra=dict(NO_NETWORK, PYTHON=str(node_python), PIP_FIND_LINKS=str(tmp_path / "nowhere")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stack check: every requirement of the plugin's stack is met" in proc.stdout
    assert re.search(r"note, the machine's own package: torch \S+ requires sympy>=\S+, found 1\.12", proc.stdout)
    probe = run_command([venv / "bin" / "python", "-c",
                         "import torch, fairseq, kvattn_fairseq, sacrebleu, rouge_score; print(torch.__file__)"],
                        cwd=tmp_path, timeout=None)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert str(tmp_path / "node") in probe.stdout  # the machine's torch, not a copy
    assert not list(venv.glob("lib/python*/site-packages/torch"))


def test_offline_setup_without_a_wheelhouse_says_how_to_make_one(tmp_path):
    proc = run("scripts/setup_env.sh", "--offline", tmp_path / "missing", tmp_path / "venv")
    assert proc.returncode == 2 and not (tmp_path / "venv").exists()
    assert proc.stderr.strip().splitlines() == [
        f"setup: --offline: {tmp_path / 'missing'} has no manifest.json; make it with scripts/wheelhouse.sh "
        f"{tmp_path / 'missing'}"]


def test_wheelhouse_refuses_a_bad_python_version(tmp_path):
    proc = run("scripts/wheelhouse.sh", tmp_path / "wh", "--python", "three", env_extra={"PYTHON": sys.executable})
    assert proc.returncode == 1 and not (tmp_path / "wh").exists()
    assert proc.stderr.strip() == "wheelhouse: --python: expected a version like 3.12, got 'three'"


@pytest.mark.slow
def test_gpu_check_dry_run_writes_its_report_results_and_plots(tmp_path):
    out = tmp_path / "out"
    proc = run("scripts/gpu-check.sh", out, "--dry-run", "--kinds", "memsizer",
               env_extra={"VENV_PY": sys.executable, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (out / "gpu-check.md").read_text()
    assert "| cuda-tests |" in report and "| bench |" in report and "whole check within 8 minutes" in report
    assert re.search(r"CUDA tests: \d+ skipped", report)  # selected by -m cuda, skipped without a GPU
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "gpu-dry" and results["kinds"] == ["memsizer"]
    dtypes = {c["dtype"] for c in results["decode"]["configs"]}
    assert dtypes == {"fp16", "bf16"}
    for cfg in results["decode"]["configs"]:
        assert set(cfg["models"]) == {"vanilla", "floor", "memsizer"}
        assert len(set(cfg["models"]["memsizer"]["state_bytes_per_hypothesis"].values())) == 1
        grows = cfg["models"]["vanilla"]["state_bytes_per_hypothesis"]
        assert grows["32"] > grows["8"]
    for precision in ("fp16", "bf16"):
        for kind in ("vanilla", "floor", "memsizer"):
            assert all("tokens_per_s" in r and not r["overflow"]
                       for r in results["train"]["by_dtype"][precision][kind].values())
        assert set(results["translate"]["by_dtype"][precision]) == {"vanilla", "floor", "memsizer"}
    assert "| memsizer (constant state) |" in (out / "summary.md").read_text()
    assert len(list(out.glob("*.png"))) >= 8


@pytest.mark.slow
def test_gpu_check_without_a_gpu_stops_at_once(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = run("scripts/gpu-check.sh", tmp_path / "out", env_extra={"PYTHON": sys.executable})
    assert proc.returncode == 1
    assert "no CUDA device visible to" in proc.stdout and (tmp_path / "out" / "gpu-check.md").is_file()
    assert not (tmp_path / "out" / "setup.log").exists()  # nothing was installed


# --- the offline install refuses a wheelhouse that is not the one its manifest describes ---------------------------
def _zip(path, files):
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)


def _small_house(root: Path) -> Path:
    """A wheelhouse as wheelhouse.sh writes it, with one small wheel and fairseq's source: what verify reads."""
    import io

    house = root / "house"
    house.mkdir()
    _zip(house / "einops-0.8.2-py3-none-any.whl", {"einops/__init__.py": "__version__ = '0.8.2'\n",
                                                    "einops-0.8.2.dist-info/METADATA": "Name: einops\n"})
    with tarfile.open(house / "fairseq_fixed-0.12.3.1.tar.gz", "w:gz") as tar:
        data = b"Metadata-Version: 2.1\nName: fairseq-fixed\nVersion: 0.12.3.1\n"
        info = tarfile.TarInfo("fairseq_fixed-0.12.3.1/PKG-INFO")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    _write_manifest(house)
    return house


def _write_manifest(house: Path, **changed) -> None:
    files = sorted(p.name for p in house.iterdir() if p.name != "manifest.json")
    manifest = {"python": PYVER, "requirements": ["einops"], "resolved": {"einops": "0.8.2"},
                "fairseq": {"requirement": "fairseq-fixed==0.12.3.1", "sdist": "fairseq_fixed-0.12.3.1.tar.gz"},
                "files": [{"name": f, "bytes": (house / f).stat().st_size,
                           "sha256": hashlib.sha256((house / f).read_bytes()).hexdigest()} for f in files]}
    (house / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _offline_setup(house, venv):
    return run("scripts/setup_env.sh", "--offline", house, venv, env_extra=dict(NO_NETWORK, PYTHON=sys.executable),
               timeout=300)


def test_offline_setup_refuses_a_wheel_changed_since_the_manifest_before_installing_anything(tmp_path):
    house = _small_house(tmp_path)
    verify = [sys.executable, ROOT / "scripts" / "offline_install.py", "verify", house]
    assert run_command(verify, timeout=120).returncode == 0
    wheel = house / "einops-0.8.2-py3-none-any.whl"
    recorded = wheel.stat().st_size
    _zip(wheel, {"einops/__init__.py": "import os; os.system('echo owned')\n",  # rebuilt, with code added
                 "einops-0.8.2.dist-info/METADATA": "Name: einops\n"})
    proc = _offline_setup(house, tmp_path / "venv")
    assert proc.returncode == 1 and not (tmp_path / "venv").exists()
    assert proc.stderr.strip().splitlines() == [
        f"setup: {wheel} is {wheel.stat().st_size} bytes, the manifest says {recorded}: changed since the "
        f"wheelhouse was made; nothing was installed; remake it with scripts/wheelhouse.sh"]
    same_size = bytearray((house / "einops-0.8.2-py3-none-any.whl").read_bytes())
    _write_manifest(house)
    same_size[-30] ^= 1  # one byte flipped: the size the manifest says, another sha256
    wheel.write_bytes(bytes(same_size))
    proc = run_command([sys.executable, ROOT / "scripts" / "offline_install.py", "plan", house], timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"setup: {wheel}: its sha256 differs from the manifest's: changed since the wheelhouse was made; nothing "
        f"was installed; remake it with scripts/wheelhouse.sh"]


@pytest.mark.parametrize("damage, message", [
    ("missing", "einops-0.8.2-py3-none-any.whl is missing (the manifest lists it)"),
    ("not a zip", "einops-0.8.2-py3-none-any.whl is not a readable wheel (zip) (File is not a zip file)"),
    ("truncated manifest", "manifest.json: not valid JSON ("),
    ("not a manifest", "manifest.json: not a wheelhouse manifest (no 'files' field where one is expected)"),
])
def test_offline_setup_with_a_damaged_wheelhouse_is_one_line(tmp_path, damage, message):
    house = _small_house(tmp_path)
    wheel, manifest = house / "einops-0.8.2-py3-none-any.whl", house / "manifest.json"
    if damage == "missing":
        wheel.unlink()
    elif damage == "not a zip":
        wheel.write_text("<html>a proxy's error page</html>")
        _write_manifest(house)  # even recorded as such
    elif damage == "truncated manifest":
        manifest.write_text(manifest.read_text()[:100])
    else:
        manifest.write_text('{"python": "3.11"}')
    proc = _offline_setup(house, tmp_path / "venv")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("setup: ") and message in lines[0], lines
    assert not (tmp_path / "venv").exists()
