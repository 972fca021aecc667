"""The GPU paths (kvattn_fairseq/kernels) compute what the PyTorch ops compute.

- The plugin's own Triton kernels (a linear kind's decoding step, the window's ring step) run here on a CUDA device
  and, without one, in Triton's interpreter on the CPU (KVATTN_KERNELS=interpret): against the PyTorch step, and
  inside whole models whose incremental decoding must equal their full forward pass and survive beam reordering.
- flash-linear-attention's chunked kernels do not run in the interpreter: on a CUDA device they are compared with the
  PyTorch chunked path; on the CPU the glue around them (layouts, padding of narrow keys, the linear kind's
  denominator, the state's layout, gradients) runs with fla's own PyTorch definition standing in for the kernel.
- torch's fused attention (the window's blocks, the softmax kind's full-sequence forward) is CUDA-only in use;
  here it is forced on the CPU, where torch has the same function, against the unfused path.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported

from kvattn_fairseq import kernels  # noqa: E402
from kvattn_fairseq.modules.softmax_attention import SoftmaxAttention  # noqa: E402
from kvattn_fairseq.ops import linear as lops  # noqa: E402
from kvattn_fairseq.ops import linear_scan  # noqa: E402
from kvattn_fairseq.ops import memsizer as mops  # noqa: E402
from kvattn_fairseq.ops import window as wops  # noqa: E402

import test_decoder_parity as parity  # noqa: E402

triton = pytest.importorskip("triton", reason="the gpu extra (triton) is not installed")
CUDA = torch.cuda.is_available()
DEVICES = ["cuda"] if CUDA else ["cpu"]
DEVICE = DEVICES[0]
pytestmark = [pytest.mark.cuda] if CUDA else []  # scripts/gpu-check.sh selects `-m cuda`
TOL = dict(atol=2e-5, rtol=2e-5)
# fla's kernels multiply fp32 in TF32 on a GPU (10-bit mantissa); the PyTorch reference does not
FLA_TOL = dict(atol=5e-3, rtol=5e-3) if CUDA else dict(atol=1e-4, rtol=1e-4)


@pytest.fixture
def fused(monkeypatch):
    """The plugin's Triton kernels for every tensor: compiled on a GPU, interpreted on the CPU."""
    monkeypatch.setenv("KVATTN_KERNELS", "auto" if CUDA else "interpret")


def torch_only(monkeypatch):
    monkeypatch.setenv("KVATTN_KERNELS", "torch")


def rand(*shape, seed=0, device="cpu"):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


def test_modes_are_read_at_each_call_and_checked(monkeypatch):
    t = torch.zeros(1)
    monkeypatch.setenv("KVATTN_KERNELS", "torch")
    assert not kernels.triton_ok(t) and not kernels.fla_ok(t) and not kernels.sdpa_ok(t)
    monkeypatch.setenv("KVATTN_KERNELS", "auto")
    assert not kernels.triton_ok(t)  # a CPU tensor: the PyTorch ops
    monkeypatch.setenv("KVATTN_KERNELS", "interpret")
    assert kernels.triton_ok(t) and not kernels.fla_ok(t)
    monkeypatch.setenv("KVATTN_KERNELS", "fast")
    with pytest.raises(ValueError, match="KVATTN_KERNELS: expected one of auto, torch, interpret, got 'fast'"):
        kernels.mode()


def test_the_path_is_chosen_in_one_place(monkeypatch):
    """kernels.fused_step / fused_chunk decide for every op: fp64 always on the PyTorch ops, fla's delta rules for
    half precision only, no chunked kernel for a family without one."""
    monkeypatch.setenv("KVATTN_KERNELS", "interpret")
    assert kernels.fused_step(torch.zeros(1)) and not kernels.fused_step(torch.zeros(1, dtype=torch.float64))
    monkeypatch.setattr(kernels, "fla_ok", lambda t: True)
    half, single = torch.zeros(1, dtype=torch.bfloat16), torch.zeros(1)
    assert kernels.fused_chunk("linear", single) and kernels.fused_chunk("linear", half)
    assert kernels.fused_chunk("delta", half) and not kernels.fused_chunk("delta", single)
    assert not kernels.fused_chunk("factorized", single)
    assert not kernels.fused_chunk("linear", torch.zeros(1, dtype=torch.float64))
    # the gated delta rule: fla's kernels for both paths, half precision only (never the plugin's Triton step)
    assert kernels.fused_chunk("gated_delta", half) and not kernels.fused_chunk("gated_delta", single)
    assert kernels.fused_step(half, "gated_delta") and not kernels.fused_step(single, "gated_delta")
    monkeypatch.setenv("KVATTN_KERNELS", "torch")
    assert not kernels.fused_step(single)


