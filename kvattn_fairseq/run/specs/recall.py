"""Recall beyond the window: multi-query associative recall (kvattn_fairseq/data/recall.py) with the key-value pairs
further back than the attention window, every kind trained the same way, scored by the accuracy of the recalled
values (beyond the window, and overall) against the decoding state each hypothesis carries at the task's length.

    python -m kvattn_fairseq recall --out runs/recall                 # docs/recall/table.md (hours on 2 CPU cores)
    python -m kvattn_fairseq recall --out /tmp/r --tiny               # the whole chain on a tiny model

The data of every (pairs, length) setting is generated once (deterministic by seed) and binarized with
fairseq-preprocess; as in Zoology, the settings are trained together (one mixed training set) and tested apart.
Every configuration (a kind, a kind with flags such as `delta+conv4`, or a per-layer plan such as
`gated_delta,softmax`) is trained with fairseq-train (task associative_recall, criterion recall_accuracy:
cross-entropy on the answers only) once per training seed (--seeds; every seed for the --seeded rows that decide the
target, the first for the others, all on the same data), its last checkpoint is scored on each setting's test set
(evaluate/recall.py) and its state measured after decoding `length` tokens through fairseq's incremental decoder
(evaluate/state.py).  The table gives the mean over seeds, with the lowest and highest seed beside it.  The steps run
on the experiment spine (run/spine.py): OUT/results.json, OUT/table.md and OUT/recall.png at the end; a rerun skips
what is done and refuses, in one line, anything recorded with other settings unless --force.
"""
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from ...data import recall as recall_data
from ...util import proc
from ...util.cli import ArgumentParser, positive_int, run_main
from ...util.errors import OneLineError
from ...util.io import save_figure, write_atomic
from ..spine import Context, Runner, Step, in_process, work_dir
from ..steps import train_step
from ..train import Command

PROG = "python -m kvattn_fairseq recall"
WINDOW = 8
LAYERS = 2
ARCH = "kvattn_lm"
SIZE = ["--decoder-layers", str(LAYERS), "--decoder-embed-dim", "64", "--decoder-ffn-embed-dim", "128",
        "--decoder-attention-heads", "4", "--dropout", "0.0"]
TINY_SIZE = ["--decoder-layers", str(LAYERS), "--decoder-embed-dim", "16", "--decoder-ffn-embed-dim", "32",
             "--decoder-attention-heads", "2"]
