"""Every Triton kernel the GPU path can launch, compiled for the real GPU targets on a machine without a GPU.

Triton's interpreter (tests/test_kernels.py on a CPU) runs programs that the real compiler rejects (`tl.dot` on an
8 x 8 tile, a loop-carried variable that changes type, a `return` inside a loop) and says nothing about registers or
shared memory.  `triton.compile` itself needs no GPU: it lowers to PTX and assembles a cubin with the `ptxas` that
triton's wheel ships.  Here the plugin's own launch code, and fla's, run on CPU tensors under a stand-in driver that
reports the target GPU; `JITFunction.run` compiles instead of launching, and applies the check a real launch makes
(shared memory within the target's limit).  The signatures, integer specialisations and constexprs are therefore
those of a real launch, and fla, seeing an H100 or an A100 at import (fla/utils/hardware.py asks the driver and
torch.cuda), lists the autotune configurations it would try there; each one is compiled, as its autotuner would on
the GPU, where a configuration that fails to compile or to fit is skipped.

    python -m kvattn_fairseq.kernels.compile_check            compile everything, write docs/bench/gpu/compile.md
                                                              and compile.json (over an hour from scratch on two cores;
                                                              with the binaries cached under .cache/kernel-compile,
                                                              minutes)
    python -m kvattn_fairseq.kernels.compile_check --check    exit 1 unless the committed report is current

What is compiled (`cases`): every kind with a constant decoding state (those with kernels), built as fairseq builds
it at the head sizes the named architectures and the benchmark use (models/architectures.py, bench/__main__.py),
in fp16 and bf16 (fp32 too at the benchmark's size), through a training forward and backward (fla's chunked
kernels) and a decode (a prompt, then single steps around a search's reorder: the plugin's step kernels, fla's
recurrence for gated_delta).  Registers,
spills and shared memory of each compiled kernel go into the report (compile_report.py).
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

# re-exported: the tests read them here
from .compile_cases import (BENCH_SIZE, CACHE, HALF, PROMPT, ROOT, SITES, TARGETS, TRAIN_T, Site, Target,  # noqa: F401
                            dtypes, site_dtypes, sites)


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[], None]


def cases() -> List[Case]:
    """Each site in each of its dtypes."""
    return [Case(name, lambda s=s, dt=dt: _drive_site(s, dt)) for name, s, dt in site_dtypes()]


def _dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _build(site: Site):
    from ..modules.registry import ATTENTION_KINDS, AttentionSite, build_attention

    options = {o.dest: o.default for o in ATTENTION_KINDS[site.kind].options}
    options.update(dict(site.options))
    return build_attention(site.kind, AttentionSite("decoder", site.embed_dim, site.heads, site.embed_dim, 0.0,
                                                    options, 4096))


def _drive_site(site: Site, dtype: str) -> None:
    """A training step (forward and backward) and a decode: a prompt, then single steps around a search's reorder;
    a window's prompt fills its ring to W - 2, so that the steps grow it to W and then overwrite it."""
    import torch

    torch.manual_seed(0)
    module = _build(site).to(_dtype(dtype))
    x = torch.randn(TRAIN_T, 2, site.embed_dim, dtype=_dtype(dtype), requires_grad=True)
    out, _ = module(x, x, x)
    out.float().sum().backward()
    module.eval()
    window = getattr(module, "window", None) or getattr(getattr(module, "local", None), "window", None)
    prompt = max(PROMPT, window - 2) if window else PROMPT
    y = torch.randn(prompt + 4, 2, site.embed_dim, dtype=_dtype(dtype))
    state = {}
    with torch.no_grad():
        module(y[:prompt], y[:prompt], y[:prompt], incremental_state=state)
        for t in range(prompt, prompt + 4):
            module(y[t:t + 1], y[t:t + 1], y[t:t + 1], incremental_state=state)
            module.reorder_incremental_state(state, torch.tensor([1, 0]))


