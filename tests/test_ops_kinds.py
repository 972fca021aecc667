"""The math of kv / kv_asym, factorized, linear and the shared linear scan: reference, parallel and step paths
agree, forward and gradients."""
import pytest
import torch

from kvattn_fairseq.ops import factorized as fops
from kvattn_fairseq.ops import linear as lops
from kvattn_fairseq.ops import linear_scan, softmax_kv

TOL = dict(atol=1e-5, rtol=1e-5)


def rand(*shape, seed=0, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


def pad_mask(bsz, tlen):
    pad = torch.zeros(bsz, tlen, dtype=torch.bool)
    pad[1, :3] = True
    if bsz > 2:
        pad[2, -2:] = True
    return pad


# --- shared linear scan ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_causal_dot_product_chunks_and_state(chunk):
    q, k, v = rand(4, 29, 3, seed=1), rand(4, 29, 3, seed=2), rand(4, 29, 5, seed=3)
    ref, ref_state = linear_scan.causal_dot_product_reference(q, k, v)
    out, s = linear_scan.causal_dot_product(q, k, v, chunk=chunk)
    torch.testing.assert_close(out, ref.float(), **TOL)
    torch.testing.assert_close(s, ref_state.float(), **TOL)
    out1, s1 = linear_scan.causal_dot_product(q[:, :11], k[:, :11], v[:, :11], chunk=chunk)
    out2, s2 = linear_scan.causal_dot_product(q[:, 11:], k[:, 11:], v[:, 11:], state=s1, chunk=chunk)
    torch.testing.assert_close(torch.cat([out1, out2], 1), ref.float(), **TOL)
    torch.testing.assert_close(s2, s, **TOL)


# --- kv / kv_asym ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_softmax_attention_matches_reference(causal, with_bias):
    q = rand(3, 2, 9, 4, seed=1)
    k, v = rand(3, 2, 9, 4, seed=2), rand(3, 2, 9, 4, seed=3)
    pad = pad_mask(3, 9)
    bias = rand(3, 9, seed=4) if with_bias else None
    out = softmax_kv.attention(q, k, v, pad=pad, causal=causal, key_bias=bias, scale=0.5)
    ref = softmax_kv.reference(q, k, v, pad=pad, causal=causal, key_bias=bias, scale=0.5)
    torch.testing.assert_close(out, ref, **TOL)
    # a cache: the last 3 queries against all keys equals the same rows of the full computation
    tail = softmax_kv.attention(q[:, :, -3:], k, v, pad=pad, causal=causal, key_bias=bias, scale=0.5)
    torch.testing.assert_close(tail, out[:, :, -3:], **TOL)


def test_softmax_attention_gradients_match_reference():
    grads = []
    for fn in (softmax_kv.attention, softmax_kv.reference):
        q, k, v = (rand(2, 2, 6, 3, seed=s).requires_grad_() for s in (1, 2, 3))
        pad = torch.tensor([[True, False, False, False, False, False], [False] * 6])
        w = rand(2, 2, 6, 3, seed=9)
        (fn(q, k, v, pad=pad, causal=True, scale=0.7) * w).sum().backward()
        grads.append([t.grad for t in (q, k, v)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL)


def test_symmetric_scores_before_masking():
    from kvattn_fairseq.modules import KVAttention

    m = KVAttention(16, 4, "encoder").eval()
    x = rand(1, 7, 16, seed=5)
    k = m.heads(m.k_proj, x)
    scores = k @ k.transpose(-1, -2)
    torch.testing.assert_close(scores, scores.transpose(-1, -2))
    assert m.q_proj is None
    n = sum(p.numel() for p in m.parameters())
    assert n == 3 * (16 * 16 + 16)  # k, v, out: no unused query projection


@pytest.mark.parametrize("channels", [10, 20, 50])
@pytest.mark.parametrize("causal", [False, True])
def test_asymmetric_cheap_form_equals_literal_2d_grid(channels, causal):
    """alpha * s_ij + r(j) (what the module computes) == softmax_j(w . (s_ij + P_ij) + b) (the paper's form)."""
    from kvattn_fairseq.modules import KVAttention

    torch.manual_seed(0)
    n, d, h = 11, 16, 2
    m = KVAttention(d, h, "decoder" if causal else "encoder", asymmetric=True, pos_channels=channels).eval()
    with torch.no_grad():
        torch.nn.init.normal_(m.pos_map.weight)
        m.pos_map.bias.fill_(0.3)
    x = rand(2, n, d, seed=7).transpose(0, 1)  # T x B x C
    out, _ = m(x, x, x)
    with torch.no_grad():
        k = m.heads(m.k_proj, x.transpose(0, 1)).double()
        v = m.heads(m.v_proj, x.transpose(0, 1)).double()
        s = (k @ k.transpose(-1, -2)) * m.scaling
        grid = softmax_kv.positional_grid_2d(n, channels)  # [n, n, C]
        w, b = m.pos_map.weight[0].double(), m.pos_map.bias.double()
        literal = ((s.unsqueeze(-1) + grid) * w).sum(-1) + b
        if causal:
            literal = literal.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        expected = m.output((torch.softmax(literal, -1) @ v).float(), torch.float32)
    torch.testing.assert_close(out.transpose(0, 1), expected, atol=1e-5, rtol=1e-5)


def test_asymmetric_positions_extend_past_any_table():
    from kvattn_fairseq.modules import KVAttention

    m = KVAttention(8, 2, "encoder", asymmetric=True).eval()
    x = rand(1, 1200, 8, seed=3).transpose(0, 1)
    out, _ = m(x, x, x)
    assert torch.isfinite(out).all()
    feats = softmax_kv.key_position_features(torch.arange(5000), 10)
    assert feats.shape == (5000, 4) and torch.isfinite(feats).all()


# --- factorized ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 3, 32])
@pytest.mark.parametrize("key_scale", [1.0, 200.0])
def test_factorized_causal_parallel_and_step_match_reference(chunk, key_scale):
    """Keys of scale 200 would overflow a plain exp and underflow a global shift: the running max keeps it exact."""
    q, k, v = rand(3, 23, 4, seed=1), rand(3, 23, 4, seed=2, scale=key_scale), rand(3, 23, 5, seed=3)
    pad = pad_mask(3, 23)
    ref, ref_state = fops.causal_reference(q, k, v, pad=pad)
    keep = ~pad
    out, state = fops.causal_parallel(q, k, v, pad=pad, chunk=chunk)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[keep], ref.float()[keep], **TOL)
    st, outs = None, []
    for t in range(23):
        o, st = fops.causal_step(q[:, t], k[:, t], v[:, t], state=st, pad=pad[:, t])
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, 1)[keep], ref.float()[keep], **TOL)
    for a, b, c in zip(st, state, ref_state):
        torch.testing.assert_close(a, b, **TOL)
        torch.testing.assert_close(b, c.float(), **TOL)
    assert all(x.dtype == torch.float32 for x in state)


