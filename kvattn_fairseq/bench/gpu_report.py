"""The GPU mode's summary: per precision, each kind against fairseq's transformer and the attention-free floor, and
the GPU targets (informational: timings are never tests)."""
from typing import Dict, List, Optional

from ..util.markdown import table
from .common import VANILLA
from .floor import FLOOR

GOAL_T = 4096  # decoding throughput against vanilla is judged here, at the largest batch
GOAL_TRAIN_T = 8192
SHORT_TRAIN_T = 512
SOFTMAX = "softmax"  # the plugin's softmax: torch's fused attention on a GPU, the one a user would pick today
# decoding tokens/s against vanilla at the largest batch and GOAL_T; other constant-state kinds: the window's
DECODE_GOALS = {"memsizer": 6.0, "linear": 6.0, "window": 4.0, "window_memsizer": 4.0}
TRAIN_GOAL_KINDS = ("memsizer", "linear", "window", "window_memsizer")


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a and b else None


def _train_at(per_t: Dict, goal: int) -> Optional[int]:
    ts = sorted(t for t, r in per_t.items() if "tokens_per_s" in r)
    at_most = [t for t in ts if t <= goal]
    return at_most[-1] if at_most else (ts[0] if ts else None)


def summarise(results: Dict, constant_kinds: List[str]) -> List[Dict]:
    rows = []
    configs = results.get("decode", {}).get("configs", [])
    dtypes = sorted({c["dtype"] for c in configs} | set(results.get("translate", {}).get("by_dtype", {})) |
                    set(results.get("train", {}).get("by_dtype", {})))
    for dt in dtypes:
        mine = [c for c in configs if c["dtype"] == dt]
        big = max(mine, key=lambda c: c["batch"]) if mine else None
        small = min(mine, key=lambda c: c["batch"]) if mine else None
        tr = results.get("translate", {}).get("by_dtype", {}).get(dt, {})
        train = results.get("train", {}).get("by_dtype", {}).get(dt, {})
        for kind in [VANILLA] + results["kinds"] + [FLOOR]:
            row = {"kind": kind, "dtype": dt, "constant_state": kind in constant_kinds}
            if big and kind in big["models"]:
                steps = big["models"][kind]["step_ms"]
                ts = sorted(steps)
                if ts:
                    t1, t2 = ts[0], ts[-1]
                    goal = GOAL_T if GOAL_T in steps else t2
                    row.update(batch=big["batch"], t_first=t1, t_last=t2, t_goal=goal,
                               step_ms_first=steps[t1], step_ms_last=steps[t2], growth=steps[t2] / steps[t1],
                               speed_vs_vanilla=_ratio(big["models"][kind]["tokens_per_s"].get(goal),
                                                       big["models"].get(VANILLA, {}).get("tokens_per_s", {})
                                                       .get(goal)),
                               state_first=big["models"][kind]["state_bytes_per_hypothesis"].get(t1),
                               state_last=big["models"][kind]["state_bytes_per_hypothesis"].get(t2))
                growth, over_floor, over_floor_16 = [], [], []
                for c in mine:
                    s, f = c["models"].get(kind, {}).get("step_ms", {}), c["models"].get(FLOOR, {}).get("step_ms", {})
                    if s:
                        growth.append(s[max(s)] / s[min(s)])
                    over_floor += [s[t] / f[t] for t in s if f.get(t)]
                    over_floor_16 += [s[t] / f[t] for t in s if f.get(t) and c["batch"] >= 16]
                row["growth_worst"] = max(growth) if growth else None
                row["floor_worst"] = max(over_floor) if over_floor else None
                row["floor_worst_b16"] = max(over_floor_16) if over_floor_16 else None
            if small and kind in small["models"] and small["models"][kind]["step_ms"]:
                s = small["models"][kind]["step_ms"]
                v = small["models"].get(VANILLA, {}).get("step_ms", {})
                row.update(small_batch=small["batch"], small_step_ms=s[min(s)])
                worst = [s[t] / v[t] for t in s if v.get(t)]
                row["small_vs_vanilla_worst"] = max(worst) if worst else None
            if kind in tr and "tokens_per_s" in tr[kind] and "tokens_per_s" in tr.get(VANILLA, {}):
                row["translate_vs_vanilla"] = tr[kind]["tokens_per_s"] / tr[VANILLA]["tokens_per_s"]
            if kind in train and VANILLA in train:
                t = _train_at(train[kind], GOAL_TRAIN_T)
                mine_t, base_t = train[kind].get(t, {}), train[VANILLA].get(t, {})
                row["train_T"] = t
                row["train_speed"] = _ratio(mine_t.get("tokens_per_s"), base_t.get("tokens_per_s"))
                row["train_memory"] = _ratio(mine_t.get("peak_bytes"), base_t.get("peak_bytes"))
                row["train_errors"] = {t: r["error"] for t, r in train[kind].items() if "error" in r}
                short = train[kind].get(SHORT_TRAIN_T, {}), train[VANILLA].get(SHORT_TRAIN_T, {})
                row["train_speed_short"] = _ratio(short[0].get("tokens_per_s"), short[1].get("tokens_per_s"))
                if SOFTMAX in train and kind != SOFTMAX:
                    row["train_vs_softmax"] = _ratio(mine_t.get("tokens_per_s"),
                                                     train[SOFTMAX].get(t, {}).get("tokens_per_s"))
            rows.append(row)
    return rows


