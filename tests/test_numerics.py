"""Half precision and long generation: every constant-state kind decodes 4096 steps in bf16 (CPU) and fp16 (CUDA)
finitely and close to fp32, with fp32 states and exact counters; running sums stay exact past 65536 steps."""
import pytest
import torch

from kvattn_fairseq.modules import ATTENTION_KINDS
from kvattn_fairseq.ops import factorized as fops
from kvattn_fairseq.ops import linear as lops
from kvattn_fairseq.ops import linear_scan
from kvattn_fairseq.ops import memsizer as mops

from conftest import build_model, make_dictionary

CONSTANT = sorted(k for k, v in ATTENTION_KINDS.items() if v.constant_state and "decoder" in v.positions)
STEPS = 4096
# Stated tolerance: after 4096 half-precision steps the next-token log-probabilities stay within 0.25 nats of fp32
# (bf16 keeps 8 bits of mantissa; the states themselves are fp32).
LOGPROB_TOL = 0.25


def _decode(model, tokens, dtype, device):
    model = model.to(device=device, dtype=dtype)
    state, out = {}, []
    with torch.no_grad():
        for t in range(tokens.size(1)):
            logits, _ = model.decoder(tokens[:, : t + 1].to(device), incremental_state=state)
            out.append(torch.log_softmax(logits.float(), -1)[:, -1])
    return torch.stack(out, 1).cpu(), state


@pytest.mark.slow
@pytest.mark.parametrize("kind", CONSTANT)
@pytest.mark.parametrize("dtype,device", [(torch.bfloat16, "cpu"),
                                          pytest.param(torch.float16, "cuda", marks=pytest.mark.cuda)])
