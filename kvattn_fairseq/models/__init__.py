"""Models and architectures (registration happens on import).

fairseq's --user-dir loader also imports every file here as `kvattn_fairseq.models.<name>`, which is this same
package, so nothing is registered twice.
"""
from . import architectures, kvattn_classifier, kvattn_lm, kvattn_transformer  # noqa: F401
from .kvattn_classifier import KVAttnClassifier
from .kvattn_lm import KVAttnLanguageModel
from .kvattn_transformer import KVAttnTransformerModel

__all__ = ["KVAttnClassifier", "KVAttnLanguageModel", "KVAttnTransformerModel"]
