"""The delta rule: the chunked (WY) training path and the single step agree with the recurrence (forward, final
state and gradients), continue an earlier call, leave the state alone at padding, never form anything T x T, and
the module keeps one fp32 d x d state per head that half-precision inputs do not break."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from kvattn_fairseq.modules import DeltaAttention, WindowAttention, WindowMemoryAttention
from kvattn_fairseq.modules.registry import AttentionConfigError, check_kind
from kvattn_fairseq.ops import delta as ops

from conftest import decode_token_by_token

TOL = dict(atol=1e-5, rtol=1e-5)


def inputs(n=3, tlen=29, dk=4, dv=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, tlen, dk, generator=g)
    k = F.normalize(torch.randn(n, tlen, dk, generator=g), dim=-1)
    v = torch.randn(n, tlen, dv, generator=g)
    beta = torch.rand(n, tlen, generator=g)
    return [t.to(dtype) for t in (q, k, v, beta)]


def pads(n, tlen):
    """none, left-padded (a prompt batch), right-padded"""
    pad = torch.zeros(n, tlen, dtype=torch.bool)
    pad[1, :3] = True
    pad[-1, -2:] = True
    return [None, pad]


@pytest.mark.parametrize("chunk", [1, 5, 8, 64])
def test_chunked_and_step_match_the_recurrence(chunk):
    q, k, v, beta = inputs()
    for pad in pads(3, 29):
        ref, ref_state = ops.causal_reference(q, k, v, beta, pad=pad)
        out, state = ops.causal_parallel(q, k, v, beta, pad=pad, chunk=chunk)
        torch.testing.assert_close(out, ref.float(), **TOL)
        torch.testing.assert_close(state, ref_state.float(), **TOL)
        s, steps = None, []
        for t in range(29):
            o, s = ops.causal_step(q[:, t], k[:, t], v[:, t], beta[:, t], state=s,
                                   pad=None if pad is None else pad[:, t])
            steps.append(o)
        torch.testing.assert_close(torch.stack(steps, 1), ref.float(), **TOL)
        torch.testing.assert_close(s, ref_state.float(), **TOL)


def test_a_call_continues_from_the_state_of_an_earlier_one():
    q, k, v, beta = inputs(tlen=40, seed=1)
    full, final = ops.causal_parallel(q, k, v, beta, chunk=8)
    head, s = ops.causal_parallel(q[:, :13], k[:, :13], v[:, :13], beta[:, :13], chunk=8)
    tail, s = ops.causal_parallel(q[:, 13:], k[:, 13:], v[:, 13:], beta[:, 13:], state=s, chunk=8)
    torch.testing.assert_close(torch.cat([head, tail], 1), full, **TOL)
    torch.testing.assert_close(s, final, **TOL)


def test_padding_leaves_the_state_as_it_was():
    q, k, v, beta = inputs(n=1, tlen=10, seed=2)
    pad = torch.zeros(1, 10, dtype=torch.bool)
    pad[0, 4:] = True
    _, with_pad = ops.causal_parallel(q, k, v, beta, pad=pad, chunk=3)
    _, without = ops.causal_parallel(q[:, :4], k[:, :4], v[:, :4], beta[:, :4], chunk=3)
    torch.testing.assert_close(with_pad, without, **TOL)


def test_writing_a_key_with_beta_one_replaces_its_value():
    """The delta rule's point: the same key written twice reads back the second value, not the sum."""
    k = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    v = torch.tensor([[[1.0, 2.0], [5.0, -1.0]]])
    out, _ = ops.causal_parallel(k, k, v, torch.ones(1, 2), chunk=2)
    torch.testing.assert_close(out[0, 1], torch.tensor([5.0, -1.0]))


def test_gradients_match_the_recurrence():
    grads = []
    for fn in (lambda *a, **kw: ops.causal_parallel(*a, **kw, chunk=4), ops.causal_reference):
        q, k, v, beta = (t.double().requires_grad_() for t in inputs(n=2, tlen=11, seed=3))
        out, state = fn(q, k, v, beta, pad=pads(2, 11)[1])
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        ((out * w).sum() + state.sum()).backward()
        grads.append([t.grad for t in (q, k, v, beta)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


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
        q, k, v, beta = inputs(n=1, tlen=tlen, dk=8, dv=8)
        with _Largest() as seen:
            ops.causal_parallel(q, k, v, beta, chunk=16)
        largest[tlen] = seen.largest
    assert largest[512] <= 2 * largest[256]
    assert largest[512] < 512 * 512 // 4


def _window_delta():
    return WindowMemoryAttention(WindowAttention(16, 4, "decoder", window=3), DeltaAttention(16, 4, "decoder", chunk=4))


@pytest.mark.parametrize("make", [lambda: DeltaAttention(16, 4, "decoder", chunk=4), _window_delta])
def test_module_steps_equal_the_full_pass_with_a_constant_fp32_state(make):
    torch.manual_seed(0)
    m = make().eval()
    x = torch.randn(30, 2, 16, generator=torch.Generator().manual_seed(5))  # time first, as fairseq calls it
    with torch.no_grad():
        full, _ = m(x, x, x)
        stepped, sizes, buf = decode_token_by_token(m, x)
        prefill = {}
        head, _ = m(x[:17], x[:17], x[:17], incremental_state=prefill)  # a prompt in one call, then steps
        tail = [m(x[t:t + 1], x[t:t + 1], x[t:t + 1], incremental_state=prefill)[0] for t in range(17, 30)]
    torch.testing.assert_close(stepped, full, **TOL)
    torch.testing.assert_close(torch.cat([head] + tail), full, **TOL)
    assert sizes[5:] == [sizes[5]] * 25
    assert buf["S" if "S" in buf else "memory.S"].shape == (2, 4, 4, 4)  # batch, heads, d_h x d_h


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_stay_finite_and_close(dtype):
    torch.manual_seed(0)
    m = DeltaAttention(32, 4, "decoder", chunk=16).eval()
    x = torch.randn(200, 2, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref, _ = m(x, x, x)
        half, _ = m.to(dtype)(x.to(dtype), x.to(dtype), x.to(dtype))
    assert half.dtype == dtype and torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), ref, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("kind", ["delta", "window_delta"])
@pytest.mark.parametrize("position", ["encoder", "cross"])
def test_delta_kinds_are_decoder_only_in_one_line(kind, position):
    flag = {"encoder": "--encoder-attention-type", "cross": "--cross-attention-type"}[position]
    with pytest.raises(AttentionConfigError, match=f"^{flag}: '{kind}' cannot be used for .*causal recurrence"
                       if position == "encoder" or kind == "delta" else f"^{flag}: '{kind}' cannot be used"):
        check_kind(position, kind)
