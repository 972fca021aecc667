"""The GPU mode: what GPU users run, in fp16 and bf16, against fairseq's transformer and the attention-free floor.

- decoding: per-step time and tokens/s at batch 1, 16, 128 and generated lengths 128 to 8192, and the state per
  hypothesis.  Rather than generating 8192 tokens one by one for every setting, the state at each length is grown
  from a real two-step decode to its exact shape (`decode.grown_state`), then a window of single-token steps
  (incremental forward with the output projection, plus the search's reorder) is timed;
- translation: beam-4 throughput with fairseq's SequenceGenerator;
- training: tokens/s and peak memory (torch.cuda.max_memory_allocated) of whole-LM training steps through fairseq's
  own --fp16 / --bf16 optimizer, at a fixed number of tokens per step.

Every model runs in this one process (GPU memory is measured per run); results are saved after every setting, and
settings past the time budget are recorded as skipped, so an interrupted run still reports what it measured.
"""
import math
import time
from typing import Callable, Dict, List

import torch

from ..models.building import make_dictionary
from . import decode, translate
from .common import DTYPES, VANILLA, build_lm, build_translation, now, skipped
from .fairseq_step import cast_like_trainer, fairseq_optimizer, lm_loss, train_step
from .floor import FLOOR


class Clock:
    def __init__(self, budget_s: float):
        self.deadline = time.time() + budget_s if budget_s else math.inf

    def over(self) -> bool:
        return time.time() > self.deadline


