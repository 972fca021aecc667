"""numpy 2 removed np.compat; fairseq's TokenBlockDataset (--sample-break-mode eos) and LanguagePairDataset still
use np.compat.long."""
import sys
import types

import numpy as np


def restore() -> None:
    if present():
        return
    try:
        import numpy.compat  # noqa: F401  (numpy 2.0-2.2 still ship it, just not imported)
        return
    except ImportError:
        pass
    compat = types.ModuleType("numpy.compat")
    compat.long = int
    sys.modules["numpy.compat"] = compat
    np.compat = compat


def present() -> bool:
    return hasattr(np, "compat")
