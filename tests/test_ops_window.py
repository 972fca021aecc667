"""Sliding-window attention: the blocked training path and the dense decoding path agree with the definition
(forward and gradients), continue an earlier call's keys, reduce to full attention for a wide window, and the
module keeps an fp32 ring of the min(t, W) most recent keys and values, prompts included."""
import itertools

import pytest
import torch

from kvattn_fairseq.modules import WindowAttention, WindowMemoryAttention
from kvattn_fairseq.ops import softmax_kv
from kvattn_fairseq.ops import window as ops

from conftest import decode_token_by_token

TOL = dict(atol=1e-5, rtol=1e-5)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def qkv(tq, tk, seed=0, bsz=3, heads=2):
    return rand(bsz, heads, tq, 4, seed=seed), rand(bsz, heads, tk, 4, seed=seed + 1), rand(bsz, heads, tk, 5,
                                                                                              seed=seed + 2)


def pads(bsz, tk):
    """no pads, left pads (a source), right pads (a target)"""
    left = torch.zeros(bsz, tk, dtype=torch.bool)
    left[1, : min(3, tk - 1)] = True
    right = torch.zeros(bsz, tk, dtype=torch.bool)
    right[2, max(1, tk - 4):] = True
    return [None, left, right]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window,tlen", [(1, 9), (2, 7), (3, 20), (5, 5), (8, 33), (16, 70), (100, 40)])
def test_blocked_and_dense_paths_match_the_definition(causal, window, tlen):
    q, k, v = qkv(tlen, tlen, seed=window)
    for key_pad in pads(3, tlen):
        ref = ops.reference(q, k, v, window, causal, key_pad, scale=0.5).float()
        torch.testing.assert_close(ops.attention(q, k, v, window, causal, key_pad, 0.5), ref, **TOL)
        torch.testing.assert_close(ops._blocked(q, k, v, window, causal, key_pad, 0.5, 0.0, False), ref, **TOL)


@pytest.mark.parametrize("window,tq,prefix", [(4, 1, 3), (4, 12, 3), (6, 20, 2), (3, 2, 0)])
def test_queries_continue_earlier_keys(window, tq, prefix):
    """Decoding and prefill: the last Tq queries over Tk = prefix + Tq keys equal those rows of the whole pass."""
    q, k, v = qkv(prefix + tq, prefix + tq, seed=7)
    full = ops.attention(q, k, v, window, True)
    tail = ops.attention(q[:, :, prefix:], k, v, window, True)
    torch.testing.assert_close(tail, full[:, :, prefix:], **TOL)


def test_wide_window_is_full_attention_and_width_one_returns_values():
    q, k, v = qkv(30, 30, seed=3)
    for causal in (True, False):
        full = softmax_kv.reference(q, k, v, causal=causal, scale=0.5).float()
        torch.testing.assert_close(ops.attention(q, k, v, 30, causal, scale=0.5), full, **TOL)
    torch.testing.assert_close(ops.attention(q, k, v, 1, True), v, **TOL)


