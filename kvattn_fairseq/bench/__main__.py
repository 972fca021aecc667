"""python -m kvattn_fairseq.bench --mode quick|full|gpu [--out DIR] [--device auto|cpu|cuda] [--kinds a,b]"""
import argparse
import json
import os
import sys
import time

import torch

from ..models.building import make_dictionary
from ..modules.registry import ATTENTION_KINDS
from ..util.cli import run_main
from . import decode, gpu, gpu_report, report, train, translate
from .common import (CLOCKS, VANILLA, Size, build_lm, build_translation, constant_state, decoder_kinds, fits,
                     machine, set_clock, skipped, split_kinds)
from .floor import FLOOR

MODES = {
    "quick": dict(lm=Size(6, 512, 2048, 8, 8000), decode=[(4, 1, 512)], probes=(32, 64, 128, 256, 512),
                  mt=Size(6, 512, 2048, 8, 8000), mt_sentences=32, mt_batch=16, mt_repeats=1,
                  train=Size(2, 512, 2048, 8, 1000), train_T=(512, 2048), train_repeats=1),
    "full": dict(lm=Size(6, 512, 2048, 8, 8000), decode=[(4, 1, 4096), (1, 1, 4096), (16, 1, 2048), (1, 4, 2048),
                                                         (4, 4, 2048)],
                 probes=(32, 64, 128, 256, 512, 1024, 2048, 4096),
                 mt=Size(6, 512, 2048, 8, 32000), mt_sentences=256, mt_batch=64, mt_repeats=2,
                 train=Size(6, 512, 2048, 8, 1000), train_T=(512, 1024, 2048, 4096, 8192), train_repeats=2),
    # a GPU (see gpu.py): fp16 and bf16, decoding at batch 1/16/128 up to 8192 tokens, fairseq's fp16 training path
    "gpu": dict(lm=Size(6, 512, 2048, 8, 8000), dtypes=("fp16", "bf16"), decode_batches=(1, 16, 128),
                probes=(128, 512, 2048, 4096, 8192), window=16,
                mt=Size(6, 512, 2048, 8, 32000), mt_sentences=256, mt_batch=128, mt_repeats=1,
                train=Size(6, 512, 2048, 8, 8000), train_T=(512, 2048, 8192, 16384), train_tokens=16384,
                train_repeats=2, train_dtypes=("fp16", "bf16")),
    # the GPU mode's code path at tiny sizes, for a CPU (scripts/gpu-check.sh --dry-run, the test suite)
    "gpu-dry": dict(lm=Size(2, 32, 64, 4, 50), dtypes=("fp16", "bf16"), decode_batches=(1, 4), probes=(8, 32),
                    window=3, mt=Size(1, 32, 64, 4, 50), mt_sentences=4, mt_batch=2, mt_repeats=1,
                    train=Size(1, 32, 64, 4, 50), train_T=(16, 64), train_tokens=64, train_repeats=1,
                    train_dtypes=("fp16", "bf16")),
    # seconds, for the test suite: tiny models, short lengths
    "smoke": dict(lm=Size(2, 32, 64, 4, 50), decode=[(2, 1, 16), (1, 2, 8)], probes=(4, 8, 16),
                  mt=Size(1, 32, 64, 4, 50), mt_sentences=4, mt_batch=2, mt_repeats=1,
                  train=Size(1, 32, 64, 4, 50), train_T=(16, 32), train_repeats=1),
}