# --- the decoding steps --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tile", [(torch.float32, None), (torch.bfloat16, None), (torch.float32, 64)])
def test_linear_step_kernel_equals_the_pytorch_step(device, dtype, tile, monkeypatch):
    """`tile` state entries per program (16 x 16 here) splits the state's columns over two programs."""
    from kvattn_fairseq.kernels import step

    if tile:
        monkeypatch.setattr(step, "TILE", tile)
    n, dk, dv = 6, 16, 24
    q, k, v = (rand(n, d, seed=i, device=device).to(dtype) for i, d in enumerate((dk, dk, dv)))
    pad = torch.tensor([False, True, False, False, True, False], device=device)
    state = rand(n, dk, dv + 1, seed=5, device=device).abs()
    for s, p in ((None, None), (state, None), (state, pad)):
        torch_only(monkeypatch)
        want = lops.causal_step(q, k, v, state=s, pad=p)
        want_features = lops.causal_step_features(lops.feature_map(q), lops.feature_map(k), v, state=s, pad=p)
        monkeypatch.setenv("KVATTN_KERNELS", "auto" if CUDA else "interpret")
        got = lops.causal_step(q, k, v, state=s, pad=p)
        got_features = lops.causal_step_features(lops.feature_map(q), lops.feature_map(k), v, state=s, pad=p)
        for a, b in zip(got + got_features, want + want_features):
            assert a.dtype == b.dtype == torch.float32
            torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_memsizer_step_kernel_equals_the_pytorch_step(device, monkeypatch):
    n, slots, d = 5, 4, 40
    p = torch.softmax(rand(n, slots, seed=1, device=device), -1)
    a, u = rand(n, slots, seed=2, device=device), rand(n, d, seed=3, device=device).half()
    pad = torch.tensor([False, True, False, True, False], device=device)
    state = None
    for step in range(4):
        torch_only(monkeypatch)
        want, want_state = mops.causal_step(p, a, u, state=state, pad=pad if step % 2 else None)
        monkeypatch.setenv("KVATTN_KERNELS", "auto" if CUDA else "interpret")
        got, state = mops.causal_step(p, a, u, state=state, pad=pad if step % 2 else None)
        assert got.dtype == want.dtype == torch.float16
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(state[0], want_state[0], **TOL)
        assert torch.equal(state[1], want_state[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("window,tile", [(4, None), (5, None), (5, 16), (7, 8)])
def test_ring_step_kernel_equals_the_pytorch_ring(device, window, tile, monkeypatch):
    """Growing to W slots, then overwriting the oldest; `tile` keys per tile (BW = tile / 8 slots at d = 6) makes the
    online softmax go through several tiles, the last one partly past the ring."""
    from kvattn_fairseq.kernels import window_step

    if tile:
        monkeypatch.setattr(window_step, "TILE", tile)
    bsz, heads, d = 3, 2, 6
    ring = fused = None
    for t in range(13):
        q, k, v = (rand(bsz, heads, 1, d, seed=10 * t + i, device=device) for i in range(3))
        pad = torch.tensor([t < 3, False, t % 4 == 0], device=device)  # a left-padded row, a row with holes
        torch_only(monkeypatch)
        want, ring = wops.ring_step(q, k, v, ring, window, 0.5, pad)
        fused = fused or wops.ring_empty(bsz, heads, d, device)
        got, fused = window_step.ring_step(q, k, v, fused, window, 0.5, pad)
        torch.testing.assert_close(got, want, **TOL)
        assert ring["key"].size(2) == min(t + 1, window)  # min(t, W) positions
        for name in ring:
            torch.testing.assert_close(fused[name], ring[name], atol=0, rtol=0)
    assert want[0].abs().max() > 0 and torch.isfinite(want).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tile,dv", [(None, 12), (64, 40)])
def test_delta_step_kernel_equals_the_pytorch_step(device, tile, dv, monkeypatch):
    """`tile` 64 splits the state's 40 columns over three programs of 16."""
    from kvattn_fairseq.kernels import step
    from kvattn_fairseq.ops import delta as dops

    if tile:
        monkeypatch.setattr(step, "TILE", tile)
    n, dk = 5, 16
    q = rand(n, dk, seed=1, device=device)
    k = torch.nn.functional.normalize(rand(n, dk, seed=2, device=device), dim=-1)
    v, beta = rand(n, dv, seed=3, device=device), torch.rand(n, generator=torch.Generator().manual_seed(4)).to(device)
    pad = torch.tensor([False, True, False, False, True], device=device)
    state, order = rand(n, dk, dv, seed=5, device=device), torch.tensor([4, 4, 0, 2, 1], device=device)
    for s, p, o in ((None, None, None), (state, pad, None), (state, None, order)):
        torch_only(monkeypatch)
        want = dops.causal_step(q, k, v, beta, state=s, pad=p, order=o)
        monkeypatch.setenv("KVATTN_KERNELS", "auto" if CUDA else "interpret")
        got = dops.causal_step(q, k, v, beta, state=s, pad=p, order=o)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **TOL)


# whole models decoding through the kernels: every step equals the full (PyTorch, parallel) forward.  Short
# sequences: the interpreter runs every kernel program one by one in Python.
@pytest.mark.parametrize("name", ["linear", "memsizer-lm-arch", "window-memsizer-lm", "delta", "delta-short-conv-4-lm"])
def test_lm_decoding_through_the_kernels_equals_the_full_pass(name, fused):
    d = parity.make_dictionary()
    model = parity.build_model(*parity.LM_CONFIGS[name], dictionary=d).to(DEVICE)
    prev = parity._targets(d, 2, 12, torch.Generator().manual_seed(1)).to(DEVICE)  # past the window (7)
    with torch.no_grad():
        full, _ = model(prev)
        inc, _ = parity._incremental(model.decoder, prev)
    torch.testing.assert_close(inc, full, **parity.TOL)


@pytest.mark.parametrize("name", ["linear", "window-memsizer-lm", "mlk-lm-arch", "memsizer-lm-arch", "delta",
                                  "delta-short-conv-4-lm", "linear-short-conv-4-lm"])
def test_lm_reorder_through_the_kernels(name, fused):
    """The search's reorder is recorded, not applied, and the next fused step gathers its rows by it (and the short
    convolution's last inputs with them): two reorders in a row (composed), a permutation with duplicates and a
    shrinking batch."""
    d = parity.make_dictionary()
    model = parity.build_model(*parity.LM_CONFIGS[name], dictionary=d).to(DEVICE)
    prev = parity._targets(d, 6, 9, torch.Generator().manual_seed(4)).to(DEVICE)
    first = torch.tensor([5, 4, 3, 2, 1, 0], device=DEVICE)
    second = torch.tensor(parity.ORDERS["duplicated-and-shrunk"], device=DEVICE)
    state = {}
    with torch.no_grad():
        for t in range(6):
            model.decoder(prev[:, : t + 1], incremental_state=state)
        model.decoder.reorder_incremental_state_scripting(state, first)
        model.decoder.reorder_incremental_state_scripting(state, second)
        assert any("pending_order" in buf for buf in state.values())  # recorded, not applied
        prev2 = prev[first][second]
        tail = torch.cat([model.decoder(prev2[:, : t + 1], incremental_state=state)[0] for t in range(6, 9)], 1)
        full, _ = model(prev2)
    torch.testing.assert_close(tail, full[:, 6:], **parity.TOL)


def test_a_pending_reorder_is_applied_before_a_prompt(fused):
    """A multi-token call after a reorder (a prompt continued, at the module level) reads the state in the new
    order: the pending order is applied first."""
    from kvattn_fairseq.modules import MemSizerAttention, WindowAttention, WindowMemoryAttention

    torch.manual_seed(0)
    m = WindowMemoryAttention(WindowAttention(16, 4, "decoder", window=3),
                              MemSizerAttention(16, 4, 3, "decoder")).to(DEVICE).eval()
    x = rand(11, 3, 16, seed=2, device=DEVICE)  # time first
    order = torch.tensor([2, 0, 0], device=DEVICE)
    state = {}
    with torch.no_grad():
        for t in range(5):
            m(x[t:t + 1], x[t:t + 1], x[t:t + 1], incremental_state=state)
        m.reorder_incremental_state(state, order)
        assert any("pending_order" in buf for buf in state.values())
        tail, _ = m(x[5:, order], x[5:, order], x[5:, order], incremental_state=state)
        full, _ = m(x[:, order], x[:, order], x[:, order])
    torch.testing.assert_close(tail, full[5:], **TOL)


# --- the chunked training path through fla ---------------------------------------------------------------------------
@pytest.fixture
def fla_glue(monkeypatch):
    """On the CPU: fla's PyTorch definition of its kernel (no gate: plain linear attention) in the kernel's place."""
    if CUDA:
        pytest.importorskip("fla.ops.simple_gla", reason="the gpu extra (fla-core) is not installed")
        return
    naive = pytest.importorskip("fla.ops.simple_gla.naive")
    from kvattn_fairseq.kernels import chunked

    def stand_in(q, k, v, scale=None, initial_state=None, output_final_state=False, **_):
        out, final = naive.naive_recurrent_simple_gla(q, k, v, torch.zeros(q.shape[:3]), scale=scale,
                                                      initial_state=initial_state,
                                                      output_final_state=output_final_state)
        return out.to(q.dtype), final

    monkeypatch.setattr(chunked, "_chunk", lambda: stand_in)
    monkeypatch.setattr(kernels, "fla_ok", lambda t: True)


def _both(monkeypatch, fn, *tensors):
    """fn's outputs and gradients through the PyTorch path and through fla."""
    results = []
    for mode in ("torch", "auto"):
        monkeypatch.setenv("KVATTN_KERNELS", mode)
        if mode == "torch":
            saved = kernels.fla_ok
            monkeypatch.setattr(kernels, "fla_ok", lambda t: False)
        inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors]
        outs = fn(*inputs)
        outs = [o for o in (outs if isinstance(outs, tuple) else (outs,)) if torch.is_tensor(o)]
        sum(((o.float() * (i + 1)).sin().sum() for i, o in enumerate(outs))).backward()
        results.append((outs, [t.grad for t in inputs if t.grad is not None]))
        if mode == "torch":
            monkeypatch.setattr(kernels, "fla_ok", saved)
    return results


