"""docs/bench/gpu/compile.md and compile.json from the compile check's records (compile_check.py), and whether the
committed ones are current: their fingerprint is a hash of the kernels' and launchers' sources (this directory, but
for the check's own two files, whose output the suite compares instead), the cases compiled, the targets and the
versions of triton and fla."""
import collections
import hashlib
import json
from importlib.metadata import version
from pathlib import Path
from typing import Dict, List, Optional

from .compile_cases import ROOT, TARGETS, dtypes, site_dtypes, sites

REPORT = Path("docs/bench/gpu/compile.md")
DATA = Path("docs/bench/gpu/compile.json")
KERNEL_SOURCES = Path("kvattn_fairseq/kernels")
USAGE = ("regs", "spill_stores", "stack", "shared")

HOW = """\
Made on a machine without a GPU: the plugin's own launch code and fla's run on CPU tensors under a stand-in Triton
driver that reports the target GPU, and `JITFunction.run` compiles instead of launching
(`kvattn_fairseq/kernels/compile_check.py`), so each kernel is compiled with the signature, integer specialisation
and constexprs of a real launch; `triton.compile` produces PTX and a cubin with the `ptxas` of triton's wheel (sm_90a
for the H100, sm_80 for the A100). fla reads the device at import (capability, name, shared memory): it sees an H100
or an A100 and lists the autotune configurations it would try there, and every one is compiled, as its autotuner
does on the GPU; each case tunes afresh, as a process of its own would.

What is compiled: every attention kind that launches a kernel, built as fairseq builds it at the head sizes of the
named architectures and of the benchmark (`SITES` in compile_cases.py), through a training step (fla's chunked
kernels, forward and backward) and a decode (a prompt, then single steps around a beam search's reorder: the
plugin's step kernels, and fla's fused recurrence for `gated_delta`), in fp16 and bf16 (fp32 too at the
benchmark's size). On sm_90 `gated_delta` trains through the PyTorch chunked form (fla 0.6.0 refuses its gated
backward on Hopper with this triton: `kernels.fla_gated_backward_ok`), so only its forward kernels are listed there.

Columns: **registers** per thread (of 255; `cuobjdump --dump-resource-usage`); **spill stores**, bytes per thread
that ptxas moved to local memory for want of registers (`ptxas -v`; each one is a round trip to the L1/L2 caches at
every use), and **stack**, the local memory frame; **shared**, the bytes of shared memory per block Triton asks for,
against the most a block may use: 232,448 B on sm_90, 166,912 B on sm_80. The check fails where a launch would
fail on the GPU: a kernel that does not compile, or one over the shared memory limit, where no other autotune
configuration is left. An autotune configuration that does not compile or does not fit is skipped by fla's
autotuner on the GPU, as here ("skipped"); one that spills is timed like the others, and the autotuner keeps the
fastest."""


def fingerprint(case_names: List[str]) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in (ROOT / KERNEL_SOURCES).glob("*.py") if not p.name.startswith("compile_")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(json.dumps([case_names, sorted(TARGETS), version("triton"), version("fla-core")]).encode())
    return h.hexdigest()[:16]


def _dims(configs: List[str]) -> str:
    """The settings every configuration of a kernel shares (its sizes and flags), in the first one's order."""
    common = set.intersection(*(set(c.split()) for c in configs))
    return " ".join(t for t in configs[0].split() if t in common)


