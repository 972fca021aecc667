"""kvattn_fairseq: efficient key-value attention for fairseq, as a --user-dir plugin.

    fairseq-train ... --user-dir "$(python -m kvattn_fairseq --user-dir)" --arch memsizer_wmt_en_de_big

Importing the package applies the fixes to fairseq in patches.PATCHES and registers the attention kinds, the models
`kvattn_transformer` / `kvattn_lm` / `kvattn_classifier` and their architectures, the `attention_transfer`
criterion, and the task `kv_position_classification` with its criterion.  Nothing else in the process changes:
`sys.excepthook`, `argparse` and the import machinery stay as they were (patches/__init__.py).  The commands around
the plugin are `python -m kvattn_fairseq COMMAND` (commands/).
"""
import logging
import sys

from .util.moved import stop_old_command

stop_old_command()  # `python -m kvattn_fairseq.<old name>`: one line naming the command, before fairseq is imported

# fairseq's import logs an optional-dependency hint on stderr in front of every one-line error; it is not actionable.
logging.getLogger("fairseq.tasks.text_to_speech").addFilter(lambda r: "tensorboardX" not in r.getMessage())

from .util.paths import USER_DIR  # noqa: E402,F401
from . import patches  # noqa: E402
from .kernels import check_environment  # noqa: E402

patches.apply()
try:  # a bad KVATTN_KERNELS stops every command and fairseq tool here, in one line (patches' error hook)
    check_environment()
except Exception as e:  # noqa: BLE001
    if sys.argv[:1] == ["-m"]:  # `python -m kvattn_fairseq ...` imports the package before it names its program
        print(f"python -m kvattn_fairseq: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    raise

from . import modules  # noqa: E402  (kinds first: the models' flags list them)
from . import models  # noqa: E402,F401
from . import criterions  # noqa: E402,F401
from . import tasks  # noqa: E402,F401

__version__ = "0.1.0"
