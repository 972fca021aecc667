"""`--short-conv K` for delta and linear (and their window kinds): the short causal convolution that the head-wise
kinds' causal path (modules/headwise_linear.py) runs over the q/k/v projections before each kind's feature map.

With K > 0: decoding token by token (and a prompt, then steps) equals the full pass in fp32 and under bf16 autocast,
with a constant fp32 state that holds the convolution's last K-1 inputs; beam reorders (permuted, duplicated,
shrinking; applied at once, or left pending as the fused GPU steps leave them) select the convolution's state with the
memory's; padding is skipped; a converted layer starts with the identity convolution; every parameter learns.
K = 0, the default, builds the model of before: no module, no parameter, no state entry.  Bad values, and K > 0
where linear attention is not causal, are refused in one line."""
import argparse
from types import SimpleNamespace

import pytest
import torch
from fairseq.modules import MultiheadAttention

from kvattn_fairseq.modules import DeltaAttention, LinearAttention, attention_plan, base, build_attention
from kvattn_fairseq.modules.base import PENDING_ORDER
from kvattn_fairseq.modules.registry import ATTENTION_KINDS, AttentionConfigError, AttentionSite, resolve_options

from conftest import build_model, decode_token_by_token, make_dictionary

TOL = dict(atol=1e-5, rtol=1e-5)
KINDS = ("delta", "linear", "window_delta", "window_linear")
EMBED, HEADS = 16, 4


def built(kind, short_conv=4, embed=EMBED, heads=HEADS, perturb=True):
    """The kind as the registry builds it for decoder self-attention (window 3), a parameter draw away from the
    initial one (the convolution's taps included)."""
    options = resolve_options(argparse.Namespace(attention_window=3, short_conv=short_conv), ATTENTION_KINDS[kind])
    torch.manual_seed(0)
    m = build_attention(kind, AttentionSite("decoder", embed, heads, embed, 0.0, options))
    if perturb:
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.2)
    return m.eval()


def memory(m):
    return getattr(m, "memory", m)


def prefix(kind):
    return "memory." if kind.startswith("window_") else ""


def steps(m, x, state, lo, hi):
    return [m(x[t:t + 1], x[t:t + 1], x[t:t + 1], incremental_state=state)[0] for t in range(lo, hi)]


@pytest.mark.parametrize("kind", KINDS)
def test_steps_and_a_prompt_equal_the_full_pass_with_a_constant_fp32_state(kind):
    """70 tokens: past one training chunk (64), so the chunked path's carry meets the convolution's."""
    m = built(kind)
    assert memory(m).conv.kernel == 4
    x = torch.randn(70, 2, EMBED, generator=torch.Generator().manual_seed(5))  # time first, as fairseq calls it
    with torch.no_grad():
        full, _ = m(x, x, x)
        stepped, sizes, buf = decode_token_by_token(m, x)
        prompt = {}
        head, _ = m(x[:37], x[:37], x[:37], incremental_state=prompt)
        tail = steps(m, x, prompt, 37, 70)
    torch.testing.assert_close(stepped, full, **TOL)
    torch.testing.assert_close(torch.cat([head] + tail), full, **TOL)
    assert sizes[5:] == [sizes[5]] * 65  # constant once the window's ring is full
    conv = buf[prefix(kind) + "conv"]
    assert conv.shape == (2, 3, 3 * EMBED) and conv.dtype == torch.float32  # the last K-1 inputs of q, k, v


