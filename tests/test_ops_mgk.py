"""MGK / sMGK / MLK math: the log-space attention equals the paper's mixture-of-Gaussians formula (forward and
gradients), stays finite where the official exp-then-divide path zeroes rows, and MLK's state is independent of M."""
import pytest
import torch

from kvattn_fairseq.modules import MGKAttention, MLKAttention
from kvattn_fairseq.ops import linear as lops
from kvattn_fairseq.ops import mgk as ops

TOL = dict(atol=1e-5, rtol=1e-5)


def rand(*shape, seed=0, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


def pad_mask():
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, :2] = True
    return pad


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("inv_var", [(1.0, 1.0), (1.0, 3.0)])
def test_log_space_attention_equals_mixture_formula(hard, causal, inv_var):
    q, keys, v = rand(2, 2, 7, 4, seed=1), rand(2, 2, 7, 2, 4, seed=2), rand(2, 2, 7, 3, seed=3)
    pi = torch.softmax(rand(2, 2, 7, 2, seed=4), -1)
    pad = pad_mask()
    out = ops.attention(q, keys, v, inv_var, log_pi=pi.log(), hard=hard, pad=pad, causal=causal)
    ref = ops.reference(q, keys, v, inv_var, pi=pi, hard=hard, pad=pad, causal=causal)
    torch.testing.assert_close(out, ref.float(), **TOL)


def test_gradients_match_the_mixture_formula():
    grads = []
    for use_ref in (False, True):
        q, keys, v = (rand(1, 2, 5, 3, seed=1), rand(1, 2, 5, 2, 3, seed=2), rand(1, 2, 5, 3, seed=3))
        logits = rand(1, 2, 5, 2, seed=4)
        for t in (q, keys, v, logits):
            t.requires_grad_()
        pi = torch.softmax(logits, -1)
        out = (ops.reference(q, keys, v, (1.0, 3.0), pi=pi, causal=True) if use_ref else
               ops.attention(q, keys, v, (1.0, 3.0), log_pi=pi.log(), causal=True))
        (out * rand(1, 2, 5, 3, seed=9)).sum().backward()
        grads.append([t.grad for t in (q, keys, v, logits)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b.float(), **TOL)


def test_far_queries_stay_finite_where_exp_then_divide_gives_zero_rows():
    q = rand(1, 1, 4, 8, seed=1, scale=60.0)
    keys, v = rand(1, 1, 6, 2, 8, seed=2), rand(1, 1, 6, 3, seed=3)
    out = ops.attention(q, keys, v, (1.0, 1.0))
    d2 = (q.unsqueeze(3).unsqueeze(3) - keys.unsqueeze(2)).pow(2).sum(-1)  # [1, 1, 4, 6, 2]
    official = torch.exp(-d2 / (2 * 8 ** 0.5)).sum(-1)
    assert (official.sum(-1) == 0).all()  # every row underflows: the official code returns zeros here
    assert torch.isfinite(out).all() and (out.abs().sum(-1) > 0).all()
    # the same mixture in fp64 and log space, distances by broadcasting (independent of the matmul expansion)
    logits = torch.logsumexp(-d2.double() / (2 * 8 ** 0.5), dim=-1)
    expected = torch.softmax(logits, -1) @ v.double()
    torch.testing.assert_close(out, expected.float(), atol=1e-4, rtol=1e-4)


def test_mgk_module_caches_m_keys_smgk_one_and_mlk_a_constant_state():
    x = rand(5, 2, 32, seed=1)  # T x B x C
    for shifted, per_pos in ((False, (2, 4, 5, 3, 8)), (True, (2, 4, 5, 8))):
        m = MGKAttention(32, 4, "decoder", components=3, shifted=shifted, head_dim=8).eval()
        state = {}
        for t in range(5):
            m(x[t:t + 1], x[t:t + 1], x[t:t + 1], incremental_state=state)
        assert tuple(m._get_input_buffer(state)["prev_key"].shape) == per_pos
    sizes = []
    for comps in (1, 2, 4):
        m = MLKAttention(32, 4, "decoder", components=comps).eval()
        state = {}
        for t in range(5):
            m(x[t:t + 1], x[t:t + 1], x[t:t + 1], incremental_state=state)
        buf = m._get_input_buffer(state)
        sizes.append(sum(v.numel() for v in buf.values()))
        assert buf["kv_sum"].dtype == torch.float32
    assert len(set(sizes)) == 1


def test_mlk_equals_linear_attention_of_mixed_features():
    torch.manual_seed(0)
    m = MLKAttention(16, 2, "encoder", components=2, pi="clamp").eval()
    with torch.no_grad():
        m.mixture.weight.copy_(torch.tensor([[0.3, 0.9], [0.7, 0.2]]))
    x = rand(6, 1, 16, seed=2)
    out, _ = m(x, x, x)
    xb = x.transpose(0, 1)
    q, v = m.heads(m.q_proj, xb), m.heads(m.v_proj, xb)
    k1, k2 = m.heads(m.k_proj, xb), m.heads(m.k_projs[0], xb)
    pi = torch.tensor([[0.3, 0.9], [0.7, 0.2]])
    fk = pi[:, 0].view(1, 2, 1, 1) * lops.feature_map(k1) + pi[:, 1].view(1, 2, 1, 1) * lops.feature_map(k2)
    fq = lops.feature_map(q)
    num = fq @ (fk.transpose(-1, -2) @ v)
    den = fq @ fk.sum(2, keepdim=True).transpose(-1, -2)
    expected = m.output(num / den, torch.float32)
    torch.testing.assert_close(out.transpose(0, 1), expected, **TOL)


def test_fewer_heads_of_the_same_width_have_fewer_parameters():
    from fairseq.modules import MultiheadAttention

    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    softmax8 = MultiheadAttention(128, 8, self_attention=True)
    mgk4 = MGKAttention(128, 4, "decoder", head_dim=16)
    smgk4 = MGKAttention(128, 4, "decoder", head_dim=16, shifted=True)
    mlk4 = MLKAttention(128, 4, "decoder", head_dim=16)
    assert n(mgk4) < n(softmax8) and n(smgk4) < n(mgk4) and n(mlk4) == n(mgk4)
    assert mgk4.head_dim == 16 and mgk4.q_proj.out_features == 64


def test_position_mixture_weights_refuse_keys_past_the_table():
    m = MGKAttention(16, 2, "encoder", pi="position", pi_positions=4).eval()
    x = rand(5, 1, 16, seed=1)
    with pytest.raises(ValueError, match="past the 4-entry mixture-weight table"):
        m(x, x, x)
    out, _ = m(x[:4], x[:4], x[:4])
    assert torch.isfinite(out).all()