def log(msg: str) -> None:
    print(msg, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kvattn_fairseq.bench", description=__doc__)
    p.add_argument("--mode", choices=sorted(MODES), default="quick")
    p.add_argument("--out", default="bench_out", help="directory for results.json, summary.md and the plots")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--kinds", default="", help="comma-separated attention kinds (default: every decoder-capable "
                   "kind), or per-layer plans of decoder self-attention separated by ';', e.g. "
                   "'memsizer;memsizer*5,softmax'; a plan runs in the parts whose models have its number of layers")
    p.add_argument("--parts", default="decode,translate,train", help="which of decode,translate,train to run")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (default: torch's choice)")
    p.add_argument("--decode", default="", metavar="BxWxL[,..]",
                   help="decoding runs as batch x beam x length, e.g. 4x1x2048 (default: the mode's)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time, or cpu: the CPU time of the one benchmarking thread, which other processes on a "
                        "shared machine do not add to (CPU, --threads 1, decode and translate only)")
    p.add_argument("--budget", type=float, default=0, metavar="SECONDS",
                   help="gpu modes: settings not started within this many seconds are recorded as skipped")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    device = torch.device("cuda" if a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()) else "cpu")
    if a.threads:
        torch.set_num_threads(a.threads)
    only = split_kinds(a.kinds)
    unknown = [k for k in only if k not in ATTENTION_KINDS and not set(k) & set(",*")]
    if unknown:
        p.error(f"--kinds: unknown attention kind(s) {unknown}; registered: {sorted(ATTENTION_KINDS)}")
    parts = [x for x in a.parts.split(",") if x]
    bad = [x for x in parts if x not in ("decode", "translate", "train")]
    if bad:
        p.error(f"--parts: unknown part(s) {bad}; choose from decode, translate, train")
    cfg = dict(MODES[a.mode])
    gpu_mode = a.mode.startswith("gpu")
    if a.decode and gpu_mode:
        p.error("--decode: the gpu modes time fixed batches and lengths; use --mode quick or full")
    if a.budget < 0:
        p.error(f"--budget: expected seconds >= 0, got {a.budget}")
    if a.clock == "cpu" and (device.type != "cpu" or a.threads != 1 or "train" in parts):
        p.error("--clock cpu: times one thread on the CPU; give --device cpu --threads 1 and --parts without train "
                "(training runs in subprocesses)")
    set_clock(a.clock)
    if a.decode:
        try:
            cfg["decode"] = [tuple(int(x) for x in run.split("x")) for run in a.decode.split(",")]
            assert all(len(run) == 3 and min(run) > 0 for run in cfg["decode"])
        except (ValueError, AssertionError):
            p.error(f"--decode: expected BATCHxBEAMxLENGTH[,...] with positive numbers, got {a.decode!r}")
        longest = max(run[2] for run in cfg["decode"])
        cfg["probes"] = tuple(sorted({t for t in MODES["full"]["probes"] if t <= longest} | {longest}))
    kinds = decoder_kinds(only)
    sizes = [cfg[part] for part in ("lm", "mt", "train")]
    for kind in kinds:
        why = [fits(kind, size) for size in sizes]
        if all(why):
            p.error(f"--kinds: {kind!r} fits none of mode {a.mode}'s models ({', '.join(str(s.layers) for s in sizes)} "
                    f"layers): {why[0].split(': ', 1)[1].split('; give')[0]}")
    models = [VANILLA, FLOOR] + kinds
    os.makedirs(a.out, exist_ok=True)
    results = {"mode": a.mode, "machine": machine(device), "clock": a.clock, "kinds": kinds,
               "baseline": "fairseq transformer_lm / transformer of the same size",
               "floor": "the baseline with every attention returning zeros"}
    started = time.time()

    def save(final: bool = False):
        results["seconds"] = round(time.time() - started, 1)
        write_outputs(results, kinds, a.out, final)

    if gpu_mode:
        gpu.run(cfg, kinds, parts, device, results, save, log, a.budget)
        return finish(results, kinds, a.out, save)

    if "decode" in parts:
        d = make_dictionary(cfg["lm"].vocab)
        results["decode"] = {"size": cfg["lm"].__dict__, "configs": []}
        for batch, beam, length in cfg["decode"]:
            entry = {"batch": batch, "beam": beam, "length": length, "models": {}}
            results["decode"]["configs"].append(entry)
            # A discarded first run: the process's first long generation pays for growing the heap (the allocator
            # then keeps the pages), which would otherwise be charged to whichever model runs first.
            decode.decode_lm(build_lm(VANILLA, cfg["lm"], d, length + 8, device), d, device, batch, beam, length,
                             cfg["probes"])
            for kind in models:
                if skipped(kind, cfg["lm"], f"decode batch={batch} beam={beam}", log):
                    continue
                torch.manual_seed(0)
                model = build_lm(kind, cfg["lm"], d, length + 8, device)
                t0 = time.time()
                entry["models"][kind] = decode.decode_lm(model, d, device, batch, beam, length, cfg["probes"])
                log(f"[decode batch={batch} beam={beam}] {kind:<11} {time.time() - t0:6.1f}s  ms/step " +
                    " ".join(f"t={t}:{v:.1f}" for t, v in entry["models"][kind]["step_ms"].items()))
                del model

    if "translate" in parts:
        d = make_dictionary(cfg["mt"].vocab)
        results["translate"] = {"size": cfg["mt"].__dict__, "beam": 4, "src_len": 30, "out_len": 30,
                                "sentences": cfg["mt_sentences"], "batch": cfg["mt_batch"], "models": {}}
        for kind in models:
            if skipped(kind, cfg["mt"], "translate", log):
                continue
            torch.manual_seed(0)
            model = build_translation(kind, cfg["mt"], d, device)
            r = translate.throughput(model, d, device, cfg["mt_sentences"], cfg["mt_batch"], 4, 30, 30,
                                     cfg["mt_repeats"])
            results["translate"]["models"][kind] = r
            log(f"[translate beam=4] {kind:<11} {r['sentences_per_s']:7.1f} sentences/s {r['tokens_per_s']:8.0f} "
                f"tokens/s")
            del model

    if "train" in parts:
        results["train"] = {"size": cfg["train"].__dict__, "batch": 1, "models": {}}
        for kind in models:
            if skipped(kind, cfg["train"], "train", log):
                continue
            per_t = results["train"]["models"].setdefault(kind, {})
            for tlen in cfg["train_T"]:
                per_t[tlen] = train.run_isolated(kind, cfg["train"], tlen, 1, device.type, cfg["train_repeats"],
                                                 timeout=1800)
                r = per_t[tlen]
                log(f"[train T={tlen}] {kind:<11} " + (r["error"] if "error" in r else
                    f"{r['tokens_per_s']:8.0f} tokens/s  peak {r['peak_bytes'] / 2**20:8.1f} MiB"))

    return finish(results, kinds, a.out, save)


def write_outputs(results, kinds, out: str, plots: bool) -> str:
    """results.json and summary.md (after every setting of the gpu modes), the plots when asked; returns the
    summary."""
    constant = [k for k in kinds if constant_state(k)]
    plain = json.loads(json.dumps(results), object_hook=_int_keys)
    if results["mode"].startswith("gpu"):
        rows = gpu_report.summarise(plain, constant)
        md, checks = gpu_report.markdown(rows, plain), gpu_report.targets(rows, plain)
    else:
        rows = report.summarise(plain, constant)
        md, checks = report.markdown(rows, results), report.targets(rows)
    results["summary"], results["targets"] = rows, checks
    tmp = os.path.join(out, "results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, os.path.join(out, "results.json"))  # never a half-written results.json
    summary = md + "\n" + "\n".join(checks) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary)
    if plots:
        results["plots"] = [os.path.basename(x) for x in report.plots(plain, out)]
    return summary


def finish(results, kinds, out: str, save) -> int:
    save(final=True)
    with open(os.path.join(out, "summary.md")) as f:
        log("\n" + f.read())
    log(f"wrote {os.path.join(out, 'results.json')}, summary.md and {len(results.get('plots', []))} plots in "
        f"{results['seconds']:.0f}s")
    return 0


def _int_keys(d):
    return {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in d.items()}


if __name__ == "__main__":
    sys.exit(run_main("python -m kvattn_fairseq.bench", main))
