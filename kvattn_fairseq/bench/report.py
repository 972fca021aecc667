"""Ratios against the vanilla baseline and the attention-free floor, a Markdown summary, the CPU targets, and PNG
plots (shared with the GPU mode)."""
import os
from typing import Dict, List, Optional

from ..util.io import save_figure
from ..util.markdown import table
from .common import VANILLA
from .floor import FLOOR


def _ratio(base: Optional[float], value: Optional[float]) -> Optional[float]:
    if not base or not value:
        return None
    return base / value


def summarise(results: Dict, constant_kinds: List[str]) -> List[Dict]:
    rows = []
    dec = results.get("decode", {})
    main = dec.get("configs", [{}])[0] if dec.get("configs") else {}
    tr = results.get("translate", {}).get("models", {})
    train = results.get("train", {}).get("models", {})
    for kind in results["kinds"] + [FLOOR]:
        row = {"kind": kind, "constant_state": kind in constant_kinds}
        if main:
            steps = main["models"].get(kind, {}).get("step_ms", {})
            base = main["models"].get(VANILLA, {}).get("step_ms", {})
            floor = main["models"].get(FLOOR, {}).get("step_ms", {})
            ts = sorted(int(t) for t in steps)
            if ts:
                first, last = ts[0], ts[-1]
                row["decode_t_first"], row["decode_t_last"] = first, last
                row["decode_speedup_first"] = _ratio(base.get(first), steps.get(first))
                row["decode_speedup_last"] = _ratio(base.get(last), steps.get(last))
                row["over_floor_last"] = _ratio(steps.get(last), floor.get(last))
                row["decode_growth"] = steps[last] / steps[first]
                row["state_bytes_last"] = main["models"][kind]["state_bytes_per_hypothesis"].get(last)
                row["state_bytes_first"] = main["models"][kind]["state_bytes_per_hypothesis"].get(first)
                # a window's state fills up over its first W tokens, then stays: judge constancy past the middle
                row["decode_t_mid"] = ts[len(ts) // 2]
                row["state_bytes_mid"] = main["models"][kind]["state_bytes_per_hypothesis"].get(ts[len(ts) // 2])
        if kind in tr and VANILLA in tr:
            row["translate_tokens_ratio"] = tr[kind]["tokens_per_s"] / tr[VANILLA]["tokens_per_s"]
        if kind in train and VANILLA in train:
            ts = sorted(int(t) for t in train[kind])
            for label, t in (("first", ts[0]), ("last", ts[-1])):
                mine, base = train[kind].get(t, {}), train[VANILLA].get(t, {})
                row[f"train_T_{label}"] = t
                if "tokens_per_s" in mine and "tokens_per_s" in base:
                    row[f"train_speed_{label}"] = mine["tokens_per_s"] / base["tokens_per_s"]
                if mine.get("peak_bytes") and base.get("peak_bytes"):
                    row[f"train_memory_{label}"] = mine["peak_bytes"] / base["peak_bytes"]
        rows.append(row)
    return rows


def _fmt(v, spec=".2f", suffix="x"):
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def markdown(rows: List[Dict], results: Dict) -> str:
    m = results["machine"]
    clock = "CPU time of the benchmarking thread" if results.get("clock") == "cpu" else "wall time"
    lines = [f"Machine: {m['device']} ({m.get('gpu') or m['processor']}, {m['torch_threads']} torch threads), torch "
             f"{m['torch']}, Python {m['python']}; mode {results['mode']}; timed in {clock}. Ratios are vanilla "
             f"fairseq / kind for time (higher is faster) and kind / vanilla for memory (lower is smaller); \"over "
             f"floor\" is the kind's step time / the attention-free model's.", ""]
    r0 = next((r for r in rows if "decode_t_first" in r), {})
    t1, t2 = r0.get("decode_t_first", "?"), r0.get("decode_t_last", "?")
    tr0 = next((r for r in rows if "train_T_first" in r), {})
    T1, T2 = tr0.get("train_T_first", "?"), tr0.get("train_T_last", "?")
    header = ["kind", f"decode speed t={t1}", f"decode speed t={t2}", f"step time t={t2} / t={t1}",
              f"step time over floor t={t2}", f"state bytes per hypothesis t={t1} -> t={t2}", "translation tokens/s",
              f"train speed T={T1}", f"train speed T={T2}", f"train memory T={T2}"]
    cells = []
    for r in rows:
        sb = (f"{r['state_bytes_first']:,.0f} -> {r['state_bytes_last']:,.0f}"
              if r.get("state_bytes_last") is not None and r.get("state_bytes_first") is not None else "n/a")
        cells.append([f"{r['kind']}{' (constant state)' if r['constant_state'] else ''}",
                      _fmt(r.get("decode_speedup_first")), _fmt(r.get("decode_speedup_last")),
                      _fmt(r.get("decode_growth")), _fmt(r.get("over_floor_last")), sb,
                      _fmt(r.get("translate_tokens_ratio")), _fmt(r.get("train_speed_first")),
                      _fmt(r.get("train_speed_last")), _fmt(r.get("train_memory_last"))])
    return "\n".join(lines + table(header, cells)) + "\n"


def plots(results: Dict, out_dir: str) -> List[str]:
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name):
        path = os.path.join(out_dir, name)
        fig.tight_layout()
        save_figure(fig, path, dpi=110)
        plt.close(fig)
        written.append(path)

    for cfg in results.get("decode", {}).get("configs", []):
        tag = f"{cfg['dtype']}_" if "dtype" in cfg else ""
        tag += f"batch{cfg['batch']}_beam{cfg['beam']}"
        for key, ylabel, fname in (("step_ms", "ms per decoding step", f"decode_step_ms_{tag}.png"),
                                   ("state_bytes_per_hypothesis", "incremental state bytes per hypothesis",
                                    f"decode_state_bytes_{tag}.png")):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for kind, res in cfg["models"].items():
                pts = sorted((int(t), v) for t, v in res.get(key, {}).items() if v)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=kind, linewidth=2.5 if kind == VANILLA else 1.2)
            ax.set_xscale("log", base=2)
            if key != "step_ms":
                ax.set_yscale("log")
            ax.set_xlabel("generated length t")
            ax.set_ylabel(ylabel)
            ax.set_title(f"LM decoding, batch {cfg['batch']}, beam {cfg['beam']}" +
                         (f", {cfg['dtype']}" if "dtype" in cfg else ""))
            ax.legend(fontsize=7, ncol=2)
            save(fig, fname)
    tr = results.get("translate", {}).get("models", {})
    if tr:
        fig, ax = plt.subplots(figsize=(7, 4))
        names = list(tr)
        ax.bar(names, [tr[n]["tokens_per_s"] for n in names])
        ax.set_ylabel("tokens/s")
        ax.set_title(f"translation, beam {results['translate']['beam']}, ~{results['translate']['src_len']} tokens")
        ax.tick_params(axis="x", rotation=45)
        save(fig, "translate_tokens_per_s.png")
    train = results.get("train", {}).get("models", {})
    if train:
        for key, ylabel, fname in (("tokens_per_s", "training tokens/s (fwd+bwd)", "train_tokens_per_s.png"),
                                   ("peak_bytes", "peak memory of one step (bytes)", "train_peak_memory.png")):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for kind, per_t in train.items():
                pts = sorted((int(t), v[key]) for t, v in per_t.items() if key in v)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=kind, linewidth=2.5 if kind == VANILLA else 1.2)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length T")
            ax.set_ylabel(ylabel)
            ax.set_title("causal LM layer stack")
            ax.legend(fontsize=7, ncol=2)
            save(fig, fname)
    return written