# --- the stand-in GPU ---------------------------------------------------------------------------------------------
def install(target: Target) -> None:
    """Make triton and fla see `target`: a stand-in driver (compile, never launch) and torch.cuda's device queries.
    Only for a process of its own that has not imported fla yet (fla reads the device at import)."""
    if "fla" in sys.modules:
        raise RuntimeError("compile_check: fla was imported before the stand-in GPU was installed")
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase
    from triton.runtime.driver import driver

    properties = {"max_shared_mem": target.shared, "multiprocessor_count": target.sms, "max_num_regs": 65536,
                  "warpSize": 32}

    class Utils:
        @staticmethod
        def get_device_properties(index=0):
            return dict(properties)

    class StandIn(DriverBase):
        utils = Utils()

        @classmethod
        def is_active(cls):
            return False

        def map_python_to_cpp_type(self, ty):
            return ty

        def get_current_target(self):
            return GPUTarget("cuda", target.capability, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_benchmarker(self):
            def bench(kernel_call, quantiles=None, **_):
                kernel_call()  # compiles (JITFunction.run below); every configuration ties, the first wins
                return [1.0, 1.0, 1.0]

            return bench

    driver.set_active(StandIn())
    torch.cuda.get_device_capability = lambda device=None: divmod(target.capability, 10)
    torch.cuda.get_device_name = lambda device=None: target.gpu
    torch.cuda.get_device_properties = lambda device=None: _Properties(target)
    torch.cuda.device_count = lambda: 1
    torch.cuda.current_device = lambda: 0
    import fla.utils.hardware as hardware

    # fla asks for the shared memory of a tensor's device index, None for a CPU tensor
    hardware.get_all_max_shared_mem = lambda: collections.defaultdict(lambda: target.shared)


class _Properties:
    def __init__(self, target: Target):
        self.name, self.major, self.minor = target.gpu, *divmod(target.capability, 10)
        self.multi_processor_count = target.sms
        self.shared_memory_per_block_optin = target.shared
        self.shared_memory_per_block = 49152
        self.total_memory = 80 << 30


class Recorder:
    """JITFunction.run compiling instead of launching; each compiled kernel recorded with its resource usage."""

    def __init__(self, target: Target, first_config: bool = False):
        self.target, self.first_config = target, first_config
        self.records: List[Dict] = []
        self.case: Optional[str] = None
        self.tuning = None  # the autotune configuration being tried, if any

    def install(self) -> None:
        from triton.runtime.autotuner import Autotuner
        from triton.runtime.errors import OutOfResources
        from triton.runtime.jit import JITFunction

        recorder, original_run, original_bench = self, JITFunction.run, Autotuner._bench
        original_prune, original_tune = Autotuner.prune_configs, Autotuner.run

        def run(fn, *args, grid, warmup, **kwargs):
            try:
                kernel = original_run(fn, *args, grid=grid, warmup=True, **kwargs)
            except Exception as e:
                recorder.add(fn, None, kwargs, f"compile error: {type(e).__name__}: {_first_line(e)}")
                raise
            over = kernel.metadata.shared > recorder.target.shared
            recorder.add(fn, kernel, kwargs, "over the shared memory limit" if over else "ok")
            if over:  # what loading it on the GPU raises (CompiledKernel._init_handles)
                raise OutOfResources(kernel.metadata.shared, recorder.target.shared, "shared memory")
            return kernel

        def bench(tuner, *args, config, **meta):
            recorder.tuning = config
            try:
                return original_bench(tuner, *args, config=config, **meta)
            finally:
                recorder.tuning = None

        def prune(tuner, kwargs):
            configs = original_prune(tuner, kwargs)
            return configs[:1] if recorder.first_config else configs

        def tune(tuner, *args, **kwargs):
            # each case tunes afresh, as its own process on the GPU would: what a case compiles does not depend on
            # the cases before it, so that a part of them (the suite's subset) gives the full run's rows
            if getattr(tuner, "_compile_check_case", None) != recorder.case:
                tuner.cache.clear()
                tuner._compile_check_case = recorder.case
            return original_tune(tuner, *args, **kwargs)

        JITFunction.run = run
        Autotuner._bench = bench
        Autotuner.prune_configs = prune
        Autotuner.run = tune

    def add(self, fn, kernel, kwargs, status: str) -> None:
        declared = {p.name for p in fn.params if p.is_constexpr}
        config = {k: v for k, v in kwargs.items() if k in declared and isinstance(v, (bool, int))}
        if kernel is not None:
            config.update(warps=kernel.metadata.num_warps, stages=kernel.metadata.num_stages)
            config.update(_specialised(fn, kernel))
        elif self.tuning is not None:
            config.update(warps=self.tuning.num_warps, stages=self.tuning.num_stages)
        tuned = set(self.tuning.kwargs) | {"warps", "stages"} if self.tuning is not None else set()
        record = {"target": self.target.name, "case": self.case, "kernel": fn.fn.__name__,
                  "source": _source(fn.fn.__module__),
                  "config": " ".join(f"{k}={_short(v)}" for k, v in config.items()),
                  "dims": " ".join(f"{k}={_short(v)}" for k, v in config.items() if k not in tuned),
                  "autotuned": self.tuning is not None, "status": status}
        if kernel is not None:
            record.update(usage(kernel, self.target), shared=kernel.metadata.shared, hash=kernel.hash,
                          types=" ".join(t[1:] for t in kernel.src.signature.values() if t.startswith("*")))
        if not any(_same(record, r) for r in self.records[-64:]):
            self.records.append(record)

    def run_case(self, case: Case) -> Optional[str]:
        """None, or why a real launch of this case would fail."""
        self.case = case.name
        try:
            case.run()
        except Exception as e:  # noqa: BLE001  (recorded in the report; the check fails on it)
            return f"{type(e).__name__}: {_first_line(e)}"
        finally:
            self.case = None
        return None


def _specialised(fn, kernel) -> Dict:
    """The integer arguments triton specialised on: equal to 1 (folded in as a constant) or divisible by 16."""
    src, out = getattr(kernel, "src", None), {}
    if src is None:
        return out
    declared = {p.name for p in fn.params if p.is_constexpr}
    for name, kind in src.signature.items():
        if name not in declared and kind == "constexpr":
            out[name] = "1"
    for path, attrs in (src.attrs or {}).items():
        name = fn.arg_names[path[0]] if len(path) == 1 else None
        if name and src.signature.get(name, "").startswith("i") and any(list(a) == ["tt.divisibility", 16]
                                                                        for a in attrs):
            out[name] = "16k"
    return out


def _source(module: str) -> str:
    return "plugin" if module.startswith("kvattn_fairseq") else module.split(".")[0]


def _same(a: Dict, b: Dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("case", "kernel", "config", "status", "hash"))


def _short(v) -> str:
    return str(int(v)) if isinstance(v, bool) else str(v)


def _first_line(e: BaseException) -> str:
    """The line of an error that says what went wrong (a CompilationError: where, and the last line)."""
    text = re.sub(r"\s*\(see #\d+\)", "", str(e))  # a library's pointer into its tracker
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if len(lines) > 1 and lines[0].startswith("at "):
        return f"{lines[0]} {lines[-1]}"[:300]
    return next((line for line in lines if "error" in line.lower()), lines[0])[:300]


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def usage(kernel, target: Target) -> Dict:
    """Registers, stack and spills of a compiled kernel: `cuobjdump --dump-resource-usage` on its cubin, and where it
    has a stack, `ptxas -v` on its PTX for the spill stores and loads.  Kept under .cache by the kernel's hash."""
    path = ROOT / CACHE / "usage" / f"{kernel.hash}.json"
    if path.exists():
        return json.loads(path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        Path(cubin).write_bytes(kernel.asm["cubin"])
        dump = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", cubin], capture_output=True, text=True,
                              check=True).stdout
        found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", dump)
        regs, stack, _, local = (int(x) for x in found.groups())
        stores = loads = 0
        if stack or local:
            from triton.backends.nvidia.compiler import sm_arch_from_capability

            ptx = os.path.join(tmp, "k.ptx")
            Path(ptx).write_text(kernel.asm["ptx"])
            log = subprocess.run([_tool("ptxas"), "-v", f"--gpu-name={sm_arch_from_capability(target.capability)}",
                                  ptx, "-o", os.path.join(tmp, "v.cubin")], capture_output=True, text=True,
                                 check=True).stderr
            spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
            stores, loads = (int(x) for x in spills.groups())
    result = {"regs": regs, "stack": stack, "spill_stores": stores, "spill_loads": loads}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def worker(target_name: str, out: str, only: Optional[str], first_config: bool) -> int:
    """One target, in this (fresh) process: every case, the records written to `out` as JSON."""

    from .. import kernels

    target = TARGETS[target_name]
    # the plugin's kernels and fla's for CPU tensors (compiled, never run); fp64 still keeps the PyTorch ops
    kernels.triton_ok = kernels.fla_ok = lambda t: True
    install(target)
    recorder = Recorder(target, first_config)
    recorder.install()
    failures = {}
    selected = [c for c in cases() if only is None or re.search(only, c.name)]
    for case in selected:
        start = time.time()
        why = recorder.run_case(case)
        if why:
            failures[case.name] = why
        print(f"[{target.name}] {case.name}: {'FAILED ' + why if why else 'ok'} ({time.time() - start:.0f}s)",
              flush=True)
    Path(out).write_text(json.dumps({"target": target.name, "cases": [c.name for c in selected],
                                     "failures": failures, "records": recorder.records}))
    return 0


# --- running it ---------------------------------------------------------------------------------------------------
def compile_all(targets: List[str], only: Optional[str] = None, first_config: bool = False, jobs: int = 2,
                log=print) -> Dict:
    """Run one worker process per target (`jobs` at a time); -> {target: its records, cases and failures}."""
    env = dict(os.environ, KVATTN_KERNELS="auto", FLA_CACHE_RESULTS="0",
               TRITON_CACHE_DIR=str(ROOT / CACHE / "triton"), PYTHONPATH=str(ROOT) + os.pathsep +
               os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    results, running = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        pending = list(targets)
        while pending or running:
            while pending and len(running) < jobs:
                name = pending.pop(0)
                out = os.path.join(tmp, f"{name}.json")
                cmd = [sys.executable, "-m", "kvattn_fairseq.kernels.compile_check", "--worker", name, "--out", out]
                cmd += (["--only", only] if only else []) + (["--first-config"] if first_config else [])
                running.append((name, out, subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                                            stderr=subprocess.STDOUT, text=True)))
            name, out, proc = running.pop(0)
            for line in proc.stdout:
                if line.startswith("["):
                    log(line.rstrip())
                tail = line
            if proc.wait() != 0 or not os.path.exists(out):
                raise RuntimeError(f"compile_check: the {name} worker exited {proc.returncode}: {tail.strip()}")
            results[name] = json.loads(Path(out).read_text())
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kvattn_fairseq.kernels.compile_check",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 unless the committed report is current")
    p.add_argument("--jobs", type=int, default=2, help="targets compiled at the same time (one process each)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--only", help=argparse.SUPPRESS)
    p.add_argument("--first-config", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--render", action="store_true", help="rewrite compile.md from the committed compile.json")
    a = p.parse_args(argv)
    if a.worker:
        return worker(a.worker, a.out, a.only, a.first_config)
    from . import compile_report as report

    if a.render:
        report.render()
        return 0
    if a.check:
        stale = report.stale()
        print(stale or f"{report.REPORT} is current")
        return 1 if stale else 0
    if a.jobs < 1:
        p.error(f"--jobs: expected a positive number, got {a.jobs}")
    start = time.time()
    results = compile_all(list(TARGETS), jobs=a.jobs)
    data = report.write(results, [c.name for c in cases()], time.time() - start)
    print(f"wrote {report.REPORT} and {report.DATA}: {data['binaries']} kernels compiled, "
          f"{len(data['failures'])} failures")
    return 1 if data["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