def _free(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _failure(e: BaseException) -> Dict:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return {"error": "out of memory"}
    return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def _warm_up(dtype: str, log: Callable, fn: Callable) -> None:
    """An untimed pass in each precision before its first timed one: the first use of a precision pays for its
    kernels' loading and tuning and the allocator's growth, which would otherwise be charged to whichever model
    runs first in it."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001  (the timed runs report their own failures)
        log(f"[warm-up {dtype}] {_failure(e)['error']}")


def _decode_warm_up(cfg: Dict, d, dt: str, device) -> None:
    model = build_lm(VANILLA, cfg["lm"], d, min(cfg["probes"]) + cfg["window"] + 8, device).to(DTYPES[dt])
    for batch in cfg["decode_batches"]:
        decode.step_window(model, d, device, batch, min(cfg["probes"]), cfg["window"])
    del model
    _free(device)


def run_decode(cfg: Dict, models: List[str], device, results: Dict, save: Callable, log: Callable, clock: Clock):
    d = make_dictionary(cfg["lm"].vocab)
    window, probes = cfg["window"], cfg["probes"]
    configs = [{"dtype": dt, "batch": b, "beam": 1, "length": max(probes), "method": "window", "window": window,
                "models": {}} for dt in cfg["dtypes"] for b in cfg["decode_batches"]]
    results["decode"] = {"size": cfg["lm"].__dict__, "configs": configs}
    models = [k for k in models if not skipped(k, cfg["lm"], "decode", log)]
    for dt in cfg["dtypes"]:
        _warm_up(dt, log, lambda: _decode_warm_up(cfg, d, dt, device))
        for kind in models:
            if clock.over():
                results["decode"]["skipped"] = "time budget"
                save()
                return
            torch.manual_seed(0)
            model = build_lm(kind, cfg["lm"], d, max(probes) + window + 8, device).to(DTYPES[dt])
            for entry in (c for c in configs if c["dtype"] == dt):
                res = entry["models"].setdefault(kind, {"step_ms": {}, "tokens_per_s": {},
                                                        "state_bytes_per_hypothesis": {}})
                for t in probes:
                    try:
                        r = decode.step_window(model, d, device, entry["batch"], t, window)
                    except Exception as e:  # noqa: BLE001  (one failed setting must not end the run)
                        res.setdefault("errors", {})[t] = _failure(e)["error"]
                        _free(device)
                        continue
                    res["step_ms"][t], res["tokens_per_s"][t] = r["step_ms"], r["tokens_per_s"]
                    res["state_bytes_per_hypothesis"][t] = r["state_bytes_per_hypothesis"]
                    _free(device)
                log(f"[decode {dt} batch={entry['batch']}] {kind:<11} ms/step " +
                    " ".join(f"t={t}:{v:.2f}" for t, v in res["step_ms"].items()) +
                    (f"  errors {res['errors']}" if res.get("errors") else ""))
            del model
            _free(device)
            save()


def run_translate(cfg: Dict, models: List[str], device, results: Dict, save: Callable, log: Callable,
                  clock: Clock):
    d = make_dictionary(cfg["mt"].vocab)
    results["translate"] = {"size": cfg["mt"].__dict__, "beam": 4, "src_len": 30, "out_len": 30,
                            "sentences": cfg["mt_sentences"], "batch": cfg["mt_batch"], "by_dtype": {}}
    models = [k for k in models if not skipped(k, cfg["mt"], "translate", log)]
    for dt in cfg["dtypes"]:
        per = results["translate"]["by_dtype"].setdefault(dt, {})
        _warm_up(dt, log, lambda: translate.throughput(
            build_translation(VANILLA, cfg["mt"], d, device).to(DTYPES[dt]), d, device, cfg["mt_batch"],
            cfg["mt_batch"], 4, 30, 30, 1))
        for kind in models:
            if clock.over():
                results["translate"]["skipped"] = "time budget"
                save()
                return
            torch.manual_seed(0)
            try:
                model = build_translation(kind, cfg["mt"], d, device).to(DTYPES[dt])
                per[kind] = translate.throughput(model, d, device, cfg["mt_sentences"], cfg["mt_batch"], 4, 30, 30,
                                                 cfg["mt_repeats"])
                del model
                log(f"[translate {dt} beam=4] {kind:<11} {per[kind]['tokens_per_s']:9.0f} tokens/s")
            except Exception as e:  # noqa: BLE001
                per[kind] = _failure(e)
                log(f"[translate {dt} beam=4] {kind:<11} {per[kind]['error']}")
            _free(device)
            save()
    # the CPU modes' key: the first precision's numbers
    results["translate"]["models"] = results["translate"]["by_dtype"].get(cfg["dtypes"][0], {})


def train_throughput(kind: str, cfg: Dict, tlen: int, precision: str, device) -> Dict:
    """Whole-LM training steps of cfg['train_tokens'] tokens at length tlen through fairseq's --fp16/--bf16 path."""
    d = make_dictionary(cfg["train"].vocab)
    batch = max(1, cfg["train_tokens"] // tlen)
    torch.manual_seed(0)
    model = cast_like_trainer(build_lm(kind, cfg["train"], d, tlen + 8, device), precision)
    optimizer, fcfg = fairseq_optimizer(model, precision)
    tokens = torch.randint(d.nspecial, len(d), (batch, tlen + 1), device=device)
    loss = lm_loss(model, tokens)
    train_step(model, optimizer, fcfg, loss, batch * tlen)  # warm-up; creates Adam's state
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    best, last = math.inf, {}
    for _ in range(cfg["train_repeats"]):
        start = now(device)
        last = train_step(model, optimizer, fcfg, loss, batch * tlen)
        best = min(best, now(device) - start)
    out = {"tokens_per_s": batch * tlen / best, "seconds": best, "batch": batch, "loss": last["loss"],
           "overflow": last["overflow"]}
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        out.update(peak_bytes=peak, step_bytes=peak - resident)
    if not math.isfinite(last["loss"]):
        out["error"] = f"loss is {last['loss']}"
    return out


def run_train(cfg: Dict, models: List[str], device, results: Dict, save: Callable, log: Callable, clock: Clock):
    results["train"] = {"size": cfg["train"].__dict__, "tokens_per_step": cfg["train_tokens"],
                        "path": "fairseq FP16Optimizer (--fp16 / --bf16), whole LM, cross-entropy", "by_dtype": {}}
    models = [k for k in models if not skipped(k, cfg["train"], "train", log)]
    for precision in cfg["train_dtypes"]:
        per_kind = results["train"]["by_dtype"].setdefault(precision, {})
        _warm_up(precision, log, lambda: train_throughput(VANILLA, dict(cfg, train_repeats=1),
                                                          min(cfg["train_T"]), precision, device))
        for kind in models:
            for tlen in cfg["train_T"]:
                if clock.over():
                    results["train"]["skipped"] = "time budget"
                    save()
                    return
                try:
                    r = train_throughput(kind, cfg, tlen, precision, device)
                except Exception as e:  # noqa: BLE001
                    r = _failure(e)
                _free(device)
                per_kind.setdefault(kind, {})[tlen] = r
                log(f"[train {precision} T={tlen}] {kind:<11} " + (r["error"] if "error" in r else
                    f"{r['tokens_per_s']:9.0f} tokens/s" + (f"  peak {r['peak_bytes'] / 2**30:6.2f} GiB"
                                                             if "peak_bytes" in r else "")))
                save()
    results["train"]["models"] = results["train"]["by_dtype"].get(cfg["train_dtypes"][0], {})


def run(cfg: Dict, kinds: List[str], parts: List[str], device, results: Dict, save: Callable, log: Callable,
        budget_s: float) -> None:
    models = [VANILLA, FLOOR] + kinds
    clock = Clock(budget_s)
    # training before translation: when the time budget runs out, the training target is the one still measured
    for part, fn in (("decode", run_decode), ("train", run_train), ("translate", run_translate)):
        if part in parts:
            fn(cfg, models, device, results, save, log, clock)
