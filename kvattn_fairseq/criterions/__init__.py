"""Criteria (registration happens on import): attention_transfer."""
from . import attention_transfer  # noqa: F401
