"""Command-line glue: `python -m kvattn_fairseq --user-dir` and one-line errors for bad attention settings."""
import argparse
import os
import sys

from .modules.registry import ATTENTION_KINDS, PLAN_SYNTAX, POSITIONS, AttentionConfigError
from .util.errors import OneLineError


def install_error_hook() -> None:
    """Some errors surface deep inside fairseq: a bad attention setting (argument parsing, model build), an input
    longer than the model admits (batching), an unsafe checkpoint (its loader), bad data for the plugin's task, the
    allocator refusing a tensor far too large.  Print each as one line naming the fix, as argparse does, instead of
    a stack trace.  Other exceptions are untouched."""
    previous = sys.excepthook
    if getattr(previous, "kvattn_hook", False):
        return

    def hook(exc_type, exc, tb):
        from .compat import CheckpointRefused

        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "kvattn_fairseq"
        if issubclass(exc_type, (AttentionConfigError, CheckpointRefused, OneLineError)) or \
                _is_size_error(exc_type, exc):
            print(f"{prog}: error: {exc}", file=sys.stderr)
            sys.exit(2)
        if issubclass(exc_type, RuntimeError) and str(exc).startswith("Error(s) in loading state_dict for"):
            # weights loaded into a model they were not trained for (e.g. 'load_other_plan' with other shapes):
            # torch lists every mismatched tensor, dozens of lines; the first names the problem
            details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
            more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
            print(f"{prog}: error: the checkpoint's weights do not fit the model being built: "
                  f"{details[0] if details else exc}{more}", file=sys.stderr)
            sys.exit(2)
        if _is_memory_error(exc_type, exc):
            print(f"{prog}: error: out of memory ({_allocation(exc)}): the model or the batch is too large for this "
                  f"machine; use smaller sizes (e.g. the attention kinds' --*-slots / --mgk-components, "
                  f"--*-embed-dim) or fewer tokens per batch (--max-tokens, --batch-size)", file=sys.stderr)
            sys.exit(1)
        previous(exc_type, exc, tb)

    hook.kvattn_hook = True
    sys.excepthook = hook


def _is_memory_error(exc_type, exc) -> bool:
    """The allocator refusing a tensor (CPU: a RuntimeError from DefaultCPUAllocator; CUDA: OutOfMemoryError)."""
    return issubclass(exc_type, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        issubclass(exc_type, RuntimeError) and "can't allocate memory" in str(exc))


def _allocation(exc) -> str:
    import re

    found = re.search(r"tried to allocate ([\d.]+ ?\w*)", str(exc))
    return f"tried to allocate {found.group(1)}" if found else type(exc).__name__


def _is_size_error(exc_type, exc) -> bool:
    """fairseq's refusal of an input longer than the model admits; its message already names the fix
    (--skip-invalid-size-inputs-valid-test, which turns it into a counted, logged skip)."""
    return exc_type is Exception and str(exc).startswith("Size of sample #") and "skip this example" in str(exc)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvattn_fairseq", description=__doc__)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--user-dir", action="store_true", help="print the path to pass to fairseq's --user-dir")
    what.add_argument("--kinds", action="store_true", help="list the attention kinds and where each may sit")
    what.add_argument("--archs", action="store_true", help="list the plugin's architectures")
    args = parser.parse_args(argv)
    if args.user_dir:
        from . import USER_DIR

        print(USER_DIR)
    elif args.kinds:
        width = max(len(name) for name in ATTENTION_KINDS)
        for kind in sorted(ATTENTION_KINDS.values(), key=lambda k: k.name):
            where = ",".join(p for p in POSITIONS if p in kind.positions)
            print(f"{kind.name:<{width}} {where:<22} {kind.summary}")
        print(f"\nA position flag takes one kind for every layer, or a plan: {PLAN_SYNTAX}.")
    else:
        for model, arch, plan in arch_plans():
            print(f"{model:<20} {arch:<28} " + " ".join(f"{p}={kinds}" for p, kinds in plan.items()))
    return 0


def arch_plans():
    """(model, arch, {position: plan}) for each of the plugin's architectures, with its default flags."""
    from fairseq.models import ARCH_MODEL_INV_REGISTRY

    from .building import parse_model_args
    from .models.layers import check_attention_args

    models = {"kvattn_transformer": POSITIONS, "kvattn_lm": ("decoder",), "kvattn_classifier": ("encoder",)}
    for model, positions in models.items():
        for arch in ARCH_MODEL_INV_REGISTRY.get(model, []):
            plan = check_attention_args(parse_model_args(arch), positions)
            yield model, arch, {p: plan[p].text for p in positions}
