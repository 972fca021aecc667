"""A checkpoint that torch refuses (a global outside the allow-list of checkpoint_globals.py) surfaces as a long
pickle error that suggests allow-listing the global; it becomes a one-line refusal that names the file and the
global."""
import pickle
import re

from ..util.errors import OneLineError


class CheckpointRefused(OneLineError, pickle.UnpicklingError):
    """A checkpoint needs a global that is not allow-listed; it was not loaded and nothing in it ran."""


def refuse_clearly(load):
    """A layer of fairseq's checkpoint_utils.load_checkpoint_to_cpu."""
    def wrapper(path, *args, **kwargs):
        try:
            return load(path, *args, **kwargs)
        except pickle.UnpicklingError as e:
            if isinstance(e, CheckpointRefused) or "Weights only load failed" not in str(e):
                raise
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            what = found.group(1) if found else "a global that is not allow-listed"
            raise CheckpointRefused(
                f"refusing to load checkpoint {path}: it references {what}, which fairseq checkpoints do not need "
                f"and which could run code on load; load only checkpoints you trust, and if you do trust this one, "
                f"allow-list that global with torch.serialization.add_safe_globals") from None

    return wrapper
