"""torch >= 2.6 loads checkpoints with weights_only=True, and fairseq checkpoints hold an argparse.Namespace (the
legacy model config): allow-list exactly the globals fairseq checkpoints need.  The safety stays on, so a
checkpoint carrying anything else (say, os.system) is still refused."""
import argparse

import numpy as np
import torch


def _numpy_multiarray():
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed np.core
    return core.multiarray


# Globals a fairseq checkpoint may pickle besides tensors and plain containers: the legacy model args, and the
# numpy arrays and scalars fairseq's metrics keep in extra_state (e.g. --eval-bleu's n-gram counts).  Rebuilding
# an array or scalar from a dtype and raw bytes runs no code; an object array still needs its elements' globals.
_NUMERIC_DTYPES = tuple({type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG"})
CHECKPOINT_SAFE_GLOBALS = (argparse.Namespace, np.ndarray, np.dtype, _numpy_multiarray()._reconstruct,
                           _numpy_multiarray().scalar) + _NUMERIC_DTYPES


def allow() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None and not allowed():  # torch < 2.4 has no weights_only default to work around
        add(list(CHECKPOINT_SAFE_GLOBALS))


def allowed() -> bool:
    get = getattr(torch.serialization, "get_safe_globals", None)
    return get is None or set(CHECKPOINT_SAFE_GLOBALS) <= set(get())