@pytest.mark.parametrize("device", DEVICES)
def test_chunked_kernel_glue_equals_the_pytorch_prefix_product(device, fla_glue, monkeypatch):
    n, t, dk, dv = 3, 37, 5, 7  # a key narrower than the kernel's smallest tile, a length off the chunk grid
    q, k, v = (rand(n, t, d, seed=i, device=device) for i, d in enumerate((dk, dk, dv)))
    s0 = rand(n, dk, dv, seed=4, device=device)
    (want, want_g), (got, got_g) = _both(monkeypatch, lambda q_, k_, v_, s_: linear_scan.causal_dot_product(
        q_, k_, v_, state=s_), q, k, v, s0)
    for a, b in zip(got + got_g, want + want_g):
        torch.testing.assert_close(a, b, **FLA_TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_chunked_kernel_glue_hands_fla_the_models_half_precision(device, dtype, fla_glue, monkeypatch):
    """Half-precision values go to fla in their own dtype (its tensor cores), not fp32; in fp16 scaled into range by
    powers of two, so that sums past 65504 come back right; gradients too."""
    from kvattn_fairseq.kernels import chunked

    inner, seen = chunked._chunk(), []

    def spy(q, k, v, **kw):
        seen.append({q.dtype, k.dtype, v.dtype})
        return inner(q, k, v, **kw)

    monkeypatch.setattr(chunked, "_chunk", lambda: spy)
    n, t, dk, dv = 2, 300, 5, 7
    q, k = (rand(n, t, dk, seed=i, device=device).abs() for i in range(2))
    v, s0 = (300 + rand(n, t, dv, seed=3, device=device)).to(dtype), rand(n, dk, dv, seed=4, device=device)
    out, final = chunked.causal_dot_product(q, k, v, s0)  # sums of about 300 * 0.8 * 300: past fp16's range
    assert seen == [{dtype}]
    want, want_final = linear_scan.causal_dot_product(q.double(), k.double(), v.double(), state=s0.double())  # PyTorch
    assert float(want_final.abs().max()) > 65504
    tol = 2e-3 if dtype == torch.float16 else 1.5e-2
    for got, ref in ((out, want), (final, want_final)):
        assert torch.isfinite(got).all() and float((got.double() - ref).abs().max()) < tol * float(ref.abs().max())
    # gradients of a loss linear in the outputs (so that it does not amplify their rounding), against fp64
    w, w_final = rand(n, t, dv, seed=5, device=device), rand(n, dk, dv, seed=6, device=device)
    grads = []
    for cast in (lambda x: x, lambda x: x.double()):
        inputs = [cast(x).detach().requires_grad_() for x in (q, k, (v.float() - 300).to(dtype), s0)]
        o, f = linear_scan.causal_dot_product(*inputs[:3], state=inputs[3])
        ((o * w).sum() + (f * w_final).sum()).backward()
        grads.append([x.grad for x in inputs])
    assert len(seen) == 2 and seen[1] == {dtype}
    for a, b in zip(*grads):  # half's rounding of q and k, relative to each gradient's largest entry
        assert float((a.double() - b).abs().max()) < tol * float(b.abs().max())


@pytest.mark.parametrize("device", DEVICES)
def test_linear_and_memsizer_training_paths_through_fla(device, fla_glue, monkeypatch):
    bsz, t, dk, dv = 2, 45, 8, 6
    pad = torch.zeros(bsz, t, dtype=torch.bool, device=device)
    pad[1, -7:] = True
    q, k, v = (rand(bsz, t, d, seed=i, device=device) for i, d in enumerate((dk, dk, dv)))
    state = rand(bsz, dk, dv + 1, seed=9, device=device).abs()
    (want, want_g), (got, got_g) = _both(monkeypatch, lambda q_, k_, v_, s_: lops.causal_parallel(
        q_, k_, v_, state=s_, pad=pad), q, k, v, state)
    for a, b in zip(got + got_g, want + want_g):
        torch.testing.assert_close(a, b, **FLA_TOL)
    p = torch.softmax(rand(bsz, t, 4, seed=11, device=device), -1)
    a, u = rand(bsz, t, 4, seed=12, device=device), rand(bsz, t, 10, seed=13, device=device)
    (want, want_g), (got, got_g) = _both(
        monkeypatch, lambda *x: mops.causal_parallel(*x, pad=pad)[0], p, a, u)
    for x, y in zip(got + got_g, want + want_g):
        torch.testing.assert_close(x, y, **FLA_TOL)


# --- torch's fused attention ------------------------------------------------------------------------------------------
@pytest.fixture
def sdpa(monkeypatch):
    monkeypatch.setattr(kernels, "sdpa_ok", lambda t: True)


@pytest.mark.parametrize("causal", [True, False])
def test_window_blocks_through_fused_attention_match_the_definition(causal, sdpa):
    q, k, v = (rand(3, 2, 23, 4, seed=i) for i in range(3))
    key_pad = torch.zeros(3, 23, dtype=torch.bool)
    key_pad[0, :9] = True   # a left-padded row whose first queries see nothing but padding
    key_pad[2, -5:] = True
    for pad in (None, key_pad):
        ref = wops.reference(q, k, v, 4, causal, pad, scale=0.5).float()
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = wops._blocked(*inputs, 4, causal, pad, 0.5, 0.0, False)
        torch.testing.assert_close(out, ref, **TOL)
        out.sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in inputs)


