"""The MemSizer fairseq module: parameters, initialisation, the three positions and its incremental state."""
import math

import pytest
import torch

from kvattn_fairseq.modules import MemSizerAttention
from kvattn_fairseq.ops import memsizer as ops


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_count_matches_paper_formula_and_has_no_output_projection():
    d, h, k = 1024, 16, 4
    m = MemSizerAttention(d, h, k, "decoder")
    # d*hk + hk (Φ) + d*k + k (W_l) + d^2 + d (W_r) + 2k + 2d (two LayerNorms): docs/papers/memsizer.md
    assert n_params(m) == 1_121_356
    assert not hasattr(m, "out_proj")
    assert n_params(MemSizerAttention(d, 16, 32, "cross")) == 1_609_312


def test_initialisation_follows_init_scales():
    m = MemSizerAttention(1024, 16, 4, "decoder", q_init_scale=8.0, kv_init_scale=8.0)
    bound_q = 8 ** -0.5 * math.sqrt(6 / (1024 + 64))
    bound_v = 8 ** -0.5 * math.sqrt(6 / (2048))
    assert m.q_proj.weight.abs().max() <= bound_q + 1e-7
    assert m.q_proj.weight.abs().max() > 0.9 * bound_q
    assert m.v_proj.weight.abs().max() <= bound_v + 1e-7
    assert m.v_proj.weight.abs().max() > 0.9 * bound_v
    for lin in (m.q_proj, m.k_proj, m.v_proj):
        assert torch.count_nonzero(lin.bias) == 0
    lm = MemSizerAttention(1024, 8, 32, "decoder", q_init_scale=32.0, kv_init_scale=1.0)
    assert lm.k_proj.weight.abs().max() <= math.sqrt(6 / (1024 + 32)) + 1e-7


def _randomize(m):
    torch.manual_seed(3)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return m.eval()


def test_causal_module_matches_definition():
    d, h, k = 16, 4, 3
    m = _randomize(MemSizerAttention(d, h, k, "decoder"))
    x = torch.randn(9, 2, d)  # T x B x C
    out, attn = m(x, x, x)
    assert attn is None
    xb = x.transpose(0, 1)
    p = torch.softmax(m.q_proj(xb).view(2, 9, h, k), -1).mean(-2)
    a = m.k_layer_norm(m.k_proj(xb))
    u = m.v_layer_norm(m.v_proj(xb))
    torch.testing.assert_close(out.transpose(0, 1), ops.causal_reference(p, a, u)[0].to(u.dtype), atol=1e-5, rtol=1e-5)


def test_causal_module_incremental_steps_and_prefill_match_full():
    d = 16
    m = _randomize(MemSizerAttention(d, 4, 3, "decoder", chunk=4))
    x = torch.randn(11, 3, d)
    full, _ = m(x, x, x)
    state = {}
    steps = [m(x[t:t + 1], x[t:t + 1], x[t:t + 1], incremental_state=state)[0] for t in range(11)]
    torch.testing.assert_close(torch.cat(steps), full, atol=1e-5, rtol=1e-5)
    buf = m._get_input_buffer(state)
    assert buf["sum"].shape == (3, 3, d) and buf["sum"].dtype == torch.float32
    assert buf["count"].tolist() == [11, 11, 11]
    state2 = {}
    pre, _ = m(x[:6], x[:6], x[:6], incremental_state=state2)
    rest = [m(x[t:t + 1], x[t:t + 1], x[t:t + 1], incremental_state=state2)[0] for t in range(6, 11)]
    torch.testing.assert_close(torch.cat([pre] + rest), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m._get_input_buffer(state2)["sum"], buf["sum"], atol=1e-5, rtol=1e-5)