def summarise(results: Dict) -> Dict:
    """Plugin kernels: one row per compiled binary, with the cases that launch it.  fla's: one row per kernel and
    launch, its autotune configurations folded together (registers' range, most shared memory, which spill, how
    many a GPU would skip, the first configuration's numbers), rows of identical binaries merged across cases."""
    failures = [{"target": t, "case": case, "why": why} for t, res in results.items()
                for case, why in res["failures"].items()]
    plugin, tuned = collections.OrderedDict(), collections.OrderedDict()
    for res in results.values():
        for r in res["records"]:
            if r["source"] == "plugin":
                row = plugin.setdefault((r["target"], r.get("hash") or r["config"] + r["status"]),
                                        {k: r.get(k) for k in ("target", "kernel", "config", "status") + USAGE})
                if r["case"] not in row.setdefault("cases", []):
                    row["cases"].append(r["case"])
            else:
                # one launch: its dims (what is not tuned) and its pointers' types (fla's forward and backward
                # call some kernels with the states in different precisions)
                tuned.setdefault((r["target"], r["kernel"], r["case"], r.get("dims"), r.get("types")), []).append(r)
    for key in [k for k in tuned if k[4] is None]:  # configurations that did not compile: no types to tell by
        sibling = next((k for k in tuned if k[:4] == key[:4] and k[4] is not None), None)
        if sibling is not None:
            tuned[sibling] += tuned.pop(key)
    rows = collections.OrderedDict()
    for (target, kernel, case, dims, types), rs in tuned.items():
        key = (target, kernel, tuple(sorted({(r["config"], r["status"], r.get("hash")) for r in rs})))
        if key in rows:
            rows[key]["cases"].append(case)
            continue
        ok = [r for r in rs if r["status"] == "ok"]
        spilling = [r for r in ok if r["spill_stores"] or r["spill_loads"]]
        rows[key] = {"target": target, "kernel": kernel, "source": rs[0]["source"], "cases": [case],
                     "dims": dims if dims is not None else _dims([r["config"] for r in rs]), "types": types,
                     "configs": len(rs),
                     "skipped": len(rs) - len(ok), "regs": [min(r["regs"] for r in ok), max(r["regs"] for r in ok)]
                     if ok else None, "shared": max(r["shared"] for r in ok) if ok else None,
                     "spilling": [{"config": r["config"], "spill_stores": r["spill_stores"]} for r in spilling],
                     "spill_free": len(ok) - len(spilling),
                     "first": {k: rs[0].get(k) for k in ("config", "status") + USAGE}}
    binaries = len({(t, r.get("hash")) for t, res in results.items() for r in res["records"]})
    return {"failures": failures, "plugin": list(plugin.values()), "fla": list(rows.values()), "binaries": binaries}


def _cases(names: List[str]) -> str:
    return names[0] + (f" (+{len(names) - 1})" if len(names) > 1 else "")


def _span(values) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def findings(data: Dict) -> List[str]:
    """What the numbers say, in sentences computed from them."""
    out = []
    out.append(f"- {data['binaries']} distinct binaries compiled; failures: "
               + ("; ".join(f"{f['target']} {f['case']}: {f['why']}" for f in data["failures"]) or "none") + ".")
    spills = [r for r in data["plugin"] if r["spill_stores"]]
    regs = [r["regs"] for r in data["plugin"] if r["regs"] is not None]
    out.append(f"- The plugin's kernels: {len(data['plugin'])} binaries, {min(regs)}–{max(regs)} registers, "
               + (f"spills in {len(spills)}: " + "; ".join(f"{r['target']} {r['kernel']} {r['config']}"
                                                           for r in spills) if spills else "no spills") + ".")
    most = collections.OrderedDict()
    for r in data["plugin"]:
        most[r["kernel"]] = max(most.get(r["kernel"], 0), r["regs"] or 0)
    out.append("  The most registers per kernel: " + ", ".join(f"`{k}` {v}" for k, v in most.items()) + ".")
    spilling = [r for r in data["fla"] if r["spilling"]]
    cornered = [r for r in data["fla"] if r["spill_free"] == 0 and r["spilling"]]
    groups = collections.OrderedDict()
    for r in cornered:  # the least any configuration of the launch spills
        groups.setdefault((r["target"], r["kernel"]), []).append(min(s["spill_stores"] for s in r["spilling"]))
    out.append(f"- fla's kernels: {len(data['fla'])} kernel launches; {len(spilling)} have autotune "
               f"configurations that spill, " + ("every one of them beside spill-free configurations that the "
                                                 "autotuner times against it." if not cornered else
                                                 f"and {len(cornered)} have no spill-free configuration (launches, "
                                                 "the least spill stores of their configurations): " +
                                                 "; ".join(f"{t} `{k}` ({len(v)}, {_span(v)} B)"
                                                           for (t, k), v in groups.items()) +
                                                 ". These are fla's own kernels and tile choices, which the plugin "
                                                 "does not set; what the spills cost is not measured here (no "
                                                 "GPU): the benchmark's training rows on a GPU show it."))
    skipped = [r for r in data["fla"] if r["skipped"]]
    out.append(f"- {sum(r['skipped'] for r in skipped)} autotune configurations in {len(skipped)} launches ask for "
               "more shared memory than the target has or do not compile; a GPU's autotuner skips them, and "
               + ("every launch keeps others." if all(r["configs"] > r["skipped"] for r in data["fla"])
                  else "some launches have none left (see the failures)."))
    return out