def _fairseq_forward(module, *args, **kwargs):
    return super(SoftmaxAttention, module).forward(*args, **kwargs)


@pytest.mark.parametrize("position", ["decoder", "encoder", "cross"])
def test_softmax_through_fused_attention_equals_fairseq(position, sdpa):
    torch.manual_seed(0)
    cross = position == "cross"
    m = SoftmaxAttention(16, 4, kdim=12 if cross else None, vdim=12 if cross else None, self_attention=not cross,
                         encoder_decoder_attention=cross, causal=position == "decoder").eval()
    x = rand(9, 3, 16, seed=1)
    src = rand(11, 3, 12, seed=2) if cross else x
    pad = torch.zeros(3, src.size(0), dtype=torch.bool)
    pad[1, -3:] = True  # right padding (a target) ...
    pad[2, :2] = True   # ... and left padding (a source)
    mask = torch.triu(torch.full((9, 9), float("-inf")), 1) if position == "decoder" else None
    for key_pad in (None, pad):
        want, _ = _fairseq_forward(m, x, src, src, key_padding_mask=key_pad, need_weights=False, attn_mask=mask)
        got, weights = m(x, src, src, key_padding_mask=key_pad, need_weights=False, attn_mask=mask)
        assert weights is None
        # padded queries of a self-attention see themselves here (fairseq: NaN where nothing else is visible)
        real = torch.ones(9, 3, dtype=torch.bool) if key_pad is None or cross else ~key_pad.t()
        torch.testing.assert_close(got[real], want[real], **TOL)
        assert torch.isfinite(got).all()


