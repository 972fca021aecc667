"""Install the plugin's stack from a wheelhouse without asking pip to resolve anything (see setup_env.sh).

The wheelhouse was resolved once, where it was made (manifest.json).  Here pip only unpacks files (--no-deps): a
resolver would also have to accept the machine's own torch, and it refuses one whose declared requirements the
machine's packages do not meet by their metadata (a GPU node's torch pins CUDA packages, sympy, setuptools ... that
the node may carry at other versions), although that torch imports and runs.  Instead this script checks the stack
itself, with the same rules pip would apply to it:

  plan     which wheels to install: every package the stack needs (the manifest's requirements and everything its
           wheels require, closed over) that the machine lacks or has at a version the stack does not accept;
           packages it already has at an accepted version are kept (the node's numpy, setuptools, ...)
  check    after the install: every requirement of every package this set-up installed (the plugin, fairseq, the
           wheelhouse's packages) is met by what is installed; the unmet requirements of the machine's own packages
           (its torch above all) are shown, never fatal: they are the machine's business, and the stack is then
           imported

  python scripts/offline_install.py plan WHEELHOUSE     prints the wheel files to install, one per line
  python scripts/offline_install.py check WHEELHOUSE [--extras test,gpu]
"""
import argparse
import importlib.metadata as md
import json
import os
import re
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wheelhouse import TORCH_STACK, _packaging, canon, sdist_metadata  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = "kvattn-fairseq"


def fail(msg: str):
    print(f"setup: {msg}", file=sys.stderr)
    sys.exit(1)


def environment(extra: str = ""):
    _, default_environment = _packaging()
    return dict(default_environment(), extra=extra)


def wanted(req, extras=("",)) -> bool:
    return req.marker is None or any(req.marker.evaluate(environment(e)) for e in extras)


def wheel_requires(path: str):
    """Requires-Dist of a wheel, read from its METADATA without installing it."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]
    return [line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("Requires-Dist:")]


def installed_version(name: str):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


class Wheelhouse:
    def __init__(self, folder: str):
        self.folder = folder
        path = os.path.join(folder, "manifest.json")
        if not os.path.isfile(path):
            fail(f"{folder} has no manifest.json; make it with scripts/wheelhouse.sh {folder}")
        self.manifest = json.load(open(path))
        self.wheels = {}  # canonical name -> (version, file)
        for f in self.manifest["files"]:
            if f["name"].endswith(".whl"):
                name, version = f["name"].split("-")[:2]
                self.wheels[canon(name)] = (version.replace("_", "-"), f["name"])
        self.sdist = os.path.join(folder, self.manifest["fairseq"]["sdist"])

    def requirements(self):
        """Every requirement the stack states: the manifest's (the plugin's, its extras', fairseq's and its build
        requirements), fairseq's own, and those of every wheel in the wheelhouse."""
        Requirement, _ = _packaging()
        texts = list(self.manifest["requirements"]) + sdist_metadata(self.sdist)[0]
        for _, f in self.wheels.values():
            texts += wheel_requires(os.path.join(self.folder, f))
        return [r for r in (Requirement(t) for t in texts) if wanted(r)]


def plan(house: Wheelhouse):
    """The wheel files to install, after checking that each package of the stack will be at an accepted version."""
    Requirement, _ = _packaging()
    specs = {}
    for req in house.requirements():
        specs.setdefault(canon(req.name), []).append(req.specifier)
    todo, problems = [], []
    for name, sets in sorted(specs.items()):
        if TORCH_STACK.match(name) or name.startswith("fairseq"):
            continue  # the machine's own torch stack; fairseq is compiled here from its source
        have = installed_version(name)
        accepted = lambda v: all(s.contains(v, prereleases=True) for s in sets)  # noqa: E731
        if have is not None and accepted(have):
            continue
        if name in house.wheels and accepted(house.wheels[name][0]):
            todo.append(house.wheels[name][1])
            continue
        need = ",".join(str(s) for s in sets if str(s)) or "any version"
        offer = f"the wheelhouse has {house.wheels[name][0]}" if name in house.wheels else "the wheelhouse has none"
        problems.append(f"{name} {need} is needed; this machine has {have or 'none'} and {offer}")
    if house.manifest.get("triton") and installed_version("triton") is None:
        todo.append(house.wheels["triton"][1])  # carried for Triton's interpreter (wheelhouse.sh --triton)
    if problems:
        fail("the wheelhouse does not fit this machine: " + "; ".join(problems) +
             " (remake it with scripts/wheelhouse.sh, giving --have the machine's pip freeze)")
    return todo


def stack_names(house: Wheelhouse):
    fairseq = canon(house.manifest["fairseq"]["requirement"].split("==")[0])
    return {canon(n) for n in house.manifest["resolved"]} | {PLUGIN, fairseq}


def machines_own(dist) -> bool:
    """A package this set-up kept rather than installed: it lies outside this environment (a system site)."""
    where = os.path.realpath(str(dist.locate_file("")))
    return not where.startswith(os.path.realpath(sys.prefix) + os.sep)


def check(house: Wheelhouse, extras) -> int:
    """Every requirement of the packages this set-up installed met; the machine's own packages' shown only."""
    Requirement, _ = _packaging()
    broken, notes = [], []
    for name in sorted(stack_names(house) | {"torch"}):
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # resolved for the wheelhouse's platform but unneeded here: a requirement below would say
        own = name == "torch" or machines_own(dist)
        use = ("",) + (tuple(extras) if canon(name) == PLUGIN else ())
        for text in dist.requires or []:
            req = Requirement(text)
            if not wanted(req, use):
                continue
            have = installed_version(req.name)
            if have is not None and req.specifier.contains(have, prereleases=True):
                continue
            line = f"{name} {dist.version} requires {req.name}{req.specifier or ''}, " \
                   f"{'which is not installed' if have is None else 'found ' + have}"
            (notes if own else broken).append(line)
    for line in notes:
        print(f"note, the machine's own package: {line} (left as it is: the stack imports, see below)")
    if broken:
        fail("the plugin's stack has unmet requirements: " + "; ".join(broken))
    print("stack check: every requirement of the plugin's stack is met")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/offline_install.py", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("plan", "check"))
    p.add_argument("wheelhouse")
    p.add_argument("--extras", default="test", help="the plugin's extras installed (comma-separated)")
    a = p.parse_args(argv)
    house = Wheelhouse(a.wheelhouse)
    extras = [e for e in re.split(r"[,\s]+", a.extras) if e]
    if a.command == "plan":
        print("\n".join(os.path.join(house.folder, f) for f in plan(house)))
        return 0
    return check(house, extras)


if __name__ == "__main__":
    sys.exit(main())
