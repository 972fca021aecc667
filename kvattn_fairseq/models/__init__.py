"""Models and architectures (registration happens on import).

fairseq's --user-dir loader also imports every file here as `kvattn_fairseq.models.<name>`, which is this same
package, so nothing is registered twice.

Each model class declares where its attention sits (`attention_positions`); everything else asks
attention_positions() below instead of keeping its own list.
"""
from typing import Optional, Tuple

from . import architectures, kvattn_classifier, kvattn_lm, kvattn_transformer  # noqa: F401
from .kvattn_classifier import KVAttnClassifier
from .kvattn_lm import KVAttnLanguageModel
from .kvattn_transformer import KVAttnTransformerModel

__all__ = ["FAIRSEQ_COUNTERPARTS", "KVAttnClassifier", "KVAttnLanguageModel", "KVAttnTransformerModel",
           "attention_positions", "model_of", "plugin_models"]

# fairseq's own models (all of their attention is fairseq's softmax) -> the plugin's model of the same layout
FAIRSEQ_COUNTERPARTS = {"transformer": "kvattn_transformer", "transformer_lm": "kvattn_lm"}


def model_of(name: Optional[str]) -> Optional[str]:
    """The registered fairseq model an architecture (or a model name) belongs to; None when unknown."""
    from fairseq.models import ARCH_MODEL_NAME_REGISTRY, MODEL_REGISTRY

    if name in ARCH_MODEL_NAME_REGISTRY:
        return ARCH_MODEL_NAME_REGISTRY[name]
    return name if name in MODEL_REGISTRY else None


def attention_positions(name: Optional[str], fairseq_models: bool = False) -> Optional[Tuple[str, ...]]:
    """The attention positions of the plugin's model `name` (a model or an architecture of it), as its class
    declares them; with `fairseq_models`, also those of fairseq's own models in FAIRSEQ_COUNTERPARTS.  None for
    any other model."""
    from fairseq.models import MODEL_REGISTRY

    model = model_of(name)
    if fairseq_models and model in FAIRSEQ_COUNTERPARTS:
        model = FAIRSEQ_COUNTERPARTS[model]
    return getattr(MODEL_REGISTRY.get(model), "attention_positions", None)


def plugin_models() -> Tuple[str, ...]:
    """The plugin's registered models, in the order they registered."""
    from fairseq.models import MODEL_REGISTRY

    return tuple(name for name, cls in MODEL_REGISTRY.items() if getattr(cls, "attention_positions", None))
