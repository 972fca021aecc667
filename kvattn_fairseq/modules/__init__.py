"""Attention kinds: importing this package registers every kind."""
from . import (delta_attention, gated_delta_attention, kv_attention, linear_attention,  # noqa: F401
               linformer_attention, memsizer_attention, mgk_attention, softmax_attention)
from . import window_attention  # noqa: F401,E402  (after the memory kinds it pairs with)
from .base import KVAttentionBase
from .delta_attention import DeltaAttention
from .gated_delta_attention import GatedDeltaAttention
from .kv_attention import KVAttention
from .linear_attention import FactorizedAttention, LinearAttention
from .linformer_attention import LinformerAttention
from .memsizer_attention import MemSizerAttention
from .mgk_attention import MGKAttention, MLKAttention
from .plan import AttentionPlan, attention_plan
from .window_attention import WindowAttention, WindowMemoryAttention
from .registry import (ATTENTION_KINDS, POSITION_FLAGS, POSITIONS, AttentionConfigError, AttentionSite,
                       add_attention_args, apply_attention_defaults, build_attention, kinds_at,
                       register_attention_kind)

__all__ = ["ATTENTION_KINDS", "AttentionPlan", "POSITIONS", "POSITION_FLAGS", "AttentionConfigError", "AttentionSite",
           "DeltaAttention", "GatedDeltaAttention",
           "FactorizedAttention", "KVAttention", "KVAttentionBase", "LinearAttention", "LinformerAttention",
           "MGKAttention", "MLKAttention", "MemSizerAttention", "WindowAttention", "WindowMemoryAttention", "add_attention_args", "apply_attention_defaults", "attention_plan",
           "build_attention", "kinds_at", "register_attention_kind"]