@pytest.mark.parametrize("kind", ["delta", "linear", "window_delta"])
def test_steps_equal_the_full_pass_under_bf16_autocast(kind):
    """Under autocast the projections run in bf16, the convolution and the state in fp32: the steps stay within
    bf16's resolution of the full pass, and both of the fp32 model."""
    m = built(kind, embed=32, heads=2)
    x = torch.randn(150, 1, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full, _ = m(x, x, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            full_bf16, _ = m(x, x, x)
            stepped_bf16, _, buf = decode_token_by_token(m, x)
    assert full_bf16.dtype == stepped_bf16.dtype == torch.bfloat16 and torch.isfinite(stepped_bf16).all()
    assert buf[prefix(kind) + "conv"].dtype == torch.float32
    scale = full.abs().max()
    assert (stepped_bf16.float() - full_bf16.float()).abs().max() < 0.05 * scale
    assert (full_bf16.float() - full).abs().max() < 0.05 * scale


ORDERS = {"permuted": [3, 1, 0, 2], "duplicated-and-shrunk": [2, 2, 0], "shrunk": [1]}


def _reorder_then_continue(m, x, orders, prompt=False):
    """Decode 6 tokens, reorder (each order in turn), go on (token by token, or the rest as one prompt); -> (what
    came after the reorder, the full pass on the reordered inputs, the buffer right after the reorder)."""
    state = {}
    with torch.no_grad():
        steps(m, x, state, 0, 6)
        order = torch.arange(x.size(1))
        for o in orders:
            m.reorder_incremental_state(state, torch.tensor(o))
            order = order[torch.tensor(o)]
        after = dict(next(iter(state.values())))
        xs = x[:, order]
        tail = m(xs[6:], xs[6:], xs[6:], incremental_state=state)[0] if prompt else torch.cat(steps(m, xs, state, 6,
                                                                                                   x.size(0)))
        full, _ = m(xs, xs, xs)
    return tail, full[6:], after


@pytest.mark.parametrize("order", sorted(ORDERS))
@pytest.mark.parametrize("kind", KINDS)
def test_reorder_selects_the_convolution_state_with_the_memory(kind, order):
    m = built(kind)
    x = torch.randn(12, 4, EMBED, generator=torch.Generator().manual_seed(7))
    tail, want, _ = _reorder_then_continue(m, x, [ORDERS[order]])
    torch.testing.assert_close(tail, want, **TOL)


@pytest.fixture
def pending(monkeypatch):
    """Reorders recorded, not applied, as the modules do where their step is a fused GPU kernel (modules/base.py);
    the ops here stay the PyTorch ones, which gather the memory's rows by the pending order like the kernels."""
    monkeypatch.setattr(base, "kernels", SimpleNamespace(fused_step=lambda t: True))


@pytest.mark.parametrize("prompt", [False, True], ids=["steps", "prompt"])
@pytest.mark.parametrize("kind", ["delta", "linear", "window_delta", "window_linear"])
def test_a_pending_reorder_gathers_the_convolution_state_too(kind, prompt, pending):
    """Two reorders in a row (composed; a permutation, then duplicates and a shrink) left pending: the next step
    gathers the memory by the order and the convolution's last inputs with it; a prompt applies it to both first."""
    m = built(kind)
    x = torch.randn(11, 6, EMBED, generator=torch.Generator().manual_seed(8))
    tail, want, after = _reorder_then_continue(m, x, [[5, 4, 3, 2, 1, 0], [4, 4, 1, 1, 0]], prompt=prompt)
    assert PENDING_ORDER in after and after[prefix(kind) + "conv"].size(0) == 6  # recorded, not applied
    torch.testing.assert_close(tail, want, **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_is_skipped(kind):
    """A right-padded row (a training batch) and a left-padded one (a prompt batch): at their real positions they
    compute what their real tokens alone compute, in a full pass and token by token."""
    m = built(kind)
    x = torch.randn(13, 3, EMBED, generator=torch.Generator().manual_seed(9))
    pad = torch.zeros(3, 13, dtype=torch.bool)
    pad[0, -4:] = True
    pad[1, :3] = True
    with torch.no_grad():
        full, _ = m(x, x, x, key_padding_mask=pad)
        state = {}
        stepped = torch.cat([m(x[t:t + 1], x[t:t + 1], x[t:t + 1], key_padding_mask=pad[:, t:t + 1],
                               incremental_state=state)[0] for t in range(13)])
        for row in range(3):
            real = ~pad[row]
            xr = x[real, row:row + 1]
            alone, _ = m(xr, xr, xr)
            torch.testing.assert_close(full[real, row:row + 1], alone, **TOL)
            torch.testing.assert_close(stepped[real, row:row + 1], alone, **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_the_default_builds_the_model_of_before(kind):
    """No flag, --short-conv 0 and a checkpoint's arguments from before the flag existed build the same model: the
    same parameters (so old checkpoints load strictly), the same outputs bit for bit, no state entry."""
    d = make_dictionary()
    flags = ("kvattn_lm_tiny", "--decoder-attention-type", kind, "--attention-window", "4")
    plain, zero = build_model(*flags, dictionary=d), build_model(*flags, "--short-conv", "0", dictionary=d)
    with_conv = build_model(*flags, "--short-conv", "4", dictionary=d)
    a, b = plain.state_dict(), zero.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not any("conv" in k for k in a)
    assert sum("conv.weight" in k for k in with_conv.state_dict()) == 2  # one per layer
    zero.load_state_dict(a, strict=True)
    old_args = resolve_options(argparse.Namespace(attention_window=4), ATTENTION_KINDS[kind])  # no short_conv at all
    assert memory(build_attention(kind, AttentionSite("decoder", 16, 4, 16, 0.0, old_args))).conv is None
    prev = torch.randint(d.nspecial, len(d), (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(plain(prev)[0], zero(prev)[0])
        state = {}
        for t in range(3):
            zero.decoder(prev[:, :t + 1], incremental_state=state)
    assert not any("conv" in key for buf in state.values() for key in buf)


@pytest.mark.parametrize("kind", ["delta", "linear"])
def test_conversion_starts_the_convolution_as_the_identity(kind):
    """A converted layer with K = 4 computes exactly what the converted layer without the convolution computes."""
    torch.manual_seed(0)
    teacher = MultiheadAttention(EMBED, HEADS, self_attention=True).state_dict()
    with_conv, without = built(kind), built(kind, short_conv=0)
    assert "conv: identity (last tap 1)" in with_conv.init_from_softmax(teacher)
    without.init_from_softmax(teacher)
    if kind == "delta":
        without.b_proj.load_state_dict(with_conv.b_proj.state_dict())  # beta keeps its own initialisation
    x = torch.randn(9, 2, EMBED)
    with torch.no_grad():
        assert torch.equal(with_conv(x, x, x)[0], without(x, x, x)[0])


@pytest.mark.parametrize("kind", ["delta", "linear"])
def test_every_parameter_learns(kind):
    m = built(kind, perturb=False).train()
    x = torch.randn(10, 2, EMBED)
    m(x, x, x)[0].pow(2).sum().backward()
    assert not [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


@pytest.mark.parametrize("kind", ["delta", "linear", "window_delta"])
@pytest.mark.parametrize("value", ["-1", "65", "four"])
def test_bad_values_are_refused_in_one_line(kind, value):
    with pytest.raises(AttentionConfigError, match="^--short-conv: expected a kernel size from 0 \\(none\\) to 64"):
        resolve_options(argparse.Namespace(short_conv=value, attention_window=3), ATTENTION_KINDS[kind])


@pytest.mark.parametrize("kind", ["linear", "window_linear"])
@pytest.mark.parametrize("position", ["encoder", "cross"])
def test_non_causal_positions_refuse_a_convolution_in_one_line(kind, position):
    """A convolution over the preceding tokens belongs to a causal position; linear attention elsewhere refuses
    K > 0 (the flag is the model's, shared by its kinds), and takes K = 0."""
    if kind == "window_linear" and position == "cross":
        pytest.skip("window_linear has no cross-attention form")
    flag = {"encoder": "--encoder-attention-type", "cross": "--cross-attention-type"}[position]
    args = argparse.Namespace(**{f"{position}_attention_type": kind, "short_conv": 4, "attention_window": 3})
    with pytest.raises(AttentionConfigError, match=f"^--short-conv 4: the short convolution is causal, for decoder "
                                                   f"self-attention only, and {flag} puts linear [^\n]*$"):
        attention_plan(args, {position: 1})
    args.short_conv = 0
    attention_plan(args, {position: 1})
    with pytest.raises(ValueError, match="--short-conv 4: the short convolution is causal"):
        LinearAttention(EMBED, HEADS, position, short_conv=4)


def test_the_kinds_take_the_flag_through_their_registrations():
    """delta, linear and their window kinds list --short-conv (so the CLI and checkpoints carry it); its help names
    each kind's default."""
    for kind in KINDS + ("gated_delta", "window_gated_delta"):
        assert "--short-conv" in [o.flag for o in ATTENTION_KINDS[kind].options], kind
    assert isinstance(built("delta", 2), DeltaAttention) and built("delta", 2).conv.kernel == 2
    assert "delta, linear: 0" in ATTENTION_KINDS["delta"].options[0].help
