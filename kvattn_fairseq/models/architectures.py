"""Named architectures: each paper configuration, plus tiny ones for tests and the demo.

An architecture only fills what the command line left unset, then runs the model's base architecture (which
validates the attention settings), exactly as fairseq's own architectures do.
"""
from fairseq.models import register_model_architecture
from fairseq.models.transformer import transformer_vaswani_wmt_en_de_big, transformer_wmt_en_de
from fairseq.models.transformer_lm import transformer_lm_baevski_wiki103

from .kvattn_lm import kvattn_lm_base, lm_attention_defaults
from .kvattn_transformer import attention_defaults, kvattn_transformer_base

# The MemSizer MT layout (docs/papers/memsizer.md): softmax encoder, MemSizer decoder self (k=4) and cross
# (k=32) attention, init scales 8/8.
MEMSIZER_MT = dict(encoder_attention_type="softmax", decoder_attention_type="memsizer",
                   cross_attention_type="memsizer", memsizer_self_slots=4, memsizer_cross_slots=32,
                   memsizer_q_init_scale=8.0, memsizer_kv_init_scale=8.0)


def _defaults(args, **values):
    for key, value in values.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


@register_model_architecture("kvattn_transformer", "memsizer_wmt_en_de_big")
def memsizer_wmt_en_de_big(args):
    """Transformer-big (6+6 layers, 1024/4096, 16 heads, dropout 0.3) with the MemSizer decoder."""
    attention_defaults(args, **MEMSIZER_MT)
    transformer_vaswani_wmt_en_de_big(args)
    kvattn_transformer_base(args)


@register_model_architecture("kvattn_transformer", "memsizer_wmt_en_de")
def memsizer_wmt_en_de(args):
    """Transformer-base (6+6 layers, 512/2048, 8 heads) with the MemSizer decoder."""
    attention_defaults(args, **MEMSIZER_MT)
    transformer_wmt_en_de(args)
    kvattn_transformer_base(args)


@register_model_architecture("kvattn_transformer", "memsizer_cnn_dm")
def memsizer_cnn_dm(args):
    """CNN/DailyMail: the paper's summarization model size was not retrievable (docs/papers/memsizer.md);
    this is Transformer-base with the MT MemSizer decoder and room for the 1024-token truncated sources."""
    attention_defaults(args, **MEMSIZER_MT)
    _defaults(args, max_source_positions=1024, max_target_positions=1024)
    transformer_wmt_en_de(args)
    kvattn_transformer_base(args)


@register_model_architecture("kvattn_lm", "memsizer_lm_wiki103")
def memsizer_lm_wiki103(args):
    """WikiText-103 (docs/papers/memsizer.md): 32 pre-norm layers of 1024/4096 with 8 heads, adaptive input
    tied with the adaptive softmax, layerdrop 0.2, dropout 0.2, MemSizer with 32 slots, init scales 32/1."""
    lm_attention_defaults(args, decoder_attention_type="memsizer", memsizer_self_slots=32,
                          memsizer_q_init_scale=32.0, memsizer_kv_init_scale=1.0)
    _defaults(args, decoder_layers=32, decoder_layerdrop=0.2, dropout=0.2)
    transformer_lm_baevski_wiki103(args)
    kvattn_lm_base(args)


# --- tiny models for tests and the demo --------------------------------------------------------------------------
def _tiny(args):
    _defaults(args, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_layers=2, encoder_attention_heads=4,
              decoder_embed_dim=64, decoder_ffn_embed_dim=128, decoder_layers=2, decoder_attention_heads=4,
              dropout=0.1)


@register_model_architecture("kvattn_transformer", "kvattn_transformer_tiny")
def kvattn_transformer_tiny(args):
    """2+2 layers of 64/128 with 4 heads; softmax everywhere unless flags say otherwise."""
    _tiny(args)
    kvattn_transformer_base(args)


@register_model_architecture("kvattn_transformer", "memsizer_tiny")
def memsizer_tiny(args):
    """kvattn_transformer_tiny with the paper's MT layout (MemSizer decoder self k=4, cross k=32)."""
    attention_defaults(args, **MEMSIZER_MT)
    kvattn_transformer_tiny(args)


@register_model_architecture("kvattn_lm", "kvattn_lm_tiny")
def kvattn_lm_tiny(args):
    """2 layers of 64/128 with 4 heads; softmax unless --decoder-attention-type says otherwise."""
    _tiny(args)
    kvattn_lm_base(args)


@register_model_architecture("kvattn_lm", "memsizer_lm_tiny")
def memsizer_lm_tiny(args):
    """kvattn_lm_tiny with MemSizer self-attention, 8 slots."""
    lm_attention_defaults(args, decoder_attention_type="memsizer", memsizer_self_slots=8)
    kvattn_lm_tiny(args)


# --- Key-Value Transformer (Borji, 2023; docs/papers/kv-transformer.md) -------------------------------------------
def _kv_synthetic(args, kind):
    """The synthetic tasks' small model as a fairseq encoder-decoder: 2+2 post-norm layers of 64 with FFN 2*d,
    4 heads, dropout 0.1; `kind` in encoder and decoder self-attention, softmax cross-attention (query-less
    attention is undefined there)."""
    attention_defaults(args, encoder_attention_type=kind, decoder_attention_type=kind, cross_attention_type="softmax")
    _defaults(args, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_layers=2, encoder_attention_heads=4,
              decoder_embed_dim=64, decoder_ffn_embed_dim=128, decoder_layers=2, decoder_attention_heads=4,
              dropout=0.1)
    kvattn_transformer_base(args)


