"""The GPU path (`pytest -m cuda`, run by scripts/gpu-check.sh): every kind at every position trains a step in fp16
and bf16 through fairseq's own --fp16/--bf16 optimizer, decodes incrementally exactly like its full forward on
CUDA, keeps its cross-attention memory once per sentence under fairseq's beam search on CUDA, and decodes without
ever reading back from the GPU.  (4096-step fp16 decoding of the constant-state kinds is test_numerics.py's CUDA
case.)  Without a GPU the CUDA cases skip; the bf16 training step and the beam-search check also run on the CPU, so
their logic is tested everywhere."""
import math

import pytest
import torch

from fairseq.sequence_generator import SequenceGenerator

from kvattn_fairseq.bench.fairseq_step import (cast_like_trainer, fairseq_optimizer, lm_loss, train_step,
                                               translation_loss)
from kvattn_fairseq.modules import ATTENTION_KINDS, POSITION_FLAGS
from kvattn_fairseq.modules.base import PER_SENTENCE, KVAttentionBase

from conftest import build_model, make_dictionary
from test_decoder_parity import ENC_DEC_CONFIGS, LM_CONFIGS, _incremental, _src_batch, _targets

CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
ON_CUDA = pytest.param("cuda", marks=CUDA, id="cuda")
CONFIGS = {**{f"mt-{k}": v for k, v in ENC_DEC_CONFIGS.items()}, **{f"lm-{k}": v for k, v in LM_CONFIGS.items()}}
# the CPU runs only the one-config-per-kind entries (every kind at every position it supports)
PER_KIND = sorted(f"{p}-{k}" for p, k in [("mt", k) for k in ATTENTION_KINDS] +
                  [("lm", k) for k in ATTENTION_KINDS if "decoder" in ATTENTION_KINDS[k].positions])


def _step_inputs(model, d, device):
    gen = torch.Generator().manual_seed(0)
    if not hasattr(model, "encoder"):  # a language model
        tokens = _targets(d, 3, 12, gen).to(device)
        return lm_loss(model, tokens), 3 * 11
    src, lengths = _src_batch(d, [7, 4, 9], gen)
    prev = _targets(d, 3, 8, gen)
    target = torch.roll(prev, -1, dims=1)
    return translation_loss(model, src.to(device), lengths.to(device), prev.to(device), target.to(device)), prev.numel()


def _training_step(name, precision, device):
    d = make_dictionary()
    model = build_model(*CONFIGS[name], dictionary=d).to(device)
    cast_like_trainer(model, precision)
    optimizer, cfg = fairseq_optimizer(model, precision, lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    loss, sample_size = _step_inputs(model, d, device)
    result = train_step(model, optimizer, cfg, loss, sample_size)
    assert not result["overflow"], f"{name}: fp16 gradient overflow at the loss scaler's initial scale"
    assert math.isfinite(result["loss"]) and math.isfinite(result["grad_norm"]) and result["grad_norm"] > 0
    params = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in params), f"{name}: non-finite weights after one {precision} step"
    assert all(p.dtype == before[0].dtype for p in params)  # still the trainer's precision
    assert any(not torch.equal(a, b) for a, b in zip(before, params)), f"{name}: the step changed nothing"


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("device", [ON_CUDA])
def test_half_precision_training_step_on_cuda(name, precision, device):
    _training_step(name, precision, device)


@pytest.mark.parametrize("name", PER_KIND)
def test_bf16_training_step_on_cpu(name):
    _training_step(name, "bf16", "cpu")


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("device", [ON_CUDA])
def test_incremental_equals_full_on_cuda(name, device):
    d = make_dictionary()
    model = build_model(*CONFIGS[name], dictionary=d).to(device)
    gen = torch.Generator().manual_seed(0)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 products as fp32, whatever the process set
    try:
        with torch.no_grad():
            if name.startswith("lm-"):
                prev = _targets(d, 3, 70, gen).to(device)  # past one training chunk
                full, _ = model(prev)
                inc, _ = _incremental(model.decoder, prev)
            else:
                src, lengths = _src_batch(d, [7, 4, 9, 2], gen)
                src, lengths, prev = src.to(device), lengths.to(device), _targets(d, 4, 10, gen).to(device)
                full, _ = model(src, lengths, prev)
                inc, _ = _incremental(model.decoder, prev, model.encoder(src, src_lengths=lengths))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    # CUDA kernels (fused attention, reductions) round differently from the CPU's; fp32 throughout
    torch.testing.assert_close(inc, full, atol=1e-4, rtol=1e-4)