def _f(v, spec=".2f", suffix="x") -> str:
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def markdown(rows: List[Dict], results: Dict) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['device']} ({m.get('gpu') or m['processor']}), torch {m['torch']}, CUDA "
             f"{m.get('cuda') or '-'}, Python {m['python']}; mode {results['mode']}; {results.get('seconds', 0):.0f}s. "
             f"Speed ratios are kind / vanilla fairseq in tokens/s (higher is faster); memory ratios kind / vanilla; "
             f"'over floor' is the kind's step time / the attention-free model's (1.0 is the limit).", ""]
    for dt in sorted({r["dtype"] for r in rows}):
        mine = [r for r in rows if r["dtype"] == dt]
        r0 = next((r for r in mine if "t_first" in r), {})
        b, t1, t2, tg = r0.get("batch", "?"), r0.get("t_first", "?"), r0.get("t_last", "?"), r0.get("t_goal", "?")
        sb = next((r["small_batch"] for r in mine if "small_batch" in r), "?")
        tt = next((r["train_T"] for r in mine if r.get("train_T")), "?")
        header = ["kind", f"step ms, batch {sb}, t={t1}", f"step ms, batch {b}, t={t1} -> {t2}",
                  "growth (worst batch)", f"tokens/s vs vanilla, batch {b}, t={tg}", "over floor (worst batch, t)",
                  f"state bytes per hypothesis t={t1} -> {t2}", "translation beam 4 vs vanilla",
                  f"training T={tt} speed / peak memory vs vanilla"]
        cells = []
        for r in mine:
            state = (f"{r['state_first']:,.0f} -> {r['state_last']:,.0f}" if r.get("state_first") is not None
                     and r.get("state_last") is not None else "n/a")
            steps = (f"{r['step_ms_first']:.2f} -> {r['step_ms_last']:.2f}" if "step_ms_first" in r else "n/a")
            train = f"{_f(r.get('train_speed'))} / {_f(r.get('train_memory'))}"
            if r.get("train_errors"):
                train += " (" + "; ".join(f"T={t}: {e}" for t, e in sorted(r["train_errors"].items())) + ")"
            cells.append([f"{r['kind']}{' (constant state)' if r['constant_state'] else ''}",
                          _f(r.get("small_step_ms"), ".2f", ""), steps, _f(r.get("growth_worst")),
                          _f(r.get("speed_vs_vanilla")), _f(r.get("floor_worst")), state,
                          _f(r.get("translate_vs_vanilla")), train])
        lines += [f"**{dt}**", "", *table(header, cells), ""]
    skipped = [p for p in ("decode", "translate", "train") if results.get(p, {}).get("skipped")]
    if skipped:
        lines.append(f"Not finished within the time budget: {', '.join(skipped)} (the settings measured are above).")
    return "\n".join(lines) + "\n"


def targets(rows: List[Dict], results: Dict) -> List[str]:
    """The GPU targets, per precision: decoding throughput and flatness, closeness to the floor, batch-1 latency,
    training speed and memory, beam-4 translation."""
    out = []
    for r in rows:
        if not r["constant_state"]:
            continue
        tag = f"{r['kind']} ({r['dtype']})"
        if r.get("speed_vs_vanilla") is not None:
            goal = DECODE_GOALS.get(r["kind"], 4.0)
            out.append(_check(f"{tag}: >= {goal:g}x vanilla tokens/s at batch {r['batch']}, t={r['t_goal']}",
                              r["speed_vs_vanilla"] >= goal, _f(r["speed_vs_vanilla"])))
        if r.get("growth_worst") is not None:
            out.append(_check(f"{tag}: decode step flat from t={r['t_first']} to t={r['t_last']} (<= 1.15x), worst "
                              f"batch", r["growth_worst"] <= 1.15, _f(r["growth_worst"])))
        if r.get("floor_worst_b16") is not None:
            out.append(_check(f"{tag}: decode step within 1.5x of the attention-free floor at batch >= 16, every t",
                              r["floor_worst_b16"] <= 1.5, _f(r["floor_worst_b16"])))
        if r.get("state_first") is not None and r.get("state_last") is not None:
            out.append(_check(f"{tag}: state per hypothesis constant", r["state_first"] == r["state_last"],
                              f"{r['state_first']:,.0f} -> {r['state_last']:,.0f} bytes"))
        if r.get("small_vs_vanilla_worst") is not None:
            out.append(_check(f"{tag}: batch-{r['small_batch']} step <= vanilla's at every t",
                              r["small_vs_vanilla_worst"] <= 1.0, f"worst {_f(r['small_vs_vanilla_worst'])} of "
                                                                  f"vanilla's time"))
        if r["kind"] in TRAIN_GOAL_KINDS and r.get("train_speed") is not None and r.get("train_T", 0) >= GOAL_TRAIN_T:
            ok = r["train_speed"] >= 2.0 and (r.get("train_memory") or 0) <= 1.0
            out.append(_check(f"{tag}: training at T={r['train_T']} >= 2x vanilla tokens/s at <= its peak memory",
                              ok, f"{_f(r['train_speed'])} speed, {_f(r.get('train_memory'))} memory"))
            if r.get("train_vs_softmax") is not None:
                out.append(_check(f"{tag}: training at T={r['train_T']} >= 1.3x the fused softmax's tokens/s",
                                  r["train_vs_softmax"] >= 1.3, _f(r["train_vs_softmax"])))
        if r["kind"] in TRAIN_GOAL_KINDS and r.get("train_speed_short") is not None:
            out.append(_check(f"{tag}: training at T={SHORT_TRAIN_T} >= 0.9x vanilla tokens/s",
                              r["train_speed_short"] >= 0.9, _f(r["train_speed_short"])))
        if r.get("translate_vs_vanilla") is not None:
            out.append(_check(f"{tag}: beam-4 translation >= 1.2x vanilla", r["translate_vs_vanilla"] >= 1.2,
                              _f(r["translate_vs_vanilla"])))
    return out


def _check(what: str, ok: bool, value: str) -> str:
    return f"{'MET ' if ok else 'MISS'}  {what}: {value}"
