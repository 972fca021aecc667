"""Every causal recurrent family of ops keeps the one contract of kvattn_fairseq/ops/__init__.py: the fp64 reference,
the parallel path and the step take the same arguments (`state`, `pad`, `order`, `chunk` keyword-only), the same
layout, and agree on the outputs and on the final state, from a given state and under a search's pending reorder."""
import inspect

import pytest
import torch

from kvattn_fairseq.ops import delta, factorized, gated_delta, linear, memsizer

TOL = dict(atol=2e-5, rtol=2e-5)
N, T, DK, DV = 4, 13, 5, 6


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _linear_state(seed):
    return _rand(N, DK, DV + 1, seed=seed).abs()


def _memsizer_inputs(seed):
    p = torch.softmax(_rand(N, T, DK, seed=seed), -1)
    return p, _rand(N, T, DK, seed=seed + 1), _rand(N, T, DV, seed=seed + 2)


def _delta_inputs(seed):
    q, k = (torch.nn.functional.normalize(_rand(N, T, DK, seed=seed + i), dim=-1) for i in range(2))
    beta = torch.rand(N, T, generator=torch.Generator().manual_seed(seed + 3))
    return q, k, _rand(N, T, DV, seed=seed + 2), beta


def _gated_delta_inputs(seed):
    g = -torch.rand(N, T, generator=torch.Generator().manual_seed(seed + 4))  # log alpha <= 0
    return _delta_inputs(seed) + (g,)


def _plain_inputs(seed):
    return tuple(_rand(N, T, d, seed=seed + i) for i, d in enumerate((DK, DK, DV)))


def _features_inputs(seed):
    q, k, v = _plain_inputs(seed)
    return linear.feature_map(q), linear.feature_map(k), v


def _factorized_state(seed):
    return _rand(N, DK, DV, seed=seed).abs(), _rand(N, DK, seed=seed + 1).abs() + 1, _rand(N, DK, seed=seed + 2)


FAMILIES = {  # name: (ops, inputs, a state to continue from)
    "linear": (linear, _plain_inputs, _linear_state),
    "delta": (delta, _delta_inputs, lambda seed: _rand(N, DK, DV, seed=seed) * 0.3),
    "gated_delta": (gated_delta, _gated_delta_inputs, lambda seed: _rand(N, DK, DV, seed=seed) * 0.3),
    "memsizer": (memsizer, _memsizer_inputs, lambda seed: (_rand(N, DK, DV, seed=seed), torch.arange(N) + 3)),
    "factorized": (factorized, _plain_inputs, _factorized_state),
    "linear on features": (linear.ON_FEATURES, _features_inputs, _linear_state),
}


def _reference(name, seed, **kwargs):
    """The family's fp64 reference on the inputs of `seed` (the features form's is linear attention's)."""
    if name == "linear on features":
        return linear.causal_reference(*(x.double() for x in _plain_inputs(seed)), **kwargs)
    ops, make_inputs, _ = FAMILIES[name]
    return ops.causal_reference(*(x.double() for x in make_inputs(seed)), **kwargs)


def _flat(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_keyword_only_arguments(name):
    ops = FAMILIES[name][0]
    forms = {"causal_parallel": {"state", "pad", "chunk"}, "causal_step": {"state", "pad", "order"}}
    if name != "linear on features":
        forms["causal_reference"] = {"state", "pad"}
    for form, names in forms.items():
        params = inspect.signature(getattr(ops, form)).parameters
        keyword_only = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        assert keyword_only == names, (form, keyword_only)
        assert list(params)[:3] in (["q", "k", "v"], ["fq", "fk", "v"], ["p", "a", "u"]), (form, list(params))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_reference_parallel_and_step_agree_from_a_state(name):
    ops, make_inputs, make_state = FAMILIES[name]
    inputs = make_inputs(1)
    pad = torch.zeros(N, T, dtype=torch.bool)
    pad[1, :3] = True   # left padding (a prompt batch)
    pad[2, -2:] = True  # right padding
    state = make_state(7)
    ref, ref_state = _reference(name, 1, state=state, pad=pad)
    assert ref.dtype == torch.float64
    out, final = ops.causal_parallel(*inputs, state=state, pad=pad, chunk=4)
    torch.testing.assert_close(out.float(), ref.float(), **TOL)
    s, steps = state, []
    for t in range(T):
        o, s = ops.causal_step(*(x[:, t] for x in inputs), state=s, pad=pad[:, t])
        steps.append(o)
    torch.testing.assert_close(torch.stack(steps, 1).float(), ref.float(), **TOL)
    for a, b, c in zip(_flat(final), _flat(s), _flat(ref_state)):
        torch.testing.assert_close(a, b, **TOL)
        torch.testing.assert_close(a, c.to(a.dtype), **TOL)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_step_gathers_a_pending_reorder(name):
    ops, make_inputs, make_state = FAMILIES[name]
    inputs = [x[:, 0] for x in make_inputs(2)]
    state = make_state(3)
    order = torch.tensor([3, 3, 0, 1])  # a permutation with a duplicate, as a beam search makes
    got = ops.causal_step(*inputs, state=state, order=order)
    want = ops.causal_step(*inputs, state=tuple(x.index_select(0, order) for x in _flat(state)) if
                           isinstance(state, tuple) else state.index_select(0, order))
    for a, b in zip((got[0],) + _flat(got[1]), (want[0],) + _flat(want[1])):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