def test_cross_memory_built_once_and_cached():
    d = 16
    m = _randomize(MemSizerAttention(d, 4, 5, "cross", kdim=12))
    src = torch.randn(7, 2, 12)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, :3] = True  # left-padded source
    x = torch.randn(4, 2, d)
    full, _ = m(x, src, src, key_padding_mask=pad)
    state = {}
    first, _ = m(x[:1], src, src, key_padding_mask=pad, incremental_state=state)
    # later steps use the cache and ignore whatever comes as key
    later = [m(x[t:t + 1], torch.zeros_like(src), None, key_padding_mask=pad, incremental_state=state)[0]
             for t in range(1, 4)]
    torch.testing.assert_close(torch.cat([first] + later), full, atol=1e-6, rtol=1e-6)
    # the padded row equals the same source without its padding
    alone, _ = m(x[:, :1], src[3:, :1], src[3:, :1])
    torch.testing.assert_close(full[:, :1], alone, atol=1e-5, rtol=1e-5)


def test_encoder_self_attention_is_noncausal_and_ignores_padding():
    d = 16
    m = _randomize(MemSizerAttention(d, 4, 5, "encoder"))
    x = torch.randn(6, 1, d)
    out, _ = m(x, x, x)
    x2 = x.clone()
    x2[-1] += 1.0  # a change at the end reaches the first position: not causal
    assert not torch.allclose(m(x2, x2, x2)[0][0], out[0])
    padded = torch.cat([torch.randn(2, 1, d), x])
    pad = torch.tensor([[True, True] + [False] * 6])
    out_pad, _ = m(padded, padded, padded, key_padding_mask=pad)
    torch.testing.assert_close(out_pad[2:], out, atol=1e-5, rtol=1e-5)


def test_slot_dropout_only_in_training():
    m = _randomize(MemSizerAttention(16, 4, 5, "decoder", dropout=0.5))
    x = torch.randn(5, 2, 16)
    assert torch.equal(m(x, x, x)[0], m(x, x, x)[0])
    m.train()
    torch.manual_seed(0)
    a = m(x, x, x)[0]
    b = m(x, x, x)[0]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("position", ["decoder", "cross"])
def test_reorder_permutes_and_shrinks_state(position):
    d = 16
    m = _randomize(MemSizerAttention(d, 4, 3, position, kdim=d))
    bsz = 5
    src = torch.randn(6, bsz, d)
    x = torch.randn(4, bsz, d)
    state = {}
    for t in range(3):
        m(x[t:t + 1], src if position == "cross" else x[t:t + 1], None, incremental_state=state)
    order = torch.tensor([4, 0, 0, 2])  # permuted, duplicated, shrunk
    m.reorder_incremental_state(state, order)
    out_step, _ = m(x[3:4, order], src[:, order] if position == "cross" else x[3:4, order], None,
                    incremental_state=state)
    xs = x[:, order]
    full, _ = m(xs, src[:, order] if position == "cross" else xs, None)
    torch.testing.assert_close(out_step[0], full[3], atol=1e-5, rtol=1e-5)


def test_beamable_cross_memory_is_one_per_sentence():
    """With fairseq's beam search, the cross memory is kept once per sentence and reordered by sentence."""
    d, beam, sents = 16, 3, 4
    m = _randomize(MemSizerAttention(d, 4, 5, "cross"))
    src1 = torch.randn(6, sents, d)
    src = src1.repeat_interleave(beam, dim=1)  # what fairseq hands the decoder
    x = torch.randn(3, sents * beam, d)
    reference, _ = m(x, src, src)
    m.set_beam_size(beam)
    state = {}
    out0, _ = m(x[:1], src, src, incremental_state=state)
    assert m._get_input_buffer(state)["memory0_per_sentence"].shape[0] == sents
    # reorder within sentences (beam search) then drop sentence 1
    within = torch.arange(sents * beam).view(sents, beam).flip(1).reshape(-1)
    m.reorder_incremental_state(state, within)
    keep = torch.tensor([0, 2, 3])
    shrink = (keep.view(-1, 1) * beam + torch.arange(beam)).view(-1)
    m.reorder_incremental_state(state, shrink)
    out1, _ = m(x[1:2, shrink], src[:, shrink], src[:, shrink], incremental_state=state)
    assert m._get_input_buffer(state)["memory0_per_sentence"].shape[0] == 3
    torch.testing.assert_close(out0[0], reference[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out1[0], reference[1, shrink], atol=1e-5, rtol=1e-5)
