"""Attention kinds: importing this package registers every kind."""
from . import softmax_attention, memsizer_attention  # noqa: F401  (registration)
from .base import KVAttentionBase
from .memsizer_attention import MemSizerAttention
from .registry import (ATTENTION_KINDS, POSITION_FLAGS, POSITIONS, AttentionConfigError, AttentionSite,
                       add_attention_args, apply_attention_defaults, attention_plan, build_attention, kinds_at,
                       register_attention_kind)

__all__ = ["ATTENTION_KINDS", "POSITIONS", "POSITION_FLAGS", "AttentionConfigError", "AttentionSite",
           "KVAttentionBase", "MemSizerAttention", "add_attention_args", "apply_attention_defaults",
           "attention_plan", "build_attention", "kinds_at", "register_attention_kind"]