CROSS = sorted(k for k, v in ATTENTION_KINDS.items() if "cross" in v.positions and k != "softmax")


@pytest.mark.parametrize("kind", CROSS)
@pytest.mark.parametrize("device", ["cpu", ON_CUDA])
def test_cross_memory_once_per_sentence_under_beam_search(kind, device):
    d, beam = make_dictionary(), 4
    model = build_model("kvattn_transformer_tiny", "--cross-attention-type", kind, dictionary=d).to(device)
    cross = [layer.encoder_attn for layer in model.decoder.layers]
    assert all(isinstance(m, KVAttentionBase) for m in cross)
    src, lengths = _src_batch(d, [6, 3, 9], torch.Generator().manual_seed(0))
    rows = []
    forward = model.decoder.forward

    def spy(prev_output_tokens, *args, incremental_state=None, **kwargs):
        out = forward(prev_output_tokens, *args, incremental_state=incremental_state, **kwargs)
        for m in cross:
            buf = m._get_input_buffer(incremental_state)
            kept = [v.size(0) for k, v in buf.items() if torch.is_tensor(v)]
            assert kept and all(k.endswith(PER_SENTENCE) for k in buf), f"{kind}: memory kept per hypothesis"
            rows.append((prev_output_tokens.size(0), set(kept)))
        return out

    model.decoder.forward = spy
    search = SequenceGenerator([model], d, beam_size=beam, max_len_b=12)
    with torch.no_grad():
        batched = search.generate([model], {"net_input": {"src_tokens": src.to(device),
                                                          "src_lengths": lengths.to(device)}})
        alone = [search.generate([model], {"net_input": {"src_tokens": src[i:i + 1, -n:].to(device),
                                                         "src_lengths": lengths[i:i + 1].to(device)}})[0]
                 for i, n in enumerate(lengths.tolist())]
    assert rows and all(kept == {hyps // beam} for hyps, kept in rows), rows[:4]
    assert len(batched) == 3 and all(len(h) == beam for h in batched)
    for b, a in zip(batched, alone):
        assert [h["tokens"].tolist() for h in b] == [h["tokens"].tolist() for h in a]


STEPPING = sorted(k for k, v in ATTENTION_KINDS.items() if k != "softmax" and {"decoder", "cross"} & set(v.positions))


@pytest.mark.parametrize("kind", STEPPING)
@pytest.mark.parametrize("device", [ON_CUDA])
def test_decoding_steps_never_wait_for_the_gpu(kind, device):
    """After the first step of a search (which builds the cross memory), a step of every kind and the beam reorder
    queue their work without reading anything back: CUDA's sync debug mode turns any read-back into an error."""
    positions = [p for p in ("decoder", "cross") if p in ATTENTION_KINDS[kind].positions]
    model = build_model("kvattn_transformer_tiny", *[f for p in positions for f in (POSITION_FLAGS[p], kind)],
                        dictionary=make_dictionary()).to(device)
    ours = [m for m in model.decoder.modules() if isinstance(m, KVAttentionBase)]
    layer, beam, sents = model.decoder.layers[0], 3, 2
    model.decoder.set_beam_size(beam)
    dim = layer.embed_dim
    x = torch.randn(5, beam * sents, dim, device=device)
    src = torch.randn(7, sents, dim, device=device).repeat_interleave(beam, dim=1)
    order = torch.tensor([2, 1, 0, 5, 4, 3], device=device)  # reordered within each sentence's beams
    state = {}

    def step(t):
        for attn, kv in ((layer.self_attn, x[t:t + 1]), (layer.encoder_attn, src)):
            if isinstance(attn, KVAttentionBase):
                attn(x[t:t + 1], kv, kv, incremental_state=state, static_kv=attn is layer.encoder_attn)

    with torch.no_grad():
        step(0)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for t in range(1, 5):
                step(t)
                for m in ours:
                    m.reorder_incremental_state(state, order)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
