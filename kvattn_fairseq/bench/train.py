"""Training speed and peak memory of a causal LM layer stack against sequence length T.

Each (kind, T) runs in a fresh process so that its peak memory is its own: on CPU the growth of the process's peak
resident set over what it held before the first step, on CUDA torch's peak allocated bytes.
"""
import argparse
import json
import resource
import sys
from typing import Dict, List

import torch

from ..models.building import make_dictionary
from ..util import proc
from ..util.errors import StepFailed
from .common import Size, build_lm, now


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Linux resets the peak resident set (VmHWM) on writing 5 to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(kind: str, size: Size, tlen: int, batch: int, device: torch.device, repeats: int) -> Dict:
    torch.manual_seed(0)
    model = build_lm(kind, size, make_dictionary(size.vocab), tlen + 8, device).train()
    layers = model.decoder.layers
    mask = model.decoder.buffered_future_mask(torch.empty(tlen, 1, 1, device=device))
    x = torch.randn(tlen, batch, size.dim, device=device, requires_grad=True)

    def step():
        h = x
        for layer in layers:
            h = layer(h, self_attn_mask=mask)[0]
        h.float().pow(2).mean().backward()

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        reset = _reset_peak_rss()
        before = _status_bytes("VmRSS")
    step()  # warm-up, and the step whose memory is measured
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    elif reset:
        peak = _status_bytes("VmHWM") - before
    else:  # the process-lifetime peak: an upper bound that includes building the model
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    best = float("inf")
    for _ in range(repeats):
        start = now(device)
        step()
        best = min(best, now(device) - start)
    return {"tokens_per_s": tlen * batch / best, "seconds": best, "peak_bytes": max(peak, 0)}


def run_isolated(kind: str, size: Size, tlen: int, batch: int, device: str, repeats: int, timeout: int) -> Dict:
    cmd = [sys.executable, "-m", "kvattn_fairseq.bench.train", "--kind", kind, "--tlen", str(tlen), "--batch",
           str(batch), "--device", device, "--repeats", str(repeats), "--size", json.dumps(size.__dict__)]
    try:
        output = proc.run(cmd, label=f"train {kind} T={tlen}", timeout=timeout, env=proc.tool_env())
    except StepFailed as e:
        return {"error": str(e)}
    return json.loads(output.strip().splitlines()[-1])


def main(argv: List[str] = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kind", required=True)
    p.add_argument("--tlen", type=int, required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--size", required=True)
    a = p.parse_args(argv)
    import kvattn_fairseq  # noqa: F401  (registers the kinds)

    result = measure(a.kind, Size(**json.loads(a.size)), a.tlen, a.batch, torch.device(a.device), a.repeats)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
