"""Build a model from an architecture name and command-line flags, the way fairseq's CLI does, without a task's
data: used by the tests and the benchmark."""
import argparse
from typing import Optional

from fairseq import models as fairseq_models
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY


def make_dictionary(n_symbols: int = 24) -> Dictionary:
    d = Dictionary()
    for i in range(n_symbols):
        d.add_symbol(f"w{i}")
    return d


class DictionaryTask:
    """The two attributes model builders read from a task."""

    def __init__(self, dictionary: Dictionary):
        self.source_dictionary = dictionary
        self.target_dictionary = dictionary


def parse_model_args(arch: str, *flags: str) -> argparse.Namespace:
    """What fairseq's parse_args_and_arch does for the model: its flags without defaults, then the arch function."""
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    ARCH_MODEL_REGISTRY[arch].add_args(parser)
    args = parser.parse_args(list(flags))
    args.arch = arch
    ARCH_CONFIG_REGISTRY[arch](args)
    return args


def build_model(arch: str, *flags: str, dictionary: Optional[Dictionary] = None, **task_args):
    """fairseq's own build path (legacy and dataclass models alike), in eval mode.  `task_args` are settings the
    task would supply (e.g. max_target_positions)."""
    args = parse_model_args(arch, *flags)
    for key, value in task_args.items():
        setattr(args, key, value)
    return fairseq_models.build_model(args, DictionaryTask(dictionary or make_dictionary())).eval()