MODEL, TINY_MODEL = ["--arch", ARCH, *SIZE], ["--arch", ARCH, *TINY_SIZE]
# With the real-text recipe (inverse-sqrt decay, beta2 0.98, clipping, tied embeddings) softmax stayed on the plateau
# of guessing among the values present for 2000 updates (8 pairs, 64 tokens); with this one it left it after ~1000.
# The pieces are also the recovery experiment's (run/specs/recovery.py), which converts a softmax model trained so.
TASK = ["--task", "associative_recall"]
CRITERION = ["--criterion", "recall_accuracy"]
BATCH = ["--batch-size", "32", "--num-workers", "0"]
ADAM, SCHEDULE = ["--adam-betas", "(0.9, 0.999)"], ["--lr-scheduler", "fixed"]
OPTIMIZER = ["--optimizer", "adam", *ADAM, "--lr", "1e-3", *SCHEDULE, "--warmup-updates", "50"]
LOGS = ["--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "50"]
TRAIN = [*TASK, *CRITERION, *BATCH[:2], *OPTIMIZER, *BATCH[2:], *LOGS, "--cpu"]
TINY_SIZES = dict(train=200, valid=20, test=40)  # sequences per setting
MEMSIZER = ["--memsizer-self-slots", "32", "--memsizer-q-init-scale", "32", "--memsizer-kv-init-scale", "1"]
# name -> its flags besides the plan.  The plan (--decoder-attention-type) is the name up to a "+": a kind, or one
# kind per layer; "+convK" rows add a short convolution of kernel K to a kind that has none by default.
CONFIGS: Dict[str, List[str]] = {
    "softmax": [],
    "window": [],
    "memsizer": MEMSIZER,
    "linear": [],
    "window_memsizer": MEMSIZER,
    "window_linear": [],
    "delta": [],
    "window_delta": [],
    "linear+conv4": ["--short-conv", "4"],
    "delta+conv4": ["--short-conv", "4"],
    "gated_delta": [],
    "window_gated_delta": [],
    "gated_delta,softmax": [],
}
SEEDED = ("softmax", "delta+conv4", "gated_delta", "window_gated_delta")  # the rows that decide the target
TARGET = 0.95  # of the first queries beyond the window, in every setting


def plan(name: str) -> str:
    return name.split("+", 1)[0]


def layer_kinds(name: str) -> List[str]:
    return [part.split("*", 1)[0] for part in plan(name).split(",")]


def kind_flags(name: str, window: int) -> List[str]:
    flags = ["--decoder-attention-type", plan(name)] + CONFIGS[name]
    return flags + (["--attention-window", str(window)] if any(k.startswith("window") for k in layer_kinds(name))
                    else [])


def constant_state(name: str) -> bool:
    """Whether every layer of the configuration keeps a decoding state of constant size."""
    from ...modules.registry import ATTENTION_KINDS

    return all(ATTENTION_KINDS[k].constant_state for k in layer_kinds(name))


def run_name(name: str, seed: int) -> str:
    return f"{name}-s{seed}"


def data_spec(a, pairs: int, length: int) -> recall_data.RecallData:
    sizes = TINY_SIZES if a.tiny else dict(train=a.train, valid=100, test=a.test)
    return setting(pairs, length, a.window, a.seed, sizes)


def setting(pairs: int, length: int, window: int, seed: int, sizes: Dict[str, int]) -> recall_data.RecallData:
    """One (pairs, length) setting for a stack of LAYERS layers with windows of `window`."""
    # a stack of L windows sees L (W - 1) positions back: the gap keeps every pair beyond that
    return recall_data.RecallData(pairs=pairs, length=length, window=window, min_gap=LAYERS * (window - 1), seed=seed,
                                  **sizes)


def train_flags(a, kind: str, seed: int, length: int, save: str) -> List[str]:
    return (TINY_MODEL if a.tiny else MODEL) + kind_flags(kind, a.window) + TRAIN + tokens_flags(length) + \
        run_flags(a.updates, seed) + ["--save-dir", save]


def tokens_flags(length: int) -> List[str]:
    """A sample is one sequence of the longest setting, and the end of line before it."""
    return ["--tokens-per-sample", str(length + 1)]


def run_flags(updates: int, seed: int) -> List[str]:
    return ["--max-update", str(updates), "--seed", str(seed), "--validate-interval-updates",
            str(max(1, updates // 10)), "--save-interval-updates", str(max(1, updates // 4)), "--keep-interval-updates",
            "1"]


def steps(a, runs: Sequence[Tuple[str, int]], specs: Sequence[recall_data.RecallData]) -> List[Step]:
    """The data (every setting, trained together), then per configuration and training seed its training and its
    scores on each setting, then the table, the plot and results.json from every run's scores."""
    longest = max(s.length for s in specs)
    work = work_dir(a.out, "--out")
    out = [data_step("data", "data", specs)]
    tool = proc.fairseq_tool("fairseq-train")
    for kind, seed in runs:
        name = run_name(kind, seed)
        save = os.path.join("runs", name)
        argv = [*tool, os.path.join(work, "data", "data-bin"), "--user-dir", _user_dir(),
                *train_flags(a, kind, seed, longest, os.path.join(work, save))]
        settings = {"kind": kind, "seed": seed, "tiny": a.tiny, "flags": train_flags(a, kind, seed, longest, "SAVE")}
        out.append(train_step(f"train/{name}", save, Command(argv, [], argv[len(tool):]), settings, needs=("data",)))
        out.append(Step(f"score/{name}", os.path.join("scores", f"{name}.json"),
                        {"kind": kind, "seed": seed, "window": a.window},
                        in_process(_scorer(a, kind, seed, specs), f"score {name}"), needs=("data", f"train/{name}"),
                        command="(in process: evaluate/recall.py, evaluate/state.py)"))

    def draw(ctx: Context) -> None:
        _write_summary(a, runs, specs, ctx.work)

    out.append(Step("table", "table.md", {}, in_process(draw, "table"),
                    needs=tuple(f"score/{run_name(k, s)}" for k, s in runs), always=True,
                    also=("results.json", "recall.png")))
    return out


def data_step(name: str, out: str, specs: Sequence[recall_data.RecallData]) -> Step:
    """OUT: every setting's sequences (trained together, tested apart), binarized (data/recall.py)."""
    def make_data(ctx: Context) -> None:
        recall_data.generate(ctx.out, specs)

    return Step(name, out, recall_data.settings(specs), in_process(make_data, name),
                command="(generated in process: kvattn_fairseq/data/recall.py)")


def score_settings(checkpoint: str, data: str, specs: Sequence[recall_data.RecallData]) -> List[Dict]:
    """The checkpoint's scores on each setting's test set (evaluate/recall.py), with the setting's pairs and length."""
    from ...evaluate import recall as evaluate

    return [{"pairs": spec.pairs, "length": spec.length, **evaluate.evaluate(checkpoint, data, recall_data.name(spec))}
            for spec in specs]


def _user_dir() -> str:
    from ...util.paths import USER_DIR

    return USER_DIR


def _scorer(a, kind: str, seed: int, specs: Sequence[recall_data.RecallData]):
    def score(ctx: Context) -> None:
        from ...evaluate.state import state_bytes

        import torch

        torch.set_num_threads(a.threads)
        checkpoint = os.path.join(ctx.inputs[f"train/{run_name(kind, seed)}"], "checkpoint_last.pt")
        rows, states = [], {}
        for spec, scores in zip(specs, score_settings(checkpoint, ctx.inputs["data"], specs)):
            if spec.length not in states:
                states[spec.length] = state_bytes(checkpoint, spec.length)
            rows.append({"kind": kind, "seed": seed, "pairs": spec.pairs, "length": spec.length, "window": a.window,
                         "updates": a.updates, "flags": kind_flags(kind, a.window),
                         "state_bytes": states[spec.length], **scores})
            ctx.say(f"{kind} (seed {seed}), {spec.pairs} pairs, {spec.length} tokens: beyond the window "
                    f"{_pct(rows[-1]['beyond']['accuracy'])}, overall {_pct(rows[-1]['accuracy'])}, state "
                    f"{states[spec.length]:,} B")
        write_atomic(ctx.out, json.dumps(rows, indent=1) + "\n")

    return score


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


# --- the table and the plot --------------------------------------------------------------------------------------
def no_recall(pairs: int, chance: float) -> float:
    """The accuracy beyond the window reachable without recalling anything: knowing which values occur, not which
    key they go with, and ruling out those already answered (H_N / N for N pairs), or chance if that is higher."""
    return max(chance, sum(1 / i for i in range(1, pairs + 1)) / pairs)


def groups(rows: Sequence[Dict]) -> List[Dict]:
    """Rows of one (pairs, length, kind) over their seeds, in the order rows first name them: the mean accuracies,
    with the lowest and highest seed's beyond the window."""
    out: Dict[Tuple, Dict] = {}
    for r in rows:
        key = (r["pairs"], r["length"], r["kind"])
        g = out.setdefault(key, {k: r[k] for k in ("kind", "pairs", "length", "window", "chance", "state_bytes")})
        g.setdefault("runs", []).append(r)
        g["state_bytes"] = max(g["state_bytes"], r["state_bytes"])
    for g in out.values():
        def mean(get) -> Optional[float]:
            values = [get(r) for r in g["runs"] if get(r) is not None]
            return sum(values) / len(values) if values else None
        beyond = [r["beyond"]["accuracy"] for r in g["runs"]]
        g.update(seeds=[r.get("seed", 1) for r in g["runs"]], beyond=mean(lambda r: r["beyond"]["accuracy"]),
                 within=mean(lambda r: r["within"]["accuracy"]), accuracy=mean(lambda r: r["accuracy"]),
                 lowest=min(beyond), highest=max(beyond))
    return list(out.values())


def target(group: Dict, base: Optional[Dict], state_ok: Optional[bool]) -> str:
    """>= 95% of the first queries beyond the window (the mean over seeds), for a configuration whose every layer
    keeps a constant state, at most a tenth of softmax's state at the longest length (`state_ok`).  It needs a
    softmax that recalls, trained the same way: otherwise the budget is too small to judge anything."""
    if base is None or group["kind"] == "softmax" or not constant_state(group["kind"]):
        return "–"
    if base["beyond"] <= no_recall(base["pairs"], base["chance"]):
        return "n/a: softmax does not recall"
    ok = group["beyond"] >= TARGET and group["beyond"] > no_recall(group["pairs"], group["chance"]) and state_ok
    return "**met**" if ok else "missed"


def state_verdicts(gs: Sequence[Dict]) -> Dict[str, Optional[bool]]:
    """Per configuration: its state at the longest length at most a tenth of softmax's there (None: no softmax)."""
    longest = max(g["length"] for g in gs)
    at = {g["kind"]: g["state_bytes"] for g in gs if g["length"] == longest}
    base = at.get("softmax")
    return {kind: None if base is None else state <= base / 10 for kind, state in at.items()}


def _accuracy(g: Dict) -> str:
    if len(g["runs"]) == 1:
        return _pct(g["beyond"])
    return f"{_pct(g['beyond'])} ({_pct(g['lowest'])}–{_pct(g['highest'])})"


def table(rows: Sequence[Dict]) -> str:
    gs = groups(rows)
    states = state_verdicts(gs)
    lines = ["| pairs | length | attention | seeds | accuracy beyond W (lowest–highest seed) | within W | overall | "
             "state per hypothesis @ length | vs softmax | target |", "|---|---|---|---|---|---|---|---|---|---|"]
    for g in gs:
        base = next((b for b in gs if b["kind"] == "softmax" and (b["pairs"], b["length"]) ==
                     (g["pairs"], g["length"])), None)
        ratio = f"{g['state_bytes'] / base['state_bytes']:.3f}×" if base else "–"
        lines.append(f"| {g['pairs']} | {g['length']} | {g['kind']} | {len(g['runs'])} | {_accuracy(g)} | "
                     f"{_pct(g['within'])} | {_pct(g['accuracy'])} | {g['state_bytes']:,} B | {ratio} | "
                     f"{target(g, base, states.get(g['kind']))} |")
    return "\n".join(lines) + "\n\n" + verdict(gs, states)


def verdict(gs: Sequence[Dict], states: Dict[str, Optional[bool]]) -> str:
    """One line: which constant-state configurations meet the target in every setting."""
    settings = sorted({(g["pairs"], g["length"]) for g in gs})
    longest = max(g["length"] for g in gs)
    met, missed = [], []
    for kind in dict.fromkeys(g["kind"] for g in gs):
        mine = [g for g in gs if g["kind"] == kind]
        if kind == "softmax" or not constant_state(kind):
            continue
        results = []
        for g in mine:
            base = next((b for b in gs if b["kind"] == "softmax" and (b["pairs"], b["length"]) ==
                         (g["pairs"], g["length"])), None)
            results.append(target(g, base, states.get(kind)))
        worst = min(g["lowest"] for g in mine)
        what = f"{kind} ({_pct(min(g['beyond'] for g in mine))}–{_pct(max(g['beyond'] for g in mine))}" \
               f"{'' if all(len(g['runs']) == 1 for g in mine) else f', lowest seed {_pct(worst)}'})"
        (met if len(mine) == len(settings) and all(r == "**met**" for r in results) else missed).append(what)
    return (f"Target: at least {100 * TARGET:.0f}% of the first queries beyond the window (mean over seeds) in every "
            f"setting, with at most a tenth of softmax's state at {longest} tokens, and no softmax layer. "
            f"Met by: {', '.join(met) or 'none'}. Missed by: {', '.join(missed) or 'none'}.")


def plot(rows: Sequence[Dict], path: str) -> None:
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    gs = groups(rows)
    settings = sorted({(g["pairs"], g["length"]) for g in gs})
    kinds = list(dict.fromkeys(g["kind"] for g in gs))
    colours = {k: plt.get_cmap("tab20")(i % 20) for i, k in enumerate(kinds)}
    longest = max(g["length"] for g in gs)
    base_state = next((g["state_bytes"] for g in gs if g["kind"] == "softmax" and g["length"] == longest), None)
    from matplotlib.ticker import NullFormatter

    cols = min(2, len(settings))
    nrows = (len(settings) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5.6 * cols, 3.8 * nrows + 1.2), squeeze=False, sharey=True)
    flat = axes.flatten()
    for ax in flat[len(settings):]:
        ax.set_visible(False)
    for ax, (pairs, length) in zip(flat, settings):
        here = [g for g in gs if (g["pairs"], g["length"]) == (pairs, length)]
        for g in here:  # the mean over seeds, the bar from the lowest to the highest seed
            y = 100 * g["beyond"]
            ax.errorbar(g["state_bytes"], y, yerr=[[y - 100 * g["lowest"]], [100 * g["highest"] - y]],
                        color=colours[g["kind"]], label=g["kind"], fmt="o" if constant_state(g["kind"]) else "s",
                        ms=6, capsize=3, zorder=3, mfc="none" if not constant_state(g["kind"]) else None)
        if base_state:
            ax.fill_between([min(g["state_bytes"] for g in here) / 2, base_state / 10], 100 * TARGET, 102,
                            color="green", alpha=0.08, label="target")
        ax.axhline(100 * here[0]["chance"], color="grey", ls="--", lw=1, label="chance")
        guess = 100 * no_recall(pairs, 0.0)
        ax.axhline(guess, color="grey", ls=":", lw=1, label="values present, no recall")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{pairs} pairs, {length} tokens")
        ax.set_xlabel("decoding state per hypothesis (bytes)")
        ax.grid(True, alpha=0.3)
    for row in axes:
        row[0].set_ylabel("accuracy beyond the window (%)")
    handles, labels = flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)
    fig.tight_layout(rect=(0, 1.3 / (3.8 * nrows + 1.2), 1, 1))
    save_figure(fig, path, dpi=110)
    plt.close(fig)


# --- the command -------------------------------------------------------------------------------------------------
def _ints(flag: str):
    def parse(text: str) -> List[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or any(v < 1 for v in values):
            raise OneLineError(f"{flag}: expected comma-separated positive integers, got {text!r}")
        return values

    return parse


def main(argv=None) -> int:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for the data, runs, results.json, table.md, recall.png")
    p.add_argument("--kinds", default=";".join(CONFIGS),
                   help=f"configurations, separated by ',' (or by ';' once one is a per-layer plan), of: "
                        f"{'; '.join(CONFIGS)}")
    p.add_argument("--pairs", default="4,8", help="numbers of key-value pairs per sequence (default 4,8)")
    p.add_argument("--lengths", default="64,256", help="sequence lengths in tokens (default 64,256)")
    p.add_argument("--window", type=positive_int, default=WINDOW, help=f"the window W (default {WINDOW})")
    p.add_argument("--updates", type=positive_int, default=2500, help="training updates per run (default 2500)")
    p.add_argument("--train", type=positive_int, default=5000, help="training sequences per setting")
    p.add_argument("--test", type=positive_int, default=1000, help="test sequences per setting")
    p.add_argument("--seed", type=int, default=1, help="the data's seed (default 1)")
    p.add_argument("--seeds", default="1,2,3", help="training seeds (default 1,2,3): every one for the --seeded "
                                                    "configurations, the first for the others")
    p.add_argument("--seeded", default=",".join(SEEDED),
                   help=f"the configurations trained with every seed (default {','.join(SEEDED)}); 'all' or ''")
    p.add_argument("--threads", type=positive_int, default=1, help="threads per training run (default 1)")
    p.add_argument("--jobs", type=positive_int, default=1, help="training runs side by side (default 1)")
    p.add_argument("--tiny", action="store_true", help="tiny data, model and runs: checks the chain, not a result")
    p.add_argument("--force", action="store_true", help="retrain rows recorded with other settings")
    a = p.parse_args(argv)
    return run_main(p.prog, lambda: compare(a))


def configurations(text: str, flag: str) -> List[str]:
    """Names from a list separated by commas, or by semicolons once a per-layer plan (with its commas) is among
    them, as the benchmark's --kinds."""
    names = [t.strip() for t in text.split(";" if ";" in text else ",") if t.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise OneLineError(f"{flag}: unknown {unknown}; choose from {'; '.join(CONFIGS)} (separate them by ';' when "
                           f"one is a per-layer plan such as gated_delta,softmax)")
    return names


def compare(a) -> int:
    kinds = configurations(a.kinds, "--kinds")
    if not kinds:
        raise OneLineError(f"--kinds: none given; choose from {', '.join(CONFIGS)}")
    seeds = _ints("--seeds")(a.seeds)
    seeded = set(kinds) if a.seeded == "all" else set(configurations(a.seeded, "--seeded"))
    runs = [(k, s) for k in kinds for s in (seeds if k in seeded else seeds[:1])]
    pairs, lengths = _ints("--pairs")(a.pairs), _ints("--lengths")(a.lengths)
    if a.tiny:
        a.updates = min(a.updates, 4)
    specs = [data_spec(a, n, t) for n in pairs for t in lengths]
    for spec in specs:
        spec.check()  # every setting before any work
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # the training runs'
    Runner("recall", a.out, force=a.force, flag="--out").run(steps(a, runs, specs), title="recall", jobs=a.jobs)
    with open(os.path.join(a.out, "table.md"), encoding="utf-8") as f:
        print(f.read())
    return 0


def _write_summary(a, runs: Sequence[Tuple[str, int]], specs: Sequence[recall_data.RecallData], work: str) -> None:
    import torch

    rows: List[Dict] = []
    for kind, seed in runs:
        with open(os.path.join(work, "scores", f"{run_name(kind, seed)}.json"), encoding="utf-8") as f:
            rows += json.load(f)
    rows.sort(key=lambda r: (r["pairs"], r["length"]))  # stable: configurations keep their order within a setting
    kinds = list(dict.fromkeys(k for k, _ in runs))
    summary = {"tiny": a.tiny, "window": a.window, "layers": LAYERS, "updates": a.updates, "threads": a.threads,
               "model": TINY_MODEL if a.tiny else MODEL, "train": TRAIN, "target": TARGET,
               "kinds": {k: kind_flags(k, a.window) for k in kinds},
               "seeds": {k: [s for kk, s in runs if kk == k] for k in kinds},
               "data": recall_data.settings(specs), "torch": torch.__version__, "rows": rows}
    write_atomic(os.path.join(work, "results.json"), json.dumps(summary, indent=1) + "\n")
    write_atomic(os.path.join(work, "table.md"), table(rows) + "\n")
    plot(rows, os.path.join(work, "recall.png"))
