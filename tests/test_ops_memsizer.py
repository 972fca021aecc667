"""MemSizer math: the naive reference, the chunked parallel path and the single step agree (forward and gradients)."""
import pytest
import torch

from kvattn_fairseq.ops import memsizer as ops

TOL = 1e-5


def make_inputs(bsz=3, tlen=37, k=5, d=8, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(bsz, tlen, k, generator=g), -1).to(dtype)
    a = torch.randn(bsz, tlen, k, generator=g).to(dtype)
    u = torch.randn(bsz, tlen, d, generator=g).to(dtype)
    if grad:
        for t in (p, a, u):
            t.requires_grad_(True)
    return p, a, u


def make_pad(bsz, tlen):
    pad = torch.zeros(bsz, tlen, dtype=torch.bool)
    pad[1, :4] = True  # left padding
    if bsz > 2:
        pad[2, -3:] = True  # right padding
    return pad


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
@pytest.mark.parametrize("with_pad", [False, True])
def test_causal_parallel_matches_reference(chunk, with_pad):
    p, a, u = make_inputs()
    pad = make_pad(3, 37) if with_pad else None
    ref = ops.causal_reference(p, a, u, pad=pad)[0].float()
    out, _ = ops.causal_parallel(p, a, u, pad=pad, chunk=chunk)
    keep = ~pad if with_pad else torch.ones(3, 37, dtype=torch.bool)
    torch.testing.assert_close(out[keep], ref[keep], atol=TOL, rtol=TOL)


def test_causal_step_matches_reference_and_parallel_state():
    p, a, u = make_inputs()
    pad = make_pad(3, 37)
    ref, ref_state = ops.causal_reference(p, a, u, pad=pad)
    ref = ref.float()
    state, outs = None, []
    for t in range(p.size(1)):
        o, state = ops.causal_step(p[:, t], a[:, t], u[:, t], state=state, pad=pad[:, t])
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, 1)[~pad], ref[~pad], atol=TOL, rtol=TOL)
    _, par_state = ops.causal_parallel(p, a, u, pad=pad, chunk=8)
    torch.testing.assert_close(state[0], par_state[0], atol=TOL, rtol=TOL)
    torch.testing.assert_close(state[0], ref_state[0].float(), atol=TOL, rtol=TOL)
    assert torch.equal(state[1], par_state[1]) and torch.equal(state[1], ref_state[1])
    assert state[1].tolist() == [37, 33, 34]  # pads are not counted
    assert state[0].dtype == torch.float32 and state[1].dtype == torch.int64


@pytest.mark.parametrize("split", [1, 9, 20, 36])
def test_prefill_then_steps_equals_steps(split):
    """A prompt consumed in one call continues exactly like a prompt consumed token by token."""
    p, a, u = make_inputs()
    pad = make_pad(3, 37)
    ref = ops.causal_reference(p, a, u, pad=pad)[0].float()
    o1, s1 = ops.causal_parallel(p[:, :split], a[:, :split], u[:, :split], pad=pad[:, :split], chunk=4)
    outs = [o1]
    state = s1
    for t in range(split, p.size(1)):
        o, state = ops.causal_step(p[:, t], a[:, t], u[:, t], state=state, pad=pad[:, t])
        outs.append(o.unsqueeze(1))
    torch.testing.assert_close(torch.cat(outs, 1)[~pad], ref[~pad], atol=TOL, rtol=TOL)
    # and a second multi-token call continues from a state, too
    o2, _ = ops.causal_parallel(p[:, split:], a[:, split:], u[:, split:], pad=pad[:, split:], state=s1, chunk=3)
    torch.testing.assert_close(torch.cat([o1, o2], 1)[~pad], ref[~pad], atol=TOL, rtol=TOL)