def test_factorized_prefill_continues_like_steps():
    q, k, v = rand(2, 20, 4, seed=1), rand(2, 20, 4, seed=2), rand(2, 20, 3, seed=3)
    ref = fops.causal_reference(q, k, v)[0].float()
    o1, s1 = fops.causal_parallel(q[:, :9], k[:, :9], v[:, :9], chunk=4)
    o2, _ = fops.causal_parallel(q[:, 9:], k[:, 9:], v[:, 9:], state=s1, chunk=4)
    torch.testing.assert_close(torch.cat([o1, o2], 1), ref, **TOL)


def test_factorized_noncausal_matches_reference():
    q, k, v = rand(3, 7, 4, seed=1), rand(3, 9, 4, seed=2), rand(3, 9, 5, seed=3)
    pad = pad_mask(3, 9)
    out = fops.read(q, fops.memory(k, v, pad=pad), torch.float32)
    torch.testing.assert_close(out, fops.reference(q, k, v, pad=pad).float(), **TOL)


def test_factorized_gradients_match_reference_and_gradcheck():
    pad = torch.tensor([[True, False, False, False, False, False, False], [False] * 7])
    grads = []
    for fn in (lambda q, k, v: fops.causal_parallel(q, k, v, pad=pad, chunk=3)[0],
               lambda q, k, v: fops.causal_reference(q, k, v, pad=pad)[0]):
        q, k, v = (rand(2, 7, 3, seed=s).requires_grad_() for s in (1, 2, 3))
        (fn(q, k, v) * (~pad).unsqueeze(-1) * rand(2, 7, 3, seed=8)).sum().backward()
        grads.append([t.grad for t in (q, k, v)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b.float(), **TOL)
    q, k, v = (rand(1, 5, 2, seed=s, dtype=torch.float64).requires_grad_() for s in (1, 2, 3))
    assert torch.autograd.gradcheck(lambda q, k, v: fops.causal_parallel(q, k, v, chunk=2)[0], (q, k, v))


# --- linear (elu+1) ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_linear_causal_parallel_and_step_match_reference(chunk):
    q, k, v = rand(3, 19, 4, seed=1), rand(3, 19, 4, seed=2), rand(3, 19, 5, seed=3)
    pad = pad_mask(3, 19)
    ref = lops.reference(q, k, v, pad=pad, causal=True).float()
    keep = ~pad
    out, state = lops.causal_parallel(q, k, v, pad=pad, chunk=chunk)
    torch.testing.assert_close(out[keep], ref[keep], **TOL)
    st, outs = None, []
    for t in range(19):
        o, st = lops.causal_step(q[:, t], k[:, t], v[:, t], state=st, pad=pad[:, t])
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, 1)[keep], ref[keep], **TOL)
    torch.testing.assert_close(st, state, **TOL)
    assert state.dtype == torch.float32 and state.shape == (3, 4, 6)
    rec, rec_state = lops.causal_reference(q, k, v, pad=pad)  # the recurrence agrees with the attention weights
    torch.testing.assert_close(rec.float()[keep], ref[keep], **TOL)
    torch.testing.assert_close(state, rec_state.float(), **TOL)
    o1, s1 = lops.causal_parallel(q[:, :8], k[:, :8], v[:, :8], pad=pad[:, :8], chunk=chunk)
    o2, _ = lops.causal_parallel(q[:, 8:], k[:, 8:], v[:, 8:], pad=pad[:, 8:], state=s1, chunk=chunk)
    torch.testing.assert_close(torch.cat([o1, o2], 1)[keep], ref[keep], **TOL)


