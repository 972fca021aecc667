"""The gated delta rule: the chunked (WY with decay) training path and the single step agree with the recurrence
(forward, final state and gradients), continue an earlier call, leave the state alone at padding, stay finite under
strong decay, never form anything T x T; the short convolution is a causal depthwise conv whose steps reproduce its
full pass; the module decodes token by token exactly like its full pass (fp32 and bf16 autocast, past 2,000 tokens)
with a constant fp32 state that beam reordering selects."""
import argparse

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from kvattn_fairseq.modules import (GatedDeltaAttention, WindowAttention, WindowMemoryAttention, attention_plan,
                                    build_attention)
from kvattn_fairseq.modules.registry import ATTENTION_KINDS, AttentionConfigError, AttentionSite, check_kind, \
    resolve_options
from kvattn_fairseq.modules.short_conv import SHORT_CONV_OPTION, ShortConvolution
from kvattn_fairseq.ops import delta as delta_ops
from kvattn_fairseq.ops import gated_delta as ops

from conftest import decode_token_by_token

TOL = dict(atol=1e-5, rtol=1e-5)


def inputs(n=3, tlen=29, dk=4, dv=5, seed=0, dtype=torch.float32, decay=1.0):
    """q, k (unit), v, beta in (0, 1), g <= 0 (log alpha)"""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, tlen, dk, generator=gen)
    k = F.normalize(torch.randn(n, tlen, dk, generator=gen), dim=-1)
    v = torch.randn(n, tlen, dv, generator=gen)
    beta = torch.rand(n, tlen, generator=gen)
    g = -decay * torch.rand(n, tlen, generator=gen)
    return [t.to(dtype) for t in (q, k, v, beta, g)]


def pads(n, tlen):
    """none; a left-padded row (a prompt batch), a right-padded row and a row with a hole"""
    pad = torch.zeros(n, tlen, dtype=torch.bool)
    pad[1, :3] = True
    pad[-1, -2:] = True
    pad[0, 7:9] = True
    return [None, pad]


def steps(q, k, v, beta, g, state=None, pad=None):
    outs = []
    for t in range(k.size(1)):
        o, state = ops.causal_step(q[:, t], k[:, t], v[:, t], beta[:, t], g[:, t], state=state,
                                   pad=None if pad is None else pad[:, t])
        outs.append(o)
    return torch.stack(outs, 1), state


# --- the op ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 5, 8, 64])
def test_parallel_and_step_match_the_recurrence(chunk):
    q, k, v, beta, g = inputs()
    s0 = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(9))
    for pad in pads(3, 29):
        for state in (None, s0):
            ref, ref_state = ops.causal_reference(q, k, v, beta, g, state=state, pad=pad)
            out, final = ops.causal_parallel(q, k, v, beta, g, state=state, pad=pad, chunk=chunk)
            assert out.dtype == final.dtype == torch.float32
            torch.testing.assert_close(out, ref.float(), **TOL)
            torch.testing.assert_close(final, ref_state.float(), **TOL)
            stepped, s = steps(q, k, v, beta, g, state, pad)
            torch.testing.assert_close(stepped, ref.float(), **TOL)
            torch.testing.assert_close(s, ref_state.float(), **TOL)


def test_a_call_continues_from_the_state_of_an_earlier_one():
    q, k, v, beta, g = inputs(tlen=40, seed=1)
    full, final = ops.causal_parallel(q, k, v, beta, g, chunk=8)
    head, s = ops.causal_parallel(q[:, :13], k[:, :13], v[:, :13], beta[:, :13], g[:, :13], chunk=8)
    tail, s = ops.causal_parallel(q[:, 13:], k[:, 13:], v[:, 13:], beta[:, 13:], g[:, 13:], state=s, chunk=8)
    torch.testing.assert_close(torch.cat([head, tail], 1), full, **TOL)
    torch.testing.assert_close(s, final, **TOL)


def test_padding_leaves_the_state_as_it_was():
    """Padded positions (a hole and a tail) neither decay nor write: the state is that of the real tokens alone."""
    q, k, v, beta, g = inputs(n=1, tlen=12, seed=2)
    pad = torch.zeros(1, 12, dtype=torch.bool)
    pad[0, 3:5] = True
    pad[0, 9:] = True
    real = ~pad[0]
    _, with_pad = ops.causal_parallel(q, k, v, beta, g, pad=pad, chunk=4)
    _, without = ops.causal_parallel(q[:, real], k[:, real], v[:, real], beta[:, real], g[:, real], chunk=4)
    torch.testing.assert_close(with_pad, without, **TOL)
    s = torch.randn(1, 4, 5)
    _, kept = ops.causal_step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], g[:, 0], state=s, pad=torch.tensor([True]))
    assert torch.equal(kept, s)