@pytest.mark.parametrize("device", DEVICES)
def test_delta_training_path_through_fla(device, monkeypatch):
    """The delta rule's chunked path through fla's kernel (half precision in, fp32 state out); on the CPU, fla's own
    recurrence in the kernel's place, taken to the kernel's layout and scale."""
    from kvattn_fairseq.kernels import chunked
    from kvattn_fairseq.ops import delta as dops

    if CUDA:
        pytest.importorskip("fla.ops.delta_rule", reason="the gpu extra (fla-core) is not installed")
    else:
        naive = pytest.importorskip("fla.ops.delta_rule.naive")

        def stand_in(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, **_):
            head_first = [x.float().transpose(1, 2) for x in (q * scale * q.shape[-1] ** 0.5, k, v, beta)]
            out, final = naive.delta_rule_recurrence(*head_first, initial_state=initial_state)
            return out.transpose(1, 2).to(q.dtype), final

        monkeypatch.setattr(chunked, "_delta_chunk", lambda: stand_in)
        monkeypatch.setattr(kernels, "fla_ok", lambda t: True)
    n, t, dk, dv = 3, 40, 16, 8
    q = torch.nn.functional.normalize(rand(n, t, dk, seed=1, device=device), dim=-1)
    k = torch.nn.functional.normalize(rand(n, t, dk, seed=2, device=device), dim=-1)
    v = rand(n, t, dv, seed=3, device=device).bfloat16()
    beta = torch.rand(n, t, generator=torch.Generator().manual_seed(4)).to(device)
    pad = torch.zeros(n, t, dtype=torch.bool, device=device)
    pad[2, -6:] = True
    state = rand(n, dk, dv, seed=5, device=device) * 0.1
    got = dops.causal_parallel(q, k, v, beta, state=state, pad=pad)
    torch_only(monkeypatch)
    monkeypatch.setattr(kernels, "fla_ok", lambda t: False)
    want = dops.causal_parallel(q.bfloat16().float(), k.bfloat16().float(), v, beta, state=state, pad=pad)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


