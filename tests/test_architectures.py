"""Every architecture builds with the sizes, kinds and slot counts its name promises; defaults really apply."""
import pytest
import torch

from fairseq.models import ARCH_MODEL_INV_REGISTRY
from fairseq.modules import AdaptiveInput, MultiheadAttention

from kvattn_fairseq.modules import MemSizerAttention

from conftest import build_model, make_dictionary, parse_model_args


def build_on_meta(arch, *flags, vocab=100):
    """Paper-size models are built without allocating memory: only shapes and settings are checked."""
    with torch.device("meta"):
        return build_model(arch, *flags, dictionary=make_dictionary(vocab))


def attn(layer, which):
    return getattr(layer, which)


def check_layers(layers, which, cls, dim, heads, slots=None):
    assert len({type(attn(l, which)) for l in layers}) == 1
    for layer in layers:
        m = attn(layer, which)
        assert isinstance(m, cls), f"{which} is {type(m).__name__}, expected {cls.__name__}"
        assert m.embed_dim == dim and m.num_heads == heads
        if slots is not None:
            assert m.slots == slots


def test_all_architectures_are_registered():
    assert set(ARCH_MODEL_INV_REGISTRY["kvattn_transformer"]) >= {
        "kvattn_transformer", "memsizer_wmt_en_de_big", "memsizer_wmt_en_de", "memsizer_cnn_dm",
        "kvattn_transformer_tiny", "memsizer_tiny"}
    assert set(ARCH_MODEL_INV_REGISTRY["kvattn_lm"]) >= {
        "kvattn_lm", "memsizer_lm_wiki103", "kvattn_lm_tiny", "memsizer_lm_tiny"}


def test_memsizer_wmt_en_de_big():
    model = build_on_meta("memsizer_wmt_en_de_big")
    enc, dec = model.encoder.layers, model.decoder.layers
    assert len(enc) == 6 and len(dec) == 6
    check_layers(enc, "self_attn", MultiheadAttention, 1024, 16)
    check_layers(dec, "self_attn", MemSizerAttention, 1024, 16, slots=4)
    check_layers(dec, "encoder_attn", MemSizerAttention, 1024, 16, slots=32)
    assert enc[0].fc1.out_features == 4096 and dec[0].fc1.out_features == 4096
    m = dec[0].self_attn
    assert (m.q_init_scale, m.kv_init_scale) == (8.0, 8.0)
    assert model.decoder.dropout_module.p == 0.3
    assert not dec[0].normalize_before
    # per-block parameter counts of docs/papers/memsizer.md
    assert sum(p.numel() for p in dec[0].self_attn.parameters()) == 1_121_356
    assert sum(p.numel() for p in dec[0].encoder_attn.parameters()) == 1_609_312


def test_memsizer_wmt_en_de_base():
    model = build_on_meta("memsizer_wmt_en_de")
    check_layers(model.encoder.layers, "self_attn", MultiheadAttention, 512, 8)
    check_layers(model.decoder.layers, "self_attn", MemSizerAttention, 512, 8, slots=4)
    check_layers(model.decoder.layers, "encoder_attn", MemSizerAttention, 512, 8, slots=32)
    assert model.encoder.layers[0].fc1.out_features == 2048


def test_memsizer_cnn_dm():
    model = build_on_meta("memsizer_cnn_dm")
    check_layers(model.decoder.layers, "self_attn", MemSizerAttention, 512, 8, slots=4)
    check_layers(model.decoder.layers, "encoder_attn", MemSizerAttention, 512, 8, slots=32)
    assert model.encoder.max_positions() >= 1024


def test_memsizer_lm_wiki103():
    model = build_on_meta("memsizer_lm_wiki103", vocab=70000)  # adaptive cutoffs 20000,60000 need a big vocab
    dec = model.decoder
    assert len(dec.layers) == 32 and dec.decoder_layerdrop == 0.2
    check_layers(dec.layers, "self_attn", MemSizerAttention, 1024, 8, slots=32)
    m = dec.layers[0].self_attn
    assert (m.q_init_scale, m.kv_init_scale) == (32.0, 1.0)
    assert m.dropout_p == 0.1
    assert all(l.normalize_before for l in dec.layers) and dec.layer_norm is None
    assert isinstance(dec.embed_tokens, AdaptiveInput) and dec.adaptive_softmax is not None
    assert dec.layers[0].fc1.out_features == 4096
    assert dec.dropout_module.p == 0.2


