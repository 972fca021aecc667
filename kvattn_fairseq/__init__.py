"""kvattn_fairseq: efficient key-value attention for fairseq, as a --user-dir plugin.

    fairseq-train ... --user-dir "$(python -m kvattn_fairseq --user-dir)" --arch memsizer_wmt_en_de_big

Importing the package applies the compatibility fixes (compat.py) and registers the attention kinds, the models
`kvattn_transformer` / `kvattn_lm` / `kvattn_classifier` and their architectures, the `attention_transfer`
criterion, and the task `kv_position_classification` with its criterion.
"""
import logging
import os

# fairseq's import logs an optional-dependency hint on stderr in front of every one-line error; it is not actionable.
logging.getLogger("fairseq.tasks.text_to_speech").addFilter(lambda r: "tensorboardX" not in r.getMessage())

from . import compat  # noqa: E402

compat.apply()

from . import modules  # noqa: E402  (kinds first: the models' flags list them)
from . import models  # noqa: E402,F401
from . import criterions  # noqa: E402,F401
from . import tasks  # noqa: E402,F401
from .cli import install_error_hook  # noqa: E402

__version__ = "0.1.0"
USER_DIR = os.path.dirname(os.path.abspath(__file__))

install_error_hook()
