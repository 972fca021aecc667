"""Tasks and their criteria (registration happens on import; fairseq's --user-dir loader also imports every file here
as `kvattn_fairseq.tasks.<name>`, this same package)."""
from . import associative_recall, position_accuracy, position_classification  # noqa: F401