def targets(rows: List[Dict]) -> List[str]:
    """The benchmark's targets for constant-state kinds (docs/benchmark.md, GPU kernels), checked where this run
    measured what they name (informational: timings are never tests)."""
    out = []
    for r in rows:
        if r["constant_state"] and "decode_growth" in r:
            out.append(_check(f"{r['kind']}: step time t={r['decode_t_last']} within 1.15x of t={r['decode_t_first']}",
                              r["decode_growth"] <= 1.15, f"{r['decode_growth']:.2f}x"))
            out.append(_check(f"{r['kind']}: >= 1.2x vanilla at t={r['decode_t_first']}",
                              (r["decode_speedup_first"] or 0) >= 1.2, _fmt(r["decode_speedup_first"])))
            if r["decode_t_last"] >= 2048:
                out.append(_check(f"{r['kind']}: >= 4x vanilla at t={r['decode_t_last']}",
                                  (r["decode_speedup_last"] or 0) >= 4, _fmt(r["decode_speedup_last"])))
            if r.get("state_bytes_mid") is not None and r["decode_t_mid"] < r["decode_t_last"]:
                out.append(_check(f"{r['kind']}: state bytes independent of t from t={r['decode_t_mid']} to "
                                  f"t={r['decode_t_last']}", r["state_bytes_mid"] == r["state_bytes_last"],
                                  f"{r['state_bytes_mid']:,.0f} -> {r['state_bytes_last']:,.0f}"))
        if r["kind"] == "memsizer":
            if "translate_tokens_ratio" in r:
                out.append(_check("memsizer: translation >= 1.2x vanilla tokens/s at beam 4",
                                  r["translate_tokens_ratio"] >= 1.2, _fmt(r["translate_tokens_ratio"])))
            if r.get("train_speed_first") is not None:
                out.append(_check(f"memsizer: training at least as fast as vanilla at T={r['train_T_first']}",
                                  r["train_speed_first"] >= 1.0, _fmt(r["train_speed_first"])))
            if r.get("train_speed_last") is not None and r["train_T_last"] >= 4096:
                out.append(_check(f"memsizer: training >= 2x vanilla at T={r['train_T_last']}",
                                  r["train_speed_last"] >= 2.0, _fmt(r["train_speed_last"])))
    return out


def _check(what: str, ok: bool, value: str) -> str:
    return f"{'MET ' if ok else 'MISS'}  {what}: {value}"
