"""Install the plugin's stack from a wheelhouse without asking pip to resolve anything (see setup_env.sh).

The wheelhouse was resolved once, where it was made (manifest.json).  Here pip only unpacks files (--no-deps): a
resolver would also have to accept the machine's own torch, and it refuses one whose declared requirements the
machine's packages do not meet by their metadata (a GPU node's torch pins CUDA packages, sympy, setuptools ... that
the node may carry at other versions), although that torch imports and runs.  Instead this script checks the stack
itself, with the same rules pip would apply to it:

  verify   every file the manifest lists is there with the size and sha256 it records and is the kind of file
           its name says (a wheel a readable zip, fairseq's source a tar.gz): a file rebuilt, truncated or swapped
           since the wheelhouse was made is refused in one line naming it, before anything is installed
           (setup_env.sh --offline runs it before it creates the environment; plan runs it again)
  plan     which wheels to install: every package the stack needs (the manifest's requirements and everything its
           wheels require, closed over) that the machine lacks or has at a version the stack does not accept;
           packages it already has at an accepted version are kept (the node's numpy, setuptools, ...)
  check    after the install: every requirement of every package this set-up installed (the plugin, fairseq, the
           wheelhouse's packages) is met by what is installed; the unmet requirements of the machine's own packages
           (its torch above all) are shown, never fatal: they are the machine's business, and the stack is then
           imported

  python scripts/offline_install.py verify WHEELHOUSE
  python scripts/offline_install.py plan WHEELHOUSE     prints the wheel files to install, one per line
  python scripts/offline_install.py check WHEELHOUSE [--extras test,gpu]
"""
import argparse
import importlib.metadata as md
import json
import os
import re
import sys
import tarfile
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wheelhouse import TORCH_STACK, _packaging, canon, sdist_metadata, sha256  # noqa: E402

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
        meta = next((n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
        if meta is None:
            fail(f"{path} has no .dist-info/METADATA: not a wheel; remake the wheelhouse with scripts/wheelhouse.sh")
        text = z.read(meta).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]
    return [line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("Requires-Dist:")]


def installed_version(name: str):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


REMAKE = "remake it with scripts/wheelhouse.sh"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\.(whl|tar\.gz)$")


class Wheelhouse:
    def __init__(self, folder: str):
        self.folder = folder
        path = os.path.join(folder, "manifest.json")
        if not os.path.isfile(path):
            fail(f"{folder} has no manifest.json; make it with scripts/wheelhouse.sh {folder}")
        try:
            with open(path, encoding="utf-8") as f:
                self.manifest = json.load(f)
            self.files = {f["name"]: f for f in self.manifest["files"]}
            self.sdist = os.path.join(folder, self.manifest["fairseq"]["sdist"])
            for key in ("requirements", "resolved"):
                self.manifest[key]
        except (OSError, UnicodeDecodeError) as e:
            fail(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e}); {REMAKE}")
        except ValueError as e:
            fail(f"{path}: not valid JSON ({e}): truncated or edited; {REMAKE}")
        except (KeyError, TypeError) as e:
            fail(f"{path}: not a wheelhouse manifest (no {e} field where one is expected); {REMAKE}")
        self.wheels = {}  # canonical name -> (version, file)
        for name, f in self.files.items():
            if not isinstance(name, str) or not SAFE_NAME.match(name) or not isinstance(f.get("bytes"), int) or \
                    not re.fullmatch(r"[0-9a-f]{64}", str(f.get("sha256"))):
                fail(f"{path}: its entry {name!r} is not a file name with bytes and sha256; {REMAKE}")
            if name.endswith(".whl"):
                dist, version = name.split("-")[:2]
                self.wheels[canon(dist)] = (version.replace("_", "-"), name)
        if os.path.basename(self.sdist) not in self.files:
            fail(f"{path}: fairseq's source {os.path.basename(self.sdist)} is not among its files; {REMAKE}")

    def verify(self) -> None:
        """Every listed file present, of the recorded size and sha256, and a readable wheel or tar.gz."""
        for name, f in sorted(self.files.items()):
            path = os.path.join(self.folder, name)
            if not os.path.isfile(path):
                fail(f"{path} is missing (the manifest lists it); {REMAKE}")
            size = os.path.getsize(path)
            if size != f["bytes"]:
                fail(f"{path} is {size} bytes, the manifest says {f['bytes']}: changed since the wheelhouse was "
                     f"made; nothing was installed; {REMAKE}")
            if sha256(path) != f["sha256"]:
                fail(f"{path}: its sha256 differs from the manifest's: changed since the wheelhouse was made; "
                     f"nothing was installed; {REMAKE}")
            try:
                if name.endswith(".whl"):  # its directory read (the sha256 above vouches for the bytes)
                    with zipfile.ZipFile(path) as z:
                        z.namelist()
                else:
                    with tarfile.open(path) as t:
                        t.getmembers()
            except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
                fail(f"{path} is not a readable {'wheel (zip)' if name.endswith('.whl') else 'tar.gz'} ({e}); "
                     f"{REMAKE}")

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
    p.add_argument("command", choices=("verify", "plan", "check"))
    p.add_argument("wheelhouse")
    p.add_argument("--extras", default="test", help="the plugin's extras installed (comma-separated)")
    a = p.parse_args(argv)
    house = Wheelhouse(a.wheelhouse)
    extras = [e for e in re.split(r"[,\s]+", a.extras) if e]
    if a.command == "verify":
        house.verify()
        print(f"verified: {len(house.files)} files of {a.wheelhouse} match its manifest")
        return 0
    if a.command == "plan":
        house.verify()
        print("\n".join(os.path.join(house.folder, f) for f in plan(house)))
        return 0
    return check(house, extras)


if __name__ == "__main__":
    sys.exit(main())