@pytest.mark.parametrize("causal", [True, False])
def test_gradients_match_the_definition(causal):
    grads = []
    for fn in (lambda *a: ops._blocked(*a, 0.0, False), ops.reference):
        q, k, v = (t.clone().requires_grad_() for t in qkv(21, 21, seed=11))
        key_pad = pads(3, 21)[1]
        out = fn(q, k, v, 4, causal, key_pad, 0.5)
        (out.float() * rand(*out.shape, seed=12)).sum().backward()
        grads.append([t.grad for t in (q, k, v)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b.float(), **TOL)


def test_padded_queries_with_nothing_visible_get_zeros():
    q, k, v = qkv(6, 6)
    key_pad = torch.zeros(3, 6, dtype=torch.bool)
    key_pad[0, :4] = True
    out = ops.attention(q, k, v, 2, True, key_pad)
    assert torch.isfinite(out).all()
    assert out[0, :, :4].abs().max() == 0


def test_half_precision_inputs_are_computed_in_fp32():
    q, k, v = qkv(40, 40, seed=5)
    ref = ops.attention(q, k, v, 8, True)
    out = ops.attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 8, True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("make", [
    lambda: WindowAttention(16, 4, "decoder", window=5),
    lambda: WindowMemoryAttention(WindowAttention(16, 4, "decoder", window=5),
                                  __import__("kvattn_fairseq.modules", fromlist=["MemSizerAttention"])
                                  .MemSizerAttention(16, 4, 3, "decoder")),
])
def test_decoding_state_grows_to_w_positions_then_stays_and_steps_equal_the_full_pass(make):
    torch.manual_seed(0)
    m = make().eval()
    x = rand(30, 2, 16, seed=4)  # time first, as fairseq calls it
    with torch.no_grad():
        full, _ = m(x, x, x)
        stepped, sizes, buf = decode_token_by_token(m, x)
    torch.testing.assert_close(stepped, full, **TOL)
    # min(t, W) positions: per position a key and a value (2 rows x 4 heads x 4) and a flag per row
    per_position = 2 * (16 + 16 + 1)
    assert [s - sizes[0] for s in sizes] == [per_position * (min(t, 5) - 1) for t in range(1, 31)]
    keys = [v for name, v in buf.items() if name.endswith("ring_key")]
    assert [t.size(2) for t in keys] == [5]  # W slots: the new token and the W - 1 before it


@pytest.mark.parametrize("prompt", [1, 3, 8])
def test_a_padded_prompt_then_steps_equal_the_full_pass(prompt):
    """fairseq-interactive / an LM prompt: several tokens in one incremental call (left-padded rows among them),
    then single steps; the ring takes over exactly where the prompt ends."""
    torch.manual_seed(0)
    m = WindowAttention(16, 4, "decoder", window=5).eval()
    x = rand(14, 3, 16, seed=6)
    pad = torch.zeros(3, 14, dtype=torch.bool)
    pad[1, :2] = True
    with torch.no_grad():
        full, _ = m(x, x, x, key_padding_mask=pad)
        state = {}
        outs = [m(x[:prompt], x[:prompt], x[:prompt], key_padding_mask=pad[:, :prompt], incremental_state=state)[0]]
        for t in range(prompt, 14):
            outs.append(m(x[t:t + 1], x[t:t + 1], x[t:t + 1], key_padding_mask=pad[:, t:t + 1],
                          incremental_state=state)[0])
    real = ~pad.t()
    torch.testing.assert_close(torch.cat(outs)[real], full[real], **TOL)


def test_steps_and_prompts_interleaved_while_the_ring_grows_equal_the_full_pass():
    """Single steps and prompts in any order, before the ring holds W (= 5) positions and across that point: each
    call continues exactly where the ring left off, and the ring always holds min(t, W) positions."""
    torch.manual_seed(0)
    m = WindowAttention(16, 4, "decoder", window=5).eval()
    x = rand(13, 2, 16, seed=7)
    pad = torch.zeros(2, 13, dtype=torch.bool)
    pad[1, :3] = True
    with torch.no_grad():
        full, _ = m(x, x, x, key_padding_mask=pad)
        state, outs, t = {}, [], 0
        for n in (1, 1, 2, 3, 1, 4, 1):
            outs.append(m(x[t:t + n], x[t:t + n], x[t:t + n], key_padding_mask=pad[:, t:t + n],
                          incremental_state=state)[0])
            t += n
            assert next(iter(state.values()))["ring_key"].size(2) == min(t, 5)
    real = ~pad.t()
    torch.testing.assert_close(torch.cat(outs)[real], full[real], **TOL)


def test_training_path_scores_grow_linearly_in_t(monkeypatch):
    """No T x T matrix: the number of scores the blocked path forms is linear in T (about 2 W per query)."""
    scores = {}
    original = ops._attend
    for tlen in (256, 512):
        seen = []

        def counting(q, k, *rest):
            seen.append(q.shape[:-1].numel() * k.size(-2))
            return original(q, k, *rest)

        monkeypatch.setattr(ops, "_attend", counting)
        ops.attention(*qkv(tlen, tlen, bsz=1, heads=1), 16, True)
        scores[tlen] = sum(seen)
    assert scores[512] == 2 * scores[256] == 2 * 256 * 2 * 16


def test_window_kinds_refuse_cross_attention():
    from kvattn_fairseq.modules.registry import AttentionConfigError, check_kind

    for kind, position in itertools.product(("window", "window_memsizer"), ("cross",)):
        with pytest.raises(AttentionConfigError, match="--cross-attention-type: 'window"):
            check_kind(position, kind)
