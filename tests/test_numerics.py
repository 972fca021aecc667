"""Half precision and long generation: every constant-state kind decodes 4096 steps in bf16 (CPU) and fp16 (CUDA)
finitely and close to fp32, with fp32 states and exact counters; running sums stay exact past 65536 steps."""
import pytest
import torch

from kvattn_fairseq.modules import ATTENTION_KINDS
from kvattn_fairseq.ops import factorized as fops
from kvattn_fairseq.ops import linear as lops
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
