"""LM decoding through fairseq's SequenceGenerator: per-step time and state bytes against generated length."""
import statistics
from typing import Dict, List, Sequence

import torch
from fairseq.sequence_generator import SequenceGenerator

from .common import BenchmarkError, now, state_bytes


class StepRecorder:
    """Wraps model.decoder.forward: times every decoding step (the interval between calls includes the search
    and the per-step reorder fairseq performs), reads the state size, and checks that every call feeds the layers
    exactly one new token, i.e. that decoding really is incremental."""

    def __init__(self, model, device, probe_steps: Sequence[int]):
        self.model, self.device, self.probe = model, device, set(probe_steps)
        self.times: List[float] = []
        self.bytes_per_hyp: Dict[int, float] = {}
        self._forward = model.decoder.forward
        self._hook = model.decoder.layers[0].register_forward_pre_hook(self._check_one_token)
        model.decoder.forward = self._timed

    def _check_one_token(self, module, args):
        x = args[0]
        if x.size(0) != 1:
            raise BenchmarkError(f"decoding is not incremental: a decoder layer got {x.size(0)} positions in one "
                                 f"step instead of 1")

    def _timed(self, prev_output_tokens, *args, **kwargs):
        if kwargs.get("incremental_state") is None:
            raise BenchmarkError("decoding is not incremental: the decoder was called without incremental_state")
        self.times.append(now(self.device))
        out = self._forward(prev_output_tokens, *args, **kwargs)
        step = prev_output_tokens.size(1)
        if step in self.probe:
            self.bytes_per_hyp[step] = state_bytes(kwargs["incremental_state"]) / prev_output_tokens.size(0)
        return out

    def close(self):
        self._hook.remove()
        self.model.decoder.forward = self._forward

    def step_ms(self, t: int, window: int = 8) -> float:
        """Median time of the steps just before step t (robust to the odd scheduler hiccup)."""
        deltas = [b - a for a, b in zip(self.times, self.times[1:])]
        lo = max(0, min(t, len(deltas)) - window)
        return 1000.0 * statistics.median(deltas[lo:max(lo + 1, min(t, len(deltas)))])


def decode_lm(model, dictionary, device, batch: int, beam: int, length: int, probe: Sequence[int]) -> Dict:
    """Generate exactly `length` tokens per hypothesis (EOS held off by min_len) from a one-token prompt."""
    search = SequenceGenerator([model], dictionary, beam_size=beam, max_len_a=0, max_len_b=length, min_len=length)
    src = torch.full((batch, 1), dictionary.eos(), dtype=torch.long, device=device)
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.ones(batch, dtype=torch.long, device=device)}}
    with torch.no_grad():  # warm-up: first-call costs (allocator, kernels) are not per-step time
        SequenceGenerator([model], dictionary, beam_size=beam, max_len_a=0, max_len_b=min(length, 8),
                          min_len=min(length, 8)).generate([model], sample)
    rec = StepRecorder(model, device, probe)
    try:
        with torch.no_grad():
            hyps = search.generate([model], sample)
    finally:
        rec.close()
    if len(hyps) != batch:
        raise BenchmarkError(f"{len(hyps)} of {batch} sequences came back")
    steps = [t for t in probe if t <= length]
    return {"step_ms": {t: rec.step_ms(t) for t in steps},
            "state_bytes_per_hypothesis": {t: rec.bytes_per_hyp.get(t) for t in steps}}


def _shapes(incremental_state) -> Dict:
    return {(key, name): t.shape for key, buf in incremental_state.items() for name, t in buf.items()
            if torch.is_tensor(t)}


def _rings(model) -> Dict[str, tuple]:
    """{incremental-state key: (entry prefix, W)} of every window ring in the model (ops/window.Ring)."""
    rings = {}
    for m in model.modules():
        key = getattr(m, "_incremental_state_id", None)
        for prefix, owner in (("ring_", m), ("local.ring_", getattr(m, "local", None))):
            if key is not None and isinstance(getattr(owner, "window", None), int):
                rings[f"{key}.attn_state"] = (prefix, owner.window)
    return rings


def grown_state(model, tokens, t: int):
    """The incremental state of `tokens.size(0)` hypotheses after t tokens, without decoding t tokens one by one:
    a real two-step decode, every entry that grew by one position in the second step (key/value caches, padding
    masks, key positions) tiled along that axis to t - 1 positions (a window's ring to min(t - 1, W), its counter
    set to t - 1: ops/window.grow_ring), then a real decoding step for token t, so that each module applies its own
    rule to what it keeps.  Constant-size states are left as they are.  The shapes, and so the work of the
    following steps, are exactly those of a real decode; the values repeat."""
    from ..ops.window import grow_ring

    state = {}
    if t < 3:
        for n in range(1, t + 1):
            model.decoder(tokens[:, :n], incremental_state=state)
        return state
    model.decoder(tokens[:, :1], incremental_state=state)
    first = _shapes(state)
    model.decoder(tokens[:, :2], incremental_state=state)
    rings = _rings(model)
    for (key, name), shape in _shapes(state).items():
        before = first.get((key, name))
        grown = [i for i, (a, b) in enumerate(zip(before or (), shape)) if b == a + 1]
        if before is None or len(before) != len(shape) or shape == before or \
                (key in rings and name.startswith(rings[key][0])):
            continue
        if len(grown) != 1:
            raise BenchmarkError(f"cannot tell the time axis of state entry {name} ({tuple(before)} -> {tuple(shape)})")
        axis, value = grown[0], state[key][name]
        reps = [1] * value.dim()
        reps[axis] = -(-(t - 1) // value.size(axis))
        state[key][name] = value.repeat(*reps).narrow(axis, 0, t - 1).contiguous()
    for key, (prefix, window) in rings.items():
        if prefix + "key" in state.get(key, {}):
            names = [n[len(prefix):] for n in state[key] if n.startswith(prefix)]
            ring = grow_ring({n: state[key][prefix + n] for n in names}, t - 1, window)
            state[key].update({prefix + n: v for n, v in ring.items()})
    model.decoder(tokens[:, :t], incremental_state=state)
    return state


def step_window(model, dictionary, device, batch: int, t: int, window: int) -> Dict:
    """Time `window` single-token decoding steps after t tokens, each as greedy search does it: the decoder's
    incremental forward (output projection included) and a reorder of the state by the search's order."""
    g = torch.Generator().manual_seed(t)
    tokens = torch.randint(dictionary.nspecial, len(dictionary), (batch, t + window + 3), generator=g).to(device)
    order = torch.arange(batch, device=device)
    with torch.no_grad():
        state = grown_state(model, tokens, t)
        size = state_bytes(state) / batch

        def step(n):
            model.decoder(tokens[:, :n + 1], incremental_state=state)
            model.decoder.reorder_incremental_state_scripting(state, order)

        step(t)  # warm-up at this length (allocator, kernel choice)
        start = now(device)
        for i in range(window):
            step(t + 1 + i)
        elapsed = now(device) - start
        after = state_bytes(state) / batch
    ms = 1000.0 * elapsed / window
    return {"step_ms": ms, "tokens_per_s": batch * 1000.0 / ms, "state_bytes_per_hypothesis": size,
            "state_bytes_after_timed_steps": after}