# --- the gated delta rule through fla --------------------------------------------------------------------------------
@pytest.fixture
def gated_fla(monkeypatch):
    """fla's gated delta-rule kernels: the real ones on a GPU; on the CPU (they do not run in Triton's interpreter)
    fla's own recurrence in both kernels' place, taken to their calling convention, so that the glue (layouts, key
    padding, the state's layout, dtypes, gradients) runs."""
    if CUDA:
        pytest.importorskip("fla.ops.gated_delta_rule", reason="the gpu extra (fla-core) is not installed")
        return
    naive = pytest.importorskip("fla.ops.gated_delta_rule.naive")
    from kvattn_fairseq.kernels import gated_delta as glue

    def stand_in(q, k, v, g=None, beta=None, scale=None, initial_state=None, output_final_state=False, **_):
        assert q.dim() == 4 and q.size(2) == 1 and q.size(-1) % 16 == 0 and g.dtype == torch.float32
        assert q.dtype == k.dtype == v.dtype == beta.dtype and v.dtype in (torch.float16, torch.bfloat16)
        assert initial_state is None or initial_state.dtype == torch.float32 and output_final_state
        out, final = naive.naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                                                             output_final_state=True)
        return out.to(v.dtype), final

    monkeypatch.setattr(glue, "_chunk", lambda: stand_in)
    monkeypatch.setattr(glue, "_recurrent", lambda: stand_in)
    monkeypatch.setattr(kernels, "fla_ok", lambda t: True)


