"""Build a wheelhouse: everything the plugin needs except torch, for a machine without network (see wheelhouse.sh).

What goes in: the plugin's requirements and its test/bench extras (from pyproject.toml, with its environment markers
evaluated for the target Python), fairseq's requirements and build requirements (from its source distribution),
ninja (fairseq's C++ extensions then compile in parallel), resolved together for the target Python and platform as
binary wheels; the few dependencies published only as source are built here into wheels, which must come out
pure Python (py3-none-any) to be valid on the target; fairseq itself stays a source distribution, because its C++
extensions must be compiled against the target's torch.  torch is left out: the target has it (a CUDA build).
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# the target's own: never downloaded (torch's CUDA build brings these)
TORCH_STACK = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64")
EXTRA_BUILD = ["ninja", "setuptools>=64", "wheel"]  # ninja: parallel compiles; >=64: editable installs


def fail(msg: str):
    print(f"wheelhouse: {msg}", file=sys.stderr)
    sys.exit(1)


def _packaging():
    try:
        from packaging.markers import default_environment
        from packaging.requirements import Requirement
    except ImportError:  # a bare venv: pip's vendored copy
        from pip._vendor.packaging.markers import default_environment
        from pip._vendor.packaging.requirements import Requirement
    return Requirement, default_environment


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements():
    """The dependencies and every optional dependency (extra) of pyproject.toml's [project]."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11: pip's vendored copy of the same parser
        from pip._vendor import tomli as tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs += list(extra)
    return reqs


def applies(req, python: str) -> bool:
    _, default_environment = _packaging()
    if req.marker is None:
        return True
    env = dict(default_environment(), python_version=python, python_full_version=python + ".0", extra="")
    return req.marker.evaluate(env)


def pip(py, *args, check=True, **kw):
    return subprocess.run([py, "-m", "pip", *args], check=check, text=True, **kw)


def sdist_metadata(sdist: str):
    """(Requires-Dist without extras, build-system requires) from a source distribution."""
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        pkg_info = next(n for n in names if n.count("/") == 1 and n.endswith("/PKG-INFO"))
        info = tar.extractfile(pkg_info).read().decode()
        pyproject = next((n for n in names if n.count("/") == 1 and n.endswith("/pyproject.toml")), None)
        build = []
        if pyproject:
            text = tar.extractfile(pyproject).read().decode()
            block = re.search(r"\[build-system\].*?requires\s*=\s*\[(.*?)\]", text, re.S)
            build = re.findall(r"\"([^\"]+)\"", block.group(1)) if block else []
    runtime = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Requires-Dist:")]
    return [r for r in runtime if "extra ==" not in r], build


def read_have(path: str):
    """`pip list --format=freeze` of the target: {canonical name: version or None}."""
    have = {}
    for line in open(path):
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        name, _, version = line.partition("==")
        have[canon(name.split("@")[0].strip())] = version.strip() or None
    return have


