"""The package's shape: only __init__ and __main__ at its top level, an import graph without cycles, one list of
fairseq patches applied exactly once (and the list in docs/reliability.md generated from it), one error base, one
command entry point that the old `python -m` module names point to."""
import ast
import importlib
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kvattn_fairseq
from kvattn_fairseq import commands, patches
from kvattn_fairseq.patches.apply import is_patched, resolve
from kvattn_fairseq.util.errors import OneLineError
from kvattn_fairseq.util.moved import MOVED, message

from conftest import run

PACKAGE = Path(kvattn_fairseq.__file__).parent


def test_the_top_level_holds_only_init_and_main():
    assert {p.name for p in PACKAGE.glob("*.py")} == {"__init__.py", "__main__.py"}


def _module_names():
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _import_graph():
    """module -> the package's modules it imports anywhere in its code (function-level imports included)."""
    names = _module_names()
    graph = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rsplit(".", 1)[0]
                base = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
                found = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in found:
                while target not in names and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in names and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def test_the_import_graph_has_no_cycles():
    graph, state, cycles = _import_graph(), {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_every_patch_is_applied_on_import_and_no_function_twice():
    assert [p.target for p in patches.PATCHES if not p.applied()] == []
    targets = [p.target for p in patches.PATCHES]
    assert len(targets) == len(set(targets))


def test_applying_the_patches_again_changes_nothing():
    wrapped = {p.target: getattr(*resolve(p.target)) for p in patches.PATCHES if p.layers}
    safe_globals, compat = list(torch.serialization.get_safe_globals()), np.compat
    patches.apply()
    assert {t: getattr(*resolve(t)) for t in wrapped} == wrapped
    for target, replacement in wrapped.items():
        assert is_patched(replacement) and not is_patched(replacement.__wrapped__), target  # one layer of ours
    assert list(torch.serialization.get_safe_globals()) == safe_globals and np.compat is compat


def test_the_docs_list_the_patches():
    page = (PACKAGE.parent / patches.DOCS_PAGE).read_text(encoding="utf-8")
    section = page[page.index(patches.DOCS_BEGIN) + len(patches.DOCS_BEGIN):page.index(patches.DOCS_END)]
    assert section == patches.docs_section(), f"run `python scripts/docs_sections.py` ({patches.DOCS_PAGE} is stale)"


def test_every_user_facing_error_has_the_one_base_and_keeps_its_own():
    from kvattn_fairseq.bench.common import BenchmarkError
    from kvattn_fairseq.checkpoints.convert import ConversionError
    from kvattn_fairseq.checkpoints.plan import PlanMismatch
    from kvattn_fairseq.modules.registry import AttentionConfigError
    from kvattn_fairseq.patches.tool_refusals import EvalLMRefused
    from kvattn_fairseq.patches.unsafe_checkpoints import CheckpointRefused

    for error, old_base in ((AttentionConfigError, ValueError), (ConversionError, ValueError),
                            (CheckpointRefused, pickle.UnpicklingError), (BenchmarkError, RuntimeError),
                            (PlanMismatch, OneLineError), (EvalLMRefused, OneLineError)):
        assert issubclass(error, OneLineError) and issubclass(error, old_base), error


def test_every_command_has_a_main():
    for name, (target, _what) in commands.COMMANDS.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_a_command_runs_with_the_arguments_after_its_name(tmp_path, capsys):
    assert commands.main(["toydata", "lm", str(tmp_path), "--train", "3", "--valid", "2", "--test", "1"]) == 0
    assert len((tmp_path / "train.txt").read_text().splitlines()) == 3
    with pytest.raises(SystemExit) as e:
        commands.main(["no-such-command"])
    assert e.value.code == 2 and "unknown command 'no-such-command'" in capsys.readouterr().err


@pytest.mark.parametrize("old", sorted(MOVED))
def test_the_old_module_names_say_what_replaced_them(old):
    new, command = MOVED[old]
    importlib.import_module(new)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)
    proc = run([sys.executable, "-m", old, "--some-flag"])  # stops in the package's __init__, before fairseq loads
    want = f"run `python -m kvattn_fairseq {command}` (the same arguments)" if command else f"moved to {new}"
    assert proc.returncode == 2 and proc.stderr.splitlines() == [f"kvattn_fairseq: error: {message(old, True)}"]
    assert want in proc.stderr and proc.stdout == ""


GUEST = """
import argparse, sys
before = (sys.excepthook, argparse.ArgumentParser.error, list(sys.meta_path), list(sys.path_hooks))
import kvattn_fairseq
after = (sys.excepthook, argparse.ArgumentParser.error, list(sys.meta_path), list(sys.path_hooks))
print([name for name, a, b in zip(("excepthook", "error", "meta_path", "path_hooks"), before, after) if a != b])
"""


def test_a_plain_import_leaves_the_process_as_it_was():
    """A notebook or script that imports the plugin keeps Python's error hook, argparse and import machinery."""
    proc = run([sys.executable, "-c", GUEST], env_extra={"PYTHONWARNINGS": "ignore"}, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr[-2000:]