def test_half_precision_decoding_4096_steps(kind, dtype, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    d = make_dictionary(40)
    flags = ("--decoder-layers", "2", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim", "64",
             "--decoder-attention-heads", "4", "--decoder-attention-type", kind)
    model = build_model("kvattn_lm", *flags, dictionary=d, max_target_positions=STEPS + 8)
    tokens = torch.randint(d.nspecial, len(d), (2, STEPS), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = d.eos()
    with torch.no_grad():
        reference = torch.log_softmax(model(tokens)[0].float(), -1)  # fp32, the parallel path
    half, state = _decode(model, tokens, dtype, device)
    assert torch.isfinite(half).all()
    diff = (half - reference).abs().amax(dim=(0, 2))
    assert float(diff.max()) < LOGPROB_TOL, f"max |log p_half - log p_fp32| = {float(diff.max()):.3f}"
    for buf in state.values():
        for name, t in buf.items():
            if t.is_floating_point():
                assert t.dtype == torch.float32, f"{kind}: state {name} is {t.dtype}"
            elif name == "count":
                assert t.dtype == torch.int64 and int(t.min()) == STEPS


def test_running_sums_stay_exact_past_65536_steps():
    """fp32 prefix sums over 70000 positions (chunked) against fp64, and one more step from the final state."""
    n = 70_000
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, n, 2, generator=g), torch.randn(1, n, 2, generator=g), torch.randn(1, n, 3, generator=g)
    out, state = lops.causal_parallel(q, k, v)
    fk, fq = lops.feature_map(k.double()), lops.feature_map(q.double())
    s64 = torch.einsum("btk,btv->bkv", fk, torch.cat([v.double(), torch.ones(1, n, 1, dtype=torch.float64)], -1))
    torch.testing.assert_close(state.double(), s64, rtol=2e-5, atol=0)
    last = (fq[:, -1:] @ s64)[..., :3] / (fq[:, -1:] @ s64)[..., 3:]
    torch.testing.assert_close(out[:, -1:].double(), last, rtol=1e-4, atol=1e-6)

    a, p = torch.randn(1, n, 2, generator=g), torch.softmax(torch.randn(1, n, 2, generator=g), -1)
    _, (s, count) = mops.causal_parallel(p, a, v)
    assert count.item() == n  # exact, an fp16 counter would stop at 2048
    torch.testing.assert_close(s.double(), torch.einsum("btk,btd->bkd", a.double(), v.double()), rtol=2e-5,
                               atol=1e-2)
    o, (_, count) = mops.causal_step(p[:, 0], a[:, 0], v[:, 0], state=(s, count))
    assert count.item() == n + 1 and torch.isfinite(o).all()

    _, (num, den, m) = fops.causal_parallel(q, k, v, chunk=512)
    w = torch.exp(k.double() - k.double().amax(1, keepdim=True))
    torch.testing.assert_close(den.double(), w.sum(1), rtol=2e-5, atol=0)
    torch.testing.assert_close(m, k.amax(1))


# --- fla's inputs in half precision (kernels/chunked.py) ------------------------------------------------------------
LONG = 16_384


def _long_inputs(kind: str):
    """Inputs that make the prefix sums grow linearly (all of one sign, the worst case), 16K positions: MemSizer's
    (a read distribution over 4 slots, LayerNorm-sized keys and values with a positive mean) and elu+1 features'."""
    g = torch.Generator().manual_seed(0)
    n = 2
    if kind == "memsizer":
        q = torch.softmax(torch.randn(n, LONG, 4, generator=g), -1)
        k, v = 2 + torch.randn(n, LONG, 4, generator=g), 2 + torch.randn(n, LONG, 64, generator=g)
    else:
        q, k = (lops.feature_map(torch.randn(n, LONG, 64, generator=g)) for _ in range(2))
        v = 1 + torch.randn(n, LONG, 64, generator=g)
    state = 50 * torch.rand(n, q.size(-1), 64, generator=g)  # a prompt's state, continued
    return q, k, v, state


def _fla_storage(q, k, v, h0, dtype, chunk=64):
    """fla's chunk_simple_gla forward (no gate) with its storage precision: the state entering each chunk, the
    intra-chunk scores q.k and the outputs rounded to `dtype` where fla stores them, the final state fp32; the
    arithmetic in fp64, to isolate the storage.  -> (out, final state, the largest magnitude stored in `dtype`)."""
    n, t, dk = k.shape
    qc, kc, vc = (x.double().view(n, t // chunk, chunk, -1) for x in (q, k, v))
    sums = torch.einsum("nctk,nctv->nckv", kc, vc)
    before = torch.cumsum(sums, 1) - sums + h0.double().unsqueeze(1)
    scores = torch.tril(qc @ kc.transpose(-1, -2))
    stored_h, stored_scores = before.to(dtype).double(), scores.to(dtype).double()
    out = (qc @ stored_h + stored_scores @ vc).reshape(n, t, -1)
    largest = max(float(x.abs().max()) for x in (before, scores, out))
    return out.to(dtype).double(), before[:, -1] + sums[:, -1], largest


@pytest.mark.parametrize("kind", ["memsizer", "linear"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fla_inputs_in_half_precision_stay_in_range_and_match_fp64_at_16k_positions(kind, dtype):
    """What the chunked path hands fla (kernels/chunked.fla_inputs) in the models' half precision: nothing fla
    stores in that precision leaves its range (fp16: scaled by powers of two under 2^14, where the unscaled sums
    would pass 65504), and both the PyTorch path fed those rounded inputs and fla's storage rounding give the fp64
    reference's outputs and final state."""
    from kvattn_fairseq.kernels import chunked

    q, k, v, state = _long_inputs(kind)
    want, want_final = linear_scan.causal_dot_product_reference(q, k, v, state=state)
    hq, hk, hv, h0, a, c = chunked.fla_inputs(q, k, v.to(dtype), state)
    assert hq.dtype == hk.dtype == hv.dtype == dtype and h0.dtype == torch.float32
    out, final, largest = _fla_storage(hq, hk, hv, h0, dtype)
    if dtype == torch.float16:  # unscaled, the sums and outputs would pass fp16's 65504
        assert max(float(want.abs().max()), float(want_final.abs().max())) > 65504 and float((a * c).max()) < 1
        assert largest <= chunked.LIMIT
    else:  # bf16 has fp32's exponent: nothing to scale
        assert float((a * c).min()) == 1 and largest < torch.finfo(dtype).max
    torch_out, torch_final = linear_scan.causal_dot_product(hq.float(), hk.float(), hv.float(), state=h0)
    tol = 2e-3 if dtype == torch.float16 else 1.5e-2  # relative to the largest entry: half's rounding of v, q, k
    for got, got_final in ((out, final), (torch_out.double(), torch_final.double())):
        got, got_final = got / (a * c).double(), got_final / c.double()
        assert float((got - want).abs().max()) < tol * float(want.abs().max())
        assert float((got_final - want_final).abs().max()) < tol * float(want_final.abs().max())


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["memsizer", "linear"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fla_kernel_in_half_precision_matches_fp64_at_16k_positions(kind, dtype):
    """The same through fla's kernel on a GPU: outputs and final state against the fp64 reference."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("fla.ops.simple_gla", reason="the gpu extra (fla-core) is not installed")
    from kvattn_fairseq.kernels import chunked

    q, k, v, state = _long_inputs(kind)
    want, want_final = linear_scan.causal_dot_product_reference(q, k, v, state=state)
    out, final = chunked.causal_dot_product(q.cuda(), k.cuda(), v.cuda().to(dtype), state.cuda())
    tol = 4e-3 if dtype == torch.float16 else 2e-2  # fla multiplies in half on the tensor cores
    assert float((out.double().cpu() - want).abs().max()) < tol * float(want.abs().max())
    assert float((final.double().cpu() - want_final).abs().max()) < tol * float(want_final.abs().max())