def _gated_inputs(n, t, dk, dv, device):
    q = torch.nn.functional.normalize(rand(n, t, dk, seed=1, device=device), dim=-1)
    k = torch.nn.functional.normalize(rand(n, t, dk, seed=2, device=device), dim=-1)
    v = rand(n, t, dv, seed=3, device=device).bfloat16()
    beta = torch.rand(n, t, generator=torch.Generator().manual_seed(4)).to(device)
    g = -torch.rand(n, t, generator=torch.Generator().manual_seed(5)).to(device)
    pad = torch.zeros(n, t, dtype=torch.bool, device=device)
    pad[2, -6:] = True
    pad[1, :3] = True
    return q, k, v, beta, g, pad, rand(n, dk, dv, seed=6, device=device) * 0.1


def _torch_path(monkeypatch):
    torch_only(monkeypatch)
    monkeypatch.setattr(kernels, "fla_ok", lambda t: False)


@pytest.mark.parametrize("dk", [16, 8])  # 8: keys narrower than the kernel's tile, zero-padded by the glue
@pytest.mark.parametrize("device", DEVICES)
def test_gated_delta_training_path_through_fla(device, dk, gated_fla, monkeypatch):
    """Outputs, final state and gradients of the chunked path through fla's kernel (half-precision q, k, v in, fp32
    state out) against the PyTorch path on the same rounded inputs."""
    from kvattn_fairseq.ops import gated_delta as gops

    q, k, v, beta, g, pad, state = _gated_inputs(3, 40, dk, 8, device)
    results = []
    for fla in (True, False):
        if not fla:
            _torch_path(monkeypatch)
            q, k, beta = (t.bfloat16().float() for t in (q, k, beta))  # what the kernel was given
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, beta, g, state)]
        out, final = gops.causal_parallel(*leaves[:5], state=leaves[5], pad=pad)
        assert out.dtype == final.dtype == torch.float32 and final.shape == state.shape
        ((out * rand(*out.shape, seed=7, device=device)).sum() + final.sum()).backward()
        results.append([out, final] + [t.grad for t in leaves])
    for name, a, b in zip(("out", "state", "dq", "dk", "dv", "dbeta", "dg", "dstate"), *results):
        # bf16 intermediates inside fla's kernel (w, u, the chunk states) on a GPU
        tol = 5e-2 if CUDA and name.startswith("d") else 3e-2
        torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_gated_delta_step_through_fla(device, gated_fla, monkeypatch):
    from kvattn_fairseq.ops import gated_delta as gops

    q, k, v, beta, g, pad, state = _gated_inputs(5, 1, 8, 12, device)
    order = torch.tensor([4, 4, 0, 2, 1], device=device)
    with torch.no_grad():
        for s, p, o in ((None, None, None), (state, pad[:, 0], None), (state, None, order)):
            got = gops.causal_step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], g[:, 0], state=s, pad=p, order=o)
            with monkeypatch.context() as m:
                _torch_path(m)
                want = gops.causal_step(q[:, 0].bfloat16().float(), k[:, 0].bfloat16().float(), v[:, 0],
                                        beta[:, 0].bfloat16().float(), g[:, 0], state=s, pad=p, order=o)
            for a, b in zip(got, want):
                assert a.dtype == torch.float32
                torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_gated_delta_model_decodes_through_fla_like_its_full_pass(device, gated_fla):
    """A bf16 language model with gated delta layers: steps through fla's recurrent kernel, the full pass through its
    chunked kernel, the state between them fp32."""
    d = parity.make_dictionary()
    model = parity.build_model("kvattn_lm_tiny", "--decoder-attention-type", "gated_delta,window_gated_delta",
                               "--attention-window", "4", dictionary=d).to(device=device, dtype=torch.bfloat16)
    prev = parity._targets(d, 2, 70, torch.Generator().manual_seed(1)).to(device)  # past one chunk (64)
    with torch.no_grad():
        full, _ = model(prev)
        inc, state = parity._incremental(model.decoder, prev)
    assert all(t.dtype == torch.float32 for buf in state.values() for t in buf.values() if t.is_floating_point())
    full, inc = torch.log_softmax(full.float(), -1), torch.log_softmax(inc.float(), -1)
    assert (inc - full).abs().max() < 0.1  # bf16 activations on both sides