def test_without_decay_it_is_the_delta_rule():
    q, k, v, beta, g = inputs(seed=3)
    pad = pads(3, 29)[1]
    got = ops.causal_parallel(q, k, v, beta, torch.zeros_like(g), pad=pad, chunk=8)
    want = delta_ops.causal_parallel(q, k, v, beta, pad=pad, chunk=8)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


def test_without_writes_the_state_decays_by_the_gate():
    """beta = 0: S_T = exp(g_1 + ... + g_T) S_0, and each read is the decayed entering state."""
    q, k, v, _, g = inputs(n=2, tlen=11, seed=4)
    s0 = torch.randn(2, 4, 5)
    out, final = ops.causal_parallel(q, k, v, torch.zeros(2, 11), g, state=s0, chunk=4)
    torch.testing.assert_close(final, torch.exp(g.sum(1)).view(2, 1, 1) * s0, **TOL)
    torch.testing.assert_close(out, torch.exp(g.cumsum(1)).unsqueeze(-1) * torch.bmm(q, s0), **TOL)


@pytest.mark.parametrize("chunk", [4, 64])
def test_strong_decay_forgets_and_stays_finite(chunk):
    """alpha underflowing to 0 (g = -1e4 at one position, -80 everywhere in another row) gives finite outputs and
    gradients; after the reset the outputs are those of a sequence started there."""
    q, k, v, beta, g = (t.double().requires_grad_() for t in inputs(n=2, tlen=21, seed=5))
    g_strong = torch.where(torch.arange(21) == 9, torch.tensor(-1e4, dtype=torch.float64), g)
    g_strong = torch.stack([g_strong[0], torch.full_like(g_strong[1], -80.0)])
    out, final = ops.causal_parallel(q, k, v, beta, g_strong, chunk=chunk)
    ref, ref_state = ops.causal_reference(q, k, v, beta, g_strong)
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(final, ref_state, **TOL)
    fresh, _ = ops.causal_reference(q[:1, 9:], k[:1, 9:], v[:1, 9:], beta[:1, 9:], g[:1, 9:] * 0 + g_strong[:1, 9:])
    torch.testing.assert_close(out[:1, 9:], fresh, **TOL)
    (out.sum() + final.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, beta, g))