def _kv_multi30k(args, kind):
    """The paper's translation model (Multi30k): 2+2 pre-norm layers of 256 with 4 heads; FFN 4*d is our
    assumption (the notebook's value was not recorded); `kind` in both self-attentions, softmax cross."""
    attention_defaults(args, encoder_attention_type=kind, decoder_attention_type=kind, cross_attention_type="softmax")
    _defaults(args, encoder_embed_dim=256, encoder_ffn_embed_dim=1024, encoder_layers=2, encoder_attention_heads=4,
              decoder_embed_dim=256, decoder_ffn_embed_dim=1024, decoder_layers=2, decoder_attention_heads=4,
              encoder_normalize_before=True, decoder_normalize_before=True, dropout=0.1)
    kvattn_transformer_base(args)


for _kind in ("kv", "kv_asym", "softmax"):
    register_model_architecture("kvattn_transformer", f"{_kind}_synthetic")(
        lambda args, kind=_kind: _kv_synthetic(args, kind))
    register_model_architecture("kvattn_transformer", f"{_kind}_multi30k")(
        lambda args, kind=_kind: _kv_multi30k(args, kind))


# --- linear-time encoders and linear baselines at Transformer-base size ---------------------------------------------
@register_model_architecture("kvattn_transformer", "factorized_encoder_base")
def factorized_encoder_base(args):
    """Transformer-base with the projection-free factorized attention in the encoder only."""
    attention_defaults(args, encoder_attention_type="factorized")
    transformer_wmt_en_de(args)
    kvattn_transformer_base(args)


def _base_everywhere(args, kind):
    attention_defaults(args, encoder_attention_type=kind, decoder_attention_type=kind, cross_attention_type=kind)
    transformer_wmt_en_de(args)
    kvattn_transformer_base(args)


@register_model_architecture("kvattn_transformer", "factorized_base")
def factorized_base(args):
    """Transformer-base with factorized attention at every position (constant-size decoding state)."""
    _base_everywhere(args, "factorized")


@register_model_architecture("kvattn_transformer", "linformer_encoder_base")
def linformer_encoder_base(args):
    """Transformer-base with a Linformer encoder (k = 256 over at most --max-source-positions tokens)."""
    attention_defaults(args, encoder_attention_type="linformer", linformer_k=256)
    transformer_wmt_en_de(args)
    kvattn_transformer_base(args)


@register_model_architecture("kvattn_transformer", "linear_base")
def linear_base(args):
    """Transformer-base with elu+1 linear attention at every position."""
    _base_everywhere(args, "linear")


# --- Transformer-MGK / MLK on WikiText-103 (docs/papers/mgk.md) -------------------------------------------------------
def _mgk_wiki103(args, kind, heads):
    """The paper's WikiText-103 model in fairseq's LM: 16 layers of d_model 128 with d_head 16 and FFN 2048,
    dropout 0.1, no attention dropout (train with --tokens-per-sample 256).  fairseq's LM is pre-norm (the paper's
    code is post-norm) and its adaptive input/softmax are fairseq's WikiText-103 ones (cutoffs 20000,60000, factor
    4, tied): both are this port's choices, not the paper's."""
    lm_attention_defaults(args, decoder_attention_type=kind)
    _defaults(args, decoder_layers=16, decoder_embed_dim=128, decoder_ffn_embed_dim=2048, decoder_attention_heads=heads,
              dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, no_decoder_final_norm=False)
    if kind in ("mgk", "smgk", "mlk"):
        _defaults(args, mgk_head_dim=16, mgk_components=2)
    transformer_lm_baevski_wiki103(args)
    kvattn_lm_base(args)


for _kind, _heads in (("softmax", 8), ("mgk", 4), ("smgk", 4), ("mgk", 8), ("smgk", 8), ("linear", 8), ("mlk", 4),
                      ("mlk", 8)):
    register_model_architecture("kvattn_lm", f"mgk_lm_wiki103_{_kind}{_heads}")(
        lambda args, kind=_kind, heads=_heads: _mgk_wiki103(args, kind, heads))


@register_model_architecture("kvattn_lm", "mgk_lm_tiny")
def mgk_lm_tiny(args):
    """kvattn_lm_tiny with MGK self-attention: 2 heads of width 16 (the paper's fewer-heads setting)."""
    lm_attention_defaults(args, decoder_attention_type="mgk", mgk_head_dim=16)
    _defaults(args, decoder_attention_heads=2)
    kvattn_lm_tiny(args)


@register_model_architecture("kvattn_lm", "mlk_lm_tiny")
def mlk_lm_tiny(args):
    """kvattn_lm_tiny with MLK self-attention: 2 heads of width 16."""
    lm_attention_defaults(args, decoder_attention_type="mlk", mgk_head_dim=16)
    _defaults(args, decoder_attention_heads=2)
    kvattn_lm_tiny(args)


@register_model_architecture("kvattn_transformer", "mgk_tiny")
def mgk_tiny(args):
    """kvattn_transformer_tiny with MGK at every position, 2 heads of width 16."""
    attention_defaults(args, encoder_attention_type="mgk", decoder_attention_type="mgk", cross_attention_type="mgk",
                       mgk_head_dim=16)
    _defaults(args, encoder_attention_heads=2, decoder_attention_heads=2)
    kvattn_transformer_tiny(args)