def test_noncausal_memory_matches_reference_and_ignores_padding():
    p, a, u = make_inputs(tlen=11)
    pad = make_pad(3, 11)
    out = ops.read(p, ops.memory(a, u, pad=pad), p.dtype)
    torch.testing.assert_close(out, ops.reference(p, a, u, pad=pad).to(p.dtype), atol=TOL, rtol=TOL)
    # changing what sits under the padding changes nothing; the scale is the true length
    a2, u2 = a.clone(), u.clone()
    a2[pad] = 100.0
    u2[pad] = -50.0
    torch.testing.assert_close(ops.memory(a2, u2, pad=pad), ops.memory(a, u, pad=pad))
    row = ops.memory(a[1:2, 4:], u[1:2, 4:])
    torch.testing.assert_close(ops.memory(a, u, pad=pad)[1:2], row, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("chunk", [3, 64])
def test_causal_parallel_gradients_match_reference(chunk):
    pad = make_pad(3, 13)
    keep = (~pad).unsqueeze(-1).float()
    grads = []
    for fn in (lambda p, a, u: ops.causal_reference(p, a, u, pad=pad)[0].float(),
               lambda p, a, u: ops.causal_parallel(p, a, u, pad=pad, chunk=chunk)[0]):
        p, a, u = make_inputs(tlen=13, grad=True)
        w = torch.randn(3, 13, 8, generator=torch.Generator().manual_seed(5))
        (fn(p, a, u) * w * keep).sum().backward()
        grads.append((p.grad, a.grad, u.grad))
    for g_ref, g_par in zip(*grads):
        torch.testing.assert_close(g_par, g_ref, atol=TOL, rtol=TOL)


def test_gradcheck_parallel_and_memory():
    p, a, u = make_inputs(bsz=2, tlen=6, k=3, d=4, dtype=torch.float64, grad=True)
    pad = torch.tensor([[True, False, False, False, False, False], [False] * 6])
    assert torch.autograd.gradcheck(lambda p, a, u: ops.causal_parallel(p, a, u, pad=pad, chunk=4)[0], (p, a, u))
    assert torch.autograd.gradcheck(lambda p, a, u: ops.read(p, ops.memory(a, u, pad=pad), p.dtype), (p, a, u))


def test_slot_distribution_averages_head_softmaxes():
    logits = torch.randn(2, 5, 3 * 4)
    p = ops.slot_distribution(logits, num_heads=3)
    expected = torch.softmax(logits.view(2, 5, 3, 4), -1).mean(-2)
    torch.testing.assert_close(p, expected)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 5))
    # dropout acts on the per-head distributions, only in training
    assert torch.equal(ops.slot_distribution(logits, 3, dropout_p=0.5, training=False), p)
    torch.manual_seed(0)
    dropped = ops.slot_distribution(logits, 3, dropout_p=0.5, training=True)
    assert not torch.allclose(dropped, p)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_keep_fp32_state_and_stay_finite(dtype):
    p, a, u = make_inputs(bsz=2, tlen=300, dtype=dtype)
    out, (s, count) = ops.causal_parallel(p, a, u)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert s.dtype == torch.float32 and count.dtype == torch.int64
    ref = ops.causal_reference(p.float(), a.float(), u.float())[0].float()
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)
    o, (s2, c2) = ops.causal_step(p[:, 0], a[:, 0], u[:, 0], state=(s, count))
    assert o.dtype == dtype and s2.dtype == torch.float32 and c2.tolist() == [301, 301]


def test_step_counter_exact_past_fp16_limit():
    """The official code's fp16 counter stops at 2048; ours counts on."""
    k, d = 2, 3
    state = (torch.zeros(1, k, d), torch.full((1,), 65535, dtype=torch.long))
    p = torch.full((1, k), 0.5)
    a = torch.ones(1, k, dtype=torch.float16)
    u = torch.ones(1, d, dtype=torch.float16)
    for _ in range(3):
        _, state = ops.causal_step(p, a, u, state=state)
    assert state[1].item() == 65538