def test_linear_noncausal_and_gradients():
    q, k, v = rand(3, 6, 4, seed=1), rand(3, 8, 4, seed=2), rand(3, 8, 5, seed=3)
    pad = pad_mask(3, 8)
    torch.testing.assert_close(lops.read(q, lops.memory(k, v, pad=pad), torch.float32),
                               lops.reference(q, k, v, pad=pad).float(), **TOL)
    grads = []
    for fn in (lambda q, k, v: lops.causal_parallel(q, k, v, chunk=3)[0],
               lambda q, k, v: lops.reference(q, k, v, causal=True)):
        q, k, v = (rand(2, 7, 3, seed=s).requires_grad_() for s in (1, 2, 3))
        (fn(q, k, v) * rand(2, 7, 3, seed=8)).sum().backward()
        grads.append([t.grad for t in (q, k, v)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b.float(), **TOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_kinds_keep_fp32_state_for_half_inputs(dtype):
    q, k, v = rand(2, 300, 4, seed=1, dtype=dtype), rand(2, 300, 4, seed=2, dtype=dtype), rand(2, 300, 4, seed=3,
                                                                                                  dtype=dtype)
    out, state = lops.causal_parallel(q, k, v)
    assert torch.isfinite(out).all() and state.dtype == torch.float32
    out, state = fops.causal_parallel(q, k, v)
    assert torch.isfinite(out).all() and all(s.dtype == torch.float32 for s in state)