@pytest.mark.parametrize("arch,positions", [("memsizer_tiny", {"self_attn": 4, "encoder_attn": 32}),
                                            ("memsizer_lm_tiny", {"self_attn": 8})])
def test_tiny_memsizer_architectures(arch, positions):
    model = build_model(arch)
    for which, slots in positions.items():
        check_layers(model.decoder.layers, which, MemSizerAttention, 64, 4, slots=slots)


def test_tiny_default_is_softmax_everywhere():
    model = build_model("kvattn_transformer_tiny")
    check_layers(model.encoder.layers, "self_attn", MultiheadAttention, 64, 4)
    check_layers(model.decoder.layers, "self_attn", MultiheadAttention, 64, 4)
    check_layers(model.decoder.layers, "encoder_attn", MultiheadAttention, 64, 4)


def test_flags_override_architecture_and_omitted_flags_keep_it():
    """The official code's argparse defaults silently beat the architecture (128/256 slots); ours do not."""
    args = parse_model_args("memsizer_wmt_en_de_big")
    assert (args.memsizer_self_slots, args.memsizer_cross_slots) == (4, 32)
    assert (args.memsizer_q_init_scale, args.memsizer_kv_init_scale) == (8.0, 8.0)
    args = parse_model_args("memsizer_lm_wiki103")
    assert (args.memsizer_self_slots, args.memsizer_q_init_scale, args.memsizer_kv_init_scale) == (32, 32.0, 1.0)
    args = parse_model_args("memsizer_wmt_en_de_big", "--memsizer-self-slots", "8", "--encoder-attention-type",
                            "memsizer", "--memsizer-kv-init-scale", "2")
    assert (args.memsizer_self_slots, args.memsizer_cross_slots, args.memsizer_kv_init_scale) == (8, 32, 2.0)
    assert args.encoder_attention_type == "memsizer"
    model = build_model("memsizer_tiny", "--memsizer-self-slots", "6", "--encoder-attention-type", "memsizer",
                        "--memsizer-encoder-slots", "3")
    check_layers(model.decoder.layers, "self_attn", MemSizerAttention, 64, 4, slots=6)
    check_layers(model.encoder.layers, "self_attn", MemSizerAttention, 64, 4, slots=3)


def test_kind_defaults_apply_without_an_architecture_value():
    args = parse_model_args("kvattn_lm_tiny", "--decoder-attention-type", "memsizer")
    assert args.memsizer_self_slots == 4 and args.memsizer_q_init_scale == 8.0


def test_memsizer_decoder_has_fewer_parameters_than_softmax():
    vanilla = build_on_meta("kvattn_transformer", "--encoder-embed-dim", "1024", "--encoder-ffn-embed-dim", "4096",
                            "--encoder-attention-heads", "16", "--decoder-attention-heads", "16")
    memsizer = build_on_meta("memsizer_wmt_en_de_big")
    n = lambda m: sum(p.numel() for p in m.decoder.parameters())  # noqa: E731
    assert n(memsizer) < n(vanilla)
    assert n(vanilla) - n(memsizer) == 6 * (2 * 4_198_400 - 1_121_356 - 1_609_312)


@pytest.mark.parametrize("kind,cls", [("kv", "KVAttention"), ("kv_asym", "KVAttention"),
                                      ("softmax", "MultiheadAttention")])
def test_kv_synthetic_and_multi30k(kind, cls):
    import kvattn_fairseq.modules as kinds

    expected = getattr(kinds, cls, MultiheadAttention)
    small = build_model(f"{kind}_synthetic")
    check_layers(small.encoder.layers, "self_attn", expected, 64, 4)
    check_layers(small.decoder.layers, "self_attn", expected, 64, 4)
    check_layers(small.decoder.layers, "encoder_attn", MultiheadAttention, 64, 4)
    assert len(small.encoder.layers) == 2 and small.encoder.layers[0].fc1.out_features == 128
    mt = build_on_meta(f"{kind}_multi30k")
    check_layers(mt.encoder.layers, "self_attn", expected, 256, 4)
    assert mt.encoder.layers[0].normalize_before and mt.decoder.layers[0].normalize_before
    if kind == "kv_asym":
        assert small.encoder.layers[0].self_attn.pos_channels == 10