def placeholder_wheel(folder: str, name: str, version: str) -> str:
    """A metadata-only wheel standing for the target's own `name`, so that requirements on it (torchaudio's on
    torch) resolve against the target's version without downloading it.  Used only for the resolution, never
    kept in the wheelhouse nor installed."""
    import zipfile

    dist = f"{name}-{version}"
    path = os.path.join(folder, f"{dist}-py3-none-any.whl")
    files = {f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: wheelhouse\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n"}
    files[f"{dist}.dist-info/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
    return path


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(argv=None) -> int:
    # before anything imports pip's vendored packages, which load the stdlib distutils that setuptools' own would
    # replace.  Not at the top: offline_install.py imports this module, and a setuptools >= 71 once imported puts
    # its vendored packages' metadata on sys.path, where they would pass for installed ones.
    import setuptools  # noqa: F401
    p = argparse.ArgumentParser(prog="scripts/wheelhouse.sh", description=__doc__)
    p.add_argument("out")
    p.add_argument("--python", default="%d.%d" % sys.version_info[:2], help="target Python, e.g. 3.12")
    p.add_argument("--platform", action="append", help=f"pip platform tags (default: {', '.join(PLATFORMS)})")
    p.add_argument("--torch", help="the target's torch version, e.g. 2.11.0 (default: this Python's torch); "
                                   "packages that require torch are resolved against it")
    p.add_argument("--have", help="the target's `python -m pip list --format=freeze`: those packages are kept at "
                                  "their versions and not downloaded")
    p.add_argument("--triton", help="also carry triton==VERSION, for a machine whose torch does not bring it (a CPU "
                                    "build): the plugin's Triton kernels then run in Triton's interpreter for tests")
    a = p.parse_args(argv)
    if a.triton and not re.fullmatch(r"\d+(\.\d+)*", a.triton):
        fail(f"--triton: expected a version like 3.6.0, got {a.triton!r}")
    if not re.fullmatch(r"3\.\d+", a.python):
        fail(f"--python: expected a version like 3.12, got {a.python!r}")
    if a.have and not os.path.isfile(a.have):
        fail(f"--have: no such file {a.have}")
    py = sys.executable
    try:
        import torch
    except ImportError:
        fail(f"{py} has no torch: fairseq's setup.py imports it to state its own metadata; run with a Python that "
             f"has torch (PYTHON=.venv/bin/python scripts/wheelhouse.sh ...)")
    Requirement, _ = _packaging()
    abi = "cp" + a.python.replace(".", "")
    target = ["--python-version", a.python, "--implementation", "cp", "--abi", abi]
    for plat in a.platform or PLATFORMS:
        target += ["--platform", plat]
    have = read_have(a.have) if a.have else {}
    torch_version = a.torch or (have.get("torch") or torch.__version__).split("+")[0]
    if not re.fullmatch(r"\d+(\.\d+)*", torch_version):
        fail(f"--torch: expected a version like 2.11.0, got {torch_version!r}")

    out = os.path.abspath(a.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)  # a fresh checkout has no .cache/ yet
    stage = tempfile.mkdtemp(prefix=".wheelhouse-", dir=os.path.dirname(out) or ".")
    work = tempfile.mkdtemp(prefix="wheelhouse-work-")
    try:
        plugin = [Requirement(r) for r in project_requirements()]
        plugin = [r for r in plugin if applies(r, a.python)]
        fairseq = [r for r in plugin if canon(r.name).startswith("fairseq")]
        if len(fairseq) != 1 or not str(fairseq[0].specifier).startswith("=="):
            fail(f"pyproject.toml must pin exactly one fairseq for Python {a.python}, found "
                 f"{[str(r) for r in fairseq]}")
        print(f"[wheelhouse] {fairseq[0].name}{fairseq[0].specifier} source (compiled on the target against its "
              f"torch {torch_version})", flush=True)
        fairseq_pin = f"{fairseq[0].name}{fairseq[0].specifier}"
        pip(py, "download", "-q", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", "-d", stage,
            fairseq_pin)
        sdist = next(os.path.join(stage, f) for f in os.listdir(stage) if f.endswith(".tar.gz"))
        runtime, build = sdist_metadata(sdist)
        wanted = {}
        for text in [str(r) for r in plugin if r is not fairseq[0]] + runtime + build + EXTRA_BUILD:
            req = Requirement(text)
            if TORCH_STACK.match(canon(req.name)) or not applies(req, a.python):
                continue
            req.marker = None
            wanted.setdefault(canon(req.name), []).append(str(req))
        reqs_file = os.path.join(work, "requirements.txt")
        with open(reqs_file, "w") as f:
            f.write("\n".join(r for rs in wanted.values() for r in rs) + "\n")
        constraints = os.path.join(work, "have.txt")
        placeholder = f"{torch_version}+target"
        with open(constraints, "w") as f:
            f.write("".join(f"{n}=={v}\n" for n, v in have.items()
                            if v and "+" not in v and not TORCH_STACK.match(n)) + f"torch=={placeholder}\n")

        local = os.path.join(work, "local")  # wheels built here from source-only dependencies
        os.makedirs(local)
        stand_in = os.path.join(work, "target")
        os.makedirs(stand_in)
        placeholder_wheel(stand_in, "torch", placeholder)
        # pip download resolves and fetches in one go and, unlike `pip install --dry-run`, checks Requires-Python
        # against the target's version rather than this interpreter's
        wheels_dir = os.path.join(work, "wheels")
        for _ in range(10):
            print(f"[wheelhouse] resolving and downloading for CPython {a.python} "
                  f"({', '.join(a.platform or PLATFORMS)})", flush=True)
            proc = pip(py, "download", "--quiet", "-d", wheels_dir, "--only-binary=:all:", "--find-links", local,
                       "--find-links", stand_in, *target, "-c", constraints, "-r", reqs_file, check=False,
                       capture_output=True)
            if proc.returncode == 0:
                break
            missing = re.search(r"No matching distribution found for (\S+)", proc.stderr)
            if not missing:
                fail("pip could not resolve the requirements:\n" + proc.stderr[-3000:])
            spec = missing.group(1)
            print(f"[wheelhouse] {spec} is published as source only: building its wheel here", flush=True)
            built = os.path.join(work, "built")
            shutil.rmtree(built, ignore_errors=True)
            proc = pip(py, "wheel", "-q", "--no-deps", "-w", built, spec, check=False, capture_output=True)
            wheels = os.listdir(built) if os.path.isdir(built) else []
            if proc.returncode != 0 or len(wheels) != 1 or not wheels[0].endswith("-none-any.whl"):
                fail(f"{spec} has no wheel for CPython {a.python} and is not pure Python: it cannot be built here for "
                     f"the target ({proc.stderr.strip()[-500:]})")
            shutil.move(os.path.join(built, wheels[0]), local)
        else:
            fail("gave up resolving after 10 source-only dependencies")

        resolved, kept = [], 0
        for f in sorted(os.listdir(wheels_dir)):
            name, version = f.split("-")[:2]
            if canon(name) == "torch" and version.replace("_", "+") == placeholder:
                continue
            if TORCH_STACK.match(canon(name)):
                fail(f"a requirement pulls in {f}, which the target must bring itself")
            resolved.append((name, version))
            if canon(name) not in have:
                shutil.move(os.path.join(wheels_dir, f), stage)
                kept += 1
        if a.triton:
            print(f"[wheelhouse] triton=={a.triton} (for Triton's interpreter on a CPU)", flush=True)
            pip(py, "download", "-q", "--no-deps", "--only-binary=:all:", *target, "-d", stage, f"triton=={a.triton}")
            resolved.append(("triton", a.triton))
        print(f"[wheelhouse] {kept} wheels kept ({len(os.listdir(local))} built here), {len(resolved) - kept} left "
              f"out (the target has them)", flush=True)

        files = sorted(f for f in os.listdir(stage) if f.endswith((".whl", ".tar.gz")))
        manifest = {
            "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "python": a.python, "platforms": list(a.platform or PLATFORMS),
            "requirements": [r for rs in wanted.values() for r in rs],
            "fairseq": {"requirement": fairseq_pin, "sdist": os.path.basename(sdist)},
            "torch": torch_version, "triton": a.triton,
            "left_out": {"torch stack": TORCH_STACK.pattern, "the target has": sorted(have)},
            "resolved": {n: v for n, v in resolved},
            "files": [{"name": f, "bytes": os.path.getsize(os.path.join(stage, f)),
                       "sha256": sha256(os.path.join(stage, f))} for f in files],
        }
        manifest["total_bytes"] = sum(f["bytes"] for f in manifest["files"])
        with open(os.path.join(stage, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.chmod(stage, 0o755)  # mkdtemp's 0700 would hide the wheelhouse from the node's other users
        os.replace(stage, out)  # a complete wheelhouse or none: never a half-downloaded one under OUT
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
    print(f"[wheelhouse] {out}: {len(files)} files, {manifest['total_bytes'] / 1e6:.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