def markdown(data: Dict, case_names: List[str], seconds: float) -> str:
    lines = ["# Every GPU kernel, compiled for the H100 (sm_90a) and the A100 (sm_80)", "",
             f"Fingerprint `{fingerprint(case_names)}` (triton {version('triton')}, fla-core {version('fla-core')}); "
             f"made by `python -m kvattn_fairseq.kernels.compile_check` (this run: {seconds / 60:.0f} minutes, "
             f"with the binaries of earlier runs cached under `.cache/kernel-compile`; over an hour from an empty "
             f"cache on two cores); `--check` says whether it is current. How it is checked: "
             f"[README.md](README.md).", "",
             HOW, "", "| kind | width / heads | options | where it is used | dtypes |", "|---|---|---|---|---|"]
    lines += [f"| {s.kind} | {s.embed_dim}/{s.heads} | {' '.join(f'{k}={v}' for k, v in s.options) or '–'} | "
              f"{s.used} | {', '.join(dtypes(s))} |" for s in sites()]
    lines += ["", "## What the numbers say", ""] + findings(data)
    lines += ["", "## The plugin's kernels", "",
              "One row per compiled binary; the case is the first that launches it (+ how many others).", "",
              "| target | kernel | case | constexprs, warps, stages, specialised integers | registers | "
              "spill stores (B) | stack (B) | shared (B) | status |", "|---|---|---|---|---|---|---|---|---|"]
    for r in data["plugin"]:
        usage = " | ".join("–" if r[k] is None else f"{r[k]:,}" for k in USAGE)
        lines.append(f"| {r['target']} | `{r['kernel']}` | {_cases(r['cases'])} | {r['config']} | {usage} | "
                     f"{r['status']} |")
    lines += ["", "## fla's kernels", "",
              "One row per kernel and launch, its autotune configurations folded together: how many were compiled, "
              "how many a GPU would skip, the range of registers, the most shared memory among those that fit, how "
              "many do not spill, and how many do with their spill stores (least–most).", "",
              "| target | kernel | case | sizes and flags | configurations | skipped | registers | shared (B) | "
              "spill-free | spilling: how many, spill stores (B) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["fla"]:
        regs = "–" if r["regs"] is None else "–".join(str(x) for x in sorted(set(r["regs"])))
        spilling = f"{len(r['spilling'])}: {_span([s['spill_stores'] for s in r['spilling']])}" \
            if r["spilling"] else "–"
        shared = "–" if r["shared"] is None else f"{r['shared']:,}"
        lines.append(f"| {r['target']} | `{r['kernel']}` | {_cases(r['cases'])} | {r['dims']} | {r['configs']} | "
                     f"{r['skipped']} | {regs} | {shared} | {r['spill_free']} | {spilling} |")
    return "\n".join(lines) + "\n"


def write(results: Dict, case_names: List[str], seconds: float) -> Dict:
    data = summarise(results)
    (ROOT / DATA).parent.mkdir(parents=True, exist_ok=True)
    (ROOT / DATA).write_text(json.dumps(dict(data, fingerprint=fingerprint(case_names), cases=case_names,
                                             seconds=round(seconds)), indent=1) + "\n")
    (ROOT / REPORT).write_text(markdown(data, case_names, seconds))
    return data


def render() -> None:
    """compile.md again from the committed compile.json (after a change to this file's wording)."""
    data = committed()
    (ROOT / REPORT).write_text(markdown(data, data["cases"], data.get("seconds", 0)))


def committed() -> Dict:
    return json.loads((ROOT / DATA).read_text())


def stale() -> Optional[str]:
    """None when the committed report matches the sources, cases and versions; else what differs."""
    if not (ROOT / DATA).exists() or not (ROOT / REPORT).exists():
        return f"{REPORT} or {DATA} is missing: run python -m kvattn_fairseq.kernels.compile_check"
    names = [name for name, _, _ in site_dtypes()]
    data, now = committed(), fingerprint(names)
    if data["fingerprint"] != now:
        added, gone = sorted(set(names) - set(data["cases"])), sorted(set(data["cases"]) - set(names))
        what = f" (cases added: {', '.join(added) or 'none'}; gone: {', '.join(gone) or 'none'})" if added or gone \
            else " (kernel sources or versions changed)"
        return (f"{REPORT} is stale{what}: fingerprint {data['fingerprint']}, now {now}; run python -m "
                f"kvattn_fairseq.kernels.compile_check")
    if f"`{now}`" not in (ROOT / REPORT).read_text():
        return f"{REPORT} does not match {DATA}: run python -m kvattn_fairseq.kernels.compile_check"
    return None