def test_kv_saves_the_query_projection():
    n = lambda m: sum(p.numel() for p in m.encoder.layers[0].self_attn.parameters())  # noqa: E731
    assert n(build_model("softmax_synthetic")) - n(build_model("kv_synthetic")) == 64 * 64 + 64


def test_linear_time_encoder_architectures():
    from kvattn_fairseq.modules import FactorizedAttention, LinearAttention, LinformerAttention

    lin = build_on_meta("linformer_encoder_base")
    check_layers(lin.encoder.layers, "self_attn", LinformerAttention, 512, 8)
    assert lin.encoder.layers[0].self_attn.compressed == 256
    assert lin.encoder.layers[0].self_attn.max_positions == 1024
    check_layers(lin.decoder.layers, "self_attn", MultiheadAttention, 512, 8)
    fact = build_on_meta("factorized_encoder_base")
    check_layers(fact.encoder.layers, "self_attn", FactorizedAttention, 512, 8)
    check_layers(fact.decoder.layers, "self_attn", MultiheadAttention, 512, 8)
    everywhere = build_on_meta("factorized_base")
    check_layers(everywhere.decoder.layers, "self_attn", FactorizedAttention, 512, 8)
    check_layers(everywhere.decoder.layers, "encoder_attn", FactorizedAttention, 512, 8)
    linear = build_on_meta("linear_base")
    check_layers(linear.decoder.layers, "encoder_attn", LinearAttention, 512, 8)
    # factorized has no projection dimension: the same parameters as softmax attention
    n = lambda layer: sum(p.numel() for p in layer.self_attn.parameters())  # noqa: E731
    assert n(fact.encoder.layers[0]) == n(fact.decoder.layers[0])


WIKI103_MGK = {"softmax8": ("MultiheadAttention", 8), "mgk4": ("MGKAttention", 4), "smgk4": ("MGKAttention", 4),
               "mgk8": ("MGKAttention", 8), "smgk8": ("MGKAttention", 8), "linear8": ("LinearAttention", 8),
               "mlk4": ("MLKAttention", 4), "mlk8": ("MLKAttention", 8)}


@pytest.mark.parametrize("variant", sorted(WIKI103_MGK))
def test_mgk_wikitext103_architectures(variant):
    import kvattn_fairseq.modules as kinds

    cls_name, heads = WIKI103_MGK[variant]
    cls = getattr(kinds, cls_name, MultiheadAttention)
    model = build_on_meta(f"mgk_lm_wiki103_{variant}", vocab=70000)
    dec = model.decoder
    assert len(dec.layers) == 16 and dec.embed_dim == 128 and dec.layers[0].fc1.out_features == 2048
    check_layers(dec.layers, "self_attn", cls, 128, heads)
    assert dec.layers[0].self_attn.head_dim == 16
    if variant.startswith("smgk"):
        assert dec.layers[0].self_attn.shifted
    if cls_name in ("MGKAttention", "MLKAttention"):
        assert dec.layers[0].self_attn.components == 2


def test_mgk4_has_fewer_attention_parameters_than_softmax8():
    def attn_params(arch):
        model = build_on_meta(arch, vocab=70000)
        return sum(p.numel() for layer in model.decoder.layers for p in layer.self_attn.parameters())

    softmax8, mgk4, smgk4, mlk4 = (attn_params(f"mgk_lm_wiki103_{v}") for v in ("softmax8", "mgk4", "smgk4", "mlk4"))
    assert mgk4 < softmax8 and smgk4 < mgk4 and mlk4 < softmax8
    assert softmax8 == 16 * 4 * (128 * 128 + 128)
    assert mgk4 == 16 * (4 * (128 * 64 + 64) + 64 * 128 + 128 + 4 * 2)  # q, 2 keys, v; out; pi


def test_mgk_flags_reach_the_modules():
    model = build_model("mgk_tiny", "--mgk-components", "3", "--mgk-inv-var-scales", "1,3,5", "--mgk-estep", "hard",
                        "--mgk-pi", "clamp")
    m = model.decoder.layers[0].encoder_attn
    assert (m.components, m.inv_var, m.hard, m.mixture.mode) == (3, (1.0, 3.0, 5.0), True, "clamp")
    assert len(m.k_projs) == 2 and m.head_dim == 16 and m.num_heads == 2