def test_gradients_match_the_recurrence():
    grads = []
    s0 = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for fn in (lambda *a, **kw: ops.causal_parallel(*a, chunk=4, **kw), ops.causal_reference):
        q, k, v, beta, g = (t.double().requires_grad_() for t in inputs(n=3, tlen=11, seed=7))
        s = s0.clone().requires_grad_()
        out, state = fn(q, k, v, beta, g, state=s, pad=pads(3, 11)[1])
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
        ((out * w).sum() + state.sum()).backward()
        grads.append([t.grad for t in (q, k, v, beta, g, s)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("backward_ok", [True, False])
def test_training_keeps_to_pytorch_where_flas_gated_backward_is_refused(monkeypatch, backward_ok):
    """fla 0.6.0 refuses its gated backward on Hopper with triton >= 3.4, < 3.7.1 (kernels.fla_gated_backward_ok):
    there a call that wants gradients takes the PyTorch chunked form, and one without (prefill) still takes fla's."""
    from kvattn_fairseq import kernels
    from kvattn_fairseq.kernels import gated_delta as fused

    served = []

    def chunked(q, k, v, beta, g, state=None):
        served.append(torch.is_grad_enabled())
        return ops.causal_reference(q, k, v, beta, g, state=state)

    monkeypatch.setattr(kernels, "fused_chunk", lambda family, t: family == "gated_delta")
    monkeypatch.setattr(kernels, "fla_gated_backward_ok", lambda: backward_ok)
    monkeypatch.setattr(fused, "chunked", chunked)
    q, k, v, beta, g = (t.requires_grad_() for t in inputs(n=2, tlen=9))
    out, state = ops.causal_parallel(q, k, v, beta, g)
    (out.sum() + state.sum()).backward()
    assert served == ([True] if backward_ok else []) and v.grad is not None
    with torch.no_grad():
        ops.causal_parallel(q, k, v, beta, g)
    assert served[-1:] == [False]


def test_gradcheck_of_the_parallel_path():
    q, k, v, beta, g = (t.double().requires_grad_() for t in inputs(n=1, tlen=5, dk=3, dv=2, seed=10))
    s0 = torch.randn(1, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: ops.causal_parallel(*a[:5], state=a[5], chunk=2),
                                    (q, k, v, beta, g, s0))


class _Largest(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if torch.is_tensor(t):
                self.largest = max(self.largest, t.numel())
        return out


def test_training_path_forms_nothing_quadratic_in_t():
    """Every tensor the chunked path makes is at most linear in T: doubling T at most doubles the largest one."""
    largest = {}
    for tlen in (256, 512):
        q, k, v, beta, g = inputs(n=1, tlen=tlen, dk=8, dv=8)
        with _Largest() as seen:
            ops.causal_parallel(q, k, v, beta, g, chunk=16)
        largest[tlen] = seen.largest
    assert largest[512] <= 2 * largest[256]
    assert largest[512] < 512 * 512 // 4


# --- the short convolution ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", [1, 2, 4])
def test_short_conv_is_a_causal_depthwise_conv1d(kernel):
    torch.manual_seed(0)
    conv = ShortConvolution(6, kernel).double()
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    want = F.conv1d(F.pad(x.transpose(1, 2), (kernel - 1, 0)), conv.weight.unsqueeze(1), groups=6).transpose(1, 2)
    y, state = conv(x)
    torch.testing.assert_close(y.double(), want, atol=1e-6, rtol=1e-6)
    assert torch.equal(state, x[:, 9 - (kernel - 1):].float())  # the last K-1 inputs


def test_short_conv_steps_reproduce_the_full_pass_exactly():
    torch.manual_seed(0)
    conv = ShortConvolution(5, 4)
    x = torch.randn(3, 13, 5)
    full, final = conv(x)
    state, outs = None, []
    for t in range(13):
        y, state = conv(x[:, t:t + 1], state=state)
        outs.append(y)
    assert torch.equal(torch.cat(outs, 1), full) and torch.equal(state, final)
    head, s = conv(x[:, :6])
    tail, s = conv(x[:, 6:], state=s)
    assert torch.equal(torch.cat([head, tail], 1), full) and torch.equal(s, final)


def test_short_conv_skips_padding():
    """A row with left padding, a hole and right padding computes, at its real positions, what its real inputs
    alone compute; its state is their last K-1; padded outputs are 0."""
    torch.manual_seed(0)
    conv = ShortConvolution(4, 3)
    x = torch.randn(2, 10, 4)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[0, :2] = True
    pad[0, 5] = True
    pad[0, 8:] = True
    y, state = conv(x, pad=pad)
    real = ~pad[0]
    alone, alone_state = conv(x[:1, real])
    torch.testing.assert_close(y[0, real], alone[0])
    torch.testing.assert_close(state[0], alone_state[0])
    assert torch.equal(y[0, pad[0]], torch.zeros(int(pad[0].sum()), 4))
    unpadded, unpadded_state = conv(x[1:])
    torch.testing.assert_close(y[1], unpadded[0])
    torch.testing.assert_close(state[1], unpadded_state[0])
    _, kept = conv(x[:, :1], pad=torch.tensor([[True], [True]]), state=state)
    assert torch.equal(kept, state)


# --- the module -------------------------------------------------------------------------------------------------------
def _window_gated_delta(short_conv=4):
    return WindowMemoryAttention(WindowAttention(16, 4, "decoder", window=3),
                                 GatedDeltaAttention(16, 4, "decoder", chunk=4, short_conv=short_conv))


MAKERS = {"gated_delta": lambda: GatedDeltaAttention(16, 4, "decoder", chunk=4),
          "gated_delta-conv-0": lambda: GatedDeltaAttention(16, 4, "decoder", chunk=4, short_conv=0),
          "gated_delta-conv-1": lambda: GatedDeltaAttention(16, 4, "decoder", chunk=4, short_conv=1),
          "window_gated_delta": _window_gated_delta}


def _perturbed(module):
    """A parameter draw away from the initial one (the output norm's weight 1, the convolution's range)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return module.eval()


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_module_steps_equal_the_full_pass_with_a_constant_fp32_state(name):
    torch.manual_seed(0)
    m = _perturbed(MAKERS[name]())
    x = torch.randn(30, 2, 16, generator=torch.Generator().manual_seed(5))  # time first, as fairseq calls it
    with torch.no_grad():
        full, _ = m(x, x, x)
        stepped, sizes, buf = decode_token_by_token(m, x)
        prefill = {}
        head, _ = m(x[:17], x[:17], x[:17], incremental_state=prefill)  # a prompt in one call, then steps
        tail = [m(x[t:t + 1], x[t:t + 1], x[t:t + 1], incremental_state=prefill)[0] for t in range(17, 30)]
    torch.testing.assert_close(stepped, full, **TOL)
    torch.testing.assert_close(torch.cat([head] + tail), full, **TOL)
    assert sizes == [sizes[0]] * 30 if name != "window_gated_delta" else sizes[5:] == [sizes[5]] * 25
    prefix = "memory." if name == "window_gated_delta" else ""
    assert buf[prefix + "S"].shape == (2, 4, 4, 4)  # batch, heads, d_h x d_h
    kernel = {"gated_delta-conv-0": 0, "gated_delta-conv-1": 1}.get(name, 4)
    if kernel:
        assert buf[prefix + "conv"].shape == (2, kernel - 1, 3 * 16)  # the last K-1 inputs of q, k, v's convolution
    else:
        assert prefix + "conv" not in buf and m.conv is None


@pytest.mark.parametrize("name", ["gated_delta", "window_gated_delta"])
def test_module_decodes_2100_tokens_like_its_full_pass_in_fp32_and_under_bf16_autocast(name):
    """Past 2,000 tokens (33 training chunks of 64) the steps still equal the full pass: exactly up to fp32
    rounding, and within bf16's resolution under autocast, where the state stays fp32."""
    torch.manual_seed(0)
    m = _perturbed(GatedDeltaAttention(32, 2, "decoder") if name == "gated_delta" else WindowMemoryAttention(
        WindowAttention(32, 2, "decoder", window=16), GatedDeltaAttention(32, 2, "decoder")))
    x = torch.randn(2100, 1, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full, _ = m(x, x, x)
        stepped, sizes, _ = decode_token_by_token(m, x)
        torch.testing.assert_close(stepped, full, atol=1e-4, rtol=1e-4)
        assert sizes[100:] == [sizes[100]] * 2000
        with torch.autocast("cpu", dtype=torch.bfloat16):
            full_bf16, _ = m(x, x, x)
            stepped_bf16, _, _ = decode_token_by_token(m, x)
    assert full_bf16.dtype == stepped_bf16.dtype == torch.bfloat16 and torch.isfinite(stepped_bf16).all()
    scale = full.abs().max()
    assert (stepped_bf16.float() - full_bf16.float()).abs().max() < 0.05 * scale
    assert (full_bf16.float() - full).abs().max() < 0.05 * scale


@pytest.mark.parametrize("order", [[3, 1, 0, 2], [2, 2, 0], [1]])
@pytest.mark.parametrize("name", ["gated_delta", "window_gated_delta"])
def test_module_reorder_keeps_each_hypothesis(name, order):
    """fairseq's reorder (permuted, duplicated and shrinking orders) selects both state tensors' rows."""
    m = _perturbed(MAKERS[name]())
    x = torch.randn(12, 4, 16, generator=torch.Generator().manual_seed(7))
    order = torch.tensor(order)
    state = {}
    with torch.no_grad():
        for t in range(6):
            m(x[t:t + 1], x[t:t + 1], x[t:t + 1], incremental_state=state)
        m.reorder_incremental_state(state, order)
        tail = [m(x[t:t + 1, order], x[t:t + 1, order], x[t:t + 1, order], incremental_state=state)[0]
                for t in range(6, 12)]
        full, _ = m(x[:, order], x[:, order], x[:, order])
    torch.testing.assert_close(torch.cat(tail), full[6:], **TOL)


def test_bf16_model_stays_finite_and_close():
    torch.manual_seed(0)
    m = _perturbed(GatedDeltaAttention(32, 4, "decoder", chunk=16))
    x = torch.randn(200, 2, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref, _ = m(x, x, x)
        half, _ = m.to(torch.bfloat16)(x.bfloat16(), x.bfloat16(), x.bfloat16())
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    err = (half.float() - ref).abs()  # bf16 weights and activations: about 1% of the output's size
    assert err.max() < 0.05 * ref.abs().max() and err.mean() < 0.02 * ref.abs().mean()


def test_gates_are_parameterised_as_the_paper_says():
    """g = -exp(A_log) softplus(W_a x + dt_bias) <= 0 per head and token, beta = sigmoid(W_beta x); at W_a x = 0
    the initial decay rate -g = A dt lies in (0, 16 * 0.1], the initial dt in [1e-3, 0.1]."""
    torch.manual_seed(0)
    m = GatedDeltaAttention(16, 4, "decoder")
    x = torch.randn(2, 7, 16)
    beta, g = m.gates(x)
    assert beta.shape == g.shape == (2 * 4, 7) and (g <= 0).all() and ((beta > 0) & (beta < 1)).all()
    want = -torch.exp(m.A_log) * F.softplus(m.a_proj(x) + m.dt_bias)
    torch.testing.assert_close(g, want.transpose(1, 2).reshape(8, 7))
    dt = F.softplus(m.dt_bias)
    assert ((dt >= 1e-3 - 1e-7) & (dt <= 0.1 + 1e-7)).all()
    assert ((m.A_log.exp() > 0) & (m.A_log.exp() <= 16)).all()


def test_every_parameter_learns():
    torch.manual_seed(0)
    m = GatedDeltaAttention(16, 4, "decoder", chunk=4).train()
    x = torch.randn(10, 2, 16)
    m(x, x, x)[0].pow(2).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_conversion_carries_the_projections_and_starts_the_convolution_as_the_identity():
    from fairseq.modules import MultiheadAttention

    torch.manual_seed(0)
    teacher = MultiheadAttention(16, 4, self_attention=True).state_dict()
    m = GatedDeltaAttention(16, 4, "decoder")
    done = m.init_from_softmax(teacher)
    assert {"q_proj", "k_proj", "v_proj", "out_proj"} <= set(done)
    assert torch.equal(m.q_proj.weight, teacher["q_proj.weight"])
    x = torch.randn(2, 9, 48)
    assert torch.equal(m.conv(x)[0], x)
    w = _window_gated_delta()
    w.init_from_softmax(teacher)
    assert w.memory.out_proj.weight.abs().sum() == 0  # the memory branch grows in from zero


# --- registration and options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gated_delta", "window_gated_delta"])
@pytest.mark.parametrize("position", ["encoder", "cross"])
def test_gated_delta_kinds_are_decoder_only_in_one_line(kind, position):
    flag = {"encoder": "--encoder-attention-type", "cross": "--cross-attention-type"}[position]
    with pytest.raises(AttentionConfigError, match=f"^{flag}: '{kind}' cannot be used for [^\n]*$") as e:
        check_kind(position, kind)
    if position == "encoder" or kind == "gated_delta":
        assert "causal recurrence" in str(e.value)
    with pytest.raises(ValueError, match="decoder self-attention only"):
        GatedDeltaAttention(16, 4, position)


@pytest.mark.parametrize("kind", ["gated_delta", "window_gated_delta"])
def test_short_conv_option_defaults_to_the_kinds_own_and_takes_zero(kind):
    def built(**flags):
        options = resolve_options(argparse.Namespace(attention_window=3, **flags), ATTENTION_KINDS[kind])
        m = build_attention(kind, AttentionSite("decoder", 16, 4, 16, 0.0, options))
        return getattr(m, "memory", m)

    assert built().conv.kernel == 4
    assert built(short_conv=2).conv.kernel == 2
    assert built(short_conv=0).conv is None


@pytest.mark.parametrize("value", ["-1", "65", "four"])
def test_short_conv_refuses_bad_values_in_one_line(value):
    with pytest.raises(argparse.ArgumentTypeError, match="expected a kernel size from 0 \\(none\\) to 64"):
        SHORT_CONV_OPTION.type(value)
    with pytest.raises(AttentionConfigError, match="^--short-conv: expected a kernel size from 0"):
        resolve_options(argparse.Namespace(short_conv=value), ATTENTION_KINDS["gated_delta"])


def test_a_plan_mixes_gated_delta_and_softmax_layers():
    args = argparse.Namespace(decoder_attention_type="gated_delta,softmax", short_conv=None)
    plan = attention_plan(args, {"decoder": 2})
    assert plan["decoder"].kinds == ("gated_delta", "softmax")
    m = plan.build("decoder", 0, embed_dim=16, num_heads=4, kdim=16, dropout=0.0)
    assert isinstance(m, GatedDeltaAttention) and m.conv.kernel == 4
