"""Recall beyond the window: multi-query associative recall (kvattn_fairseq/data/recall.py) with the key-value pairs
further back than the attention window, every kind trained the same way, scored by the accuracy of the recalled
values (beyond the window, and overall) against the decoding state each hypothesis carries at the task's length.

    python -m kvattn_fairseq recall --out runs/recall                 # docs/recall/table.md (hours on 2 CPU cores)
    python -m kvattn_fairseq recall --out /tmp/r --tiny               # the whole chain on a tiny model

The data of every (pairs, length) setting is generated once (deterministic by seed) and binarized with
fairseq-preprocess; as in Zoology, the settings are trained together (one mixed training set) and tested apart.
Every kind is trained once with fairseq-train (task associative_recall, criterion recall_accuracy: cross-entropy on
the answers only), its last checkpoint is scored on each setting's test set (evaluate/recall.py) and its state
measured after decoding `length` tokens through fairseq's incremental decoder (evaluate/state.py).  The steps run
on the experiment spine (run/spine.py): OUT/results.json, OUT/table.md and OUT/recall.png at the end; a rerun skips
what is done and refuses, in one line, anything recorded with other settings unless --force.
"""
import json
import os
from typing import Dict, List, Sequence

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
MODEL = ["--arch", "kvattn_lm", "--decoder-layers", str(LAYERS), "--decoder-embed-dim", "64",
         "--decoder-ffn-embed-dim", "128", "--decoder-attention-heads", "4", "--dropout", "0.0"]
TINY_MODEL = ["--arch", "kvattn_lm", "--decoder-layers", str(LAYERS), "--decoder-embed-dim", "16",
              "--decoder-ffn-embed-dim", "32", "--decoder-attention-heads", "2"]
# With the real-text recipe (inverse-sqrt decay, beta2 0.98, clipping, tied embeddings) softmax stayed on the plateau
# of guessing among the values present for 2000 updates (8 pairs, 64 tokens); with this one it left it after ~1000.
TRAIN = ["--task", "associative_recall", "--criterion", "recall_accuracy", "--batch-size", "32", "--optimizer", "adam",
         "--adam-betas", "(0.9, 0.999)", "--lr", "1e-3", "--lr-scheduler", "fixed", "--warmup-updates", "50",
         "--num-workers", "0", "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "50", "--cpu"]
MEMSIZER = ["--memsizer-self-slots", "32", "--memsizer-q-init-scale", "32", "--memsizer-kv-init-scale", "1"]
KINDS: Dict[str, List[str]] = {
    "softmax": [],
    "window": [],
    "memsizer": MEMSIZER,
    "linear": [],
    "window_memsizer": MEMSIZER,
    "window_linear": [],
    "delta": [],
    "window_delta": [],
}
def kind_flags(kind: str, window: int) -> List[str]:
    flags = ["--decoder-attention-type", kind] + KINDS[kind]
    return flags + (["--attention-window", str(window)] if kind.startswith("window") else [])


def data_spec(a, pairs: int, length: int) -> recall_data.RecallData:
    sizes = dict(train=200, valid=20, test=40) if a.tiny else dict(train=a.train, valid=100, test=a.test)
    # a stack of L windows sees L (W - 1) positions back: the gap keeps every pair beyond that
    return recall_data.RecallData(pairs=pairs, length=length, window=a.window, min_gap=LAYERS * (a.window - 1),
                                  seed=a.seed, **sizes)


def train_flags(a, kind: str, length: int, save: str) -> List[str]:
    return (TINY_MODEL if a.tiny else MODEL) + kind_flags(kind, a.window) + TRAIN + [
        "--tokens-per-sample", str(length + 1), "--max-update", str(a.updates), "--seed", str(a.seed),
        "--validate-interval-updates", str(max(1, a.updates // 10)), "--save-interval-updates",
        str(max(1, a.updates // 4)), "--keep-interval-updates", "1", "--save-dir", save]


def steps(a, kinds: Sequence[str], specs: Sequence[recall_data.RecallData]) -> List[Step]:
    """The data (every setting, trained together), then per kind its training and its scores on each setting,
    then the table, the plot and results.json from every kind's scores."""
    longest = max(s.length for s in specs)
    work = work_dir(a.out, "--out")

    def make_data(ctx: Context) -> None:
        recall_data.generate(ctx.out, specs)

    out = [Step("data", "data", recall_data.settings(specs), in_process(make_data, "data"),
                command="(generated in process: kvattn_fairseq/data/recall.py)")]
    for kind in kinds:
        save = os.path.join("runs", kind)
        argv = [*proc.fairseq_tool("fairseq-train"), os.path.join(work, "data", "data-bin"), "--user-dir",
                _user_dir(), *train_flags(a, kind, longest, os.path.join(work, save))]
        settings = {"kind": kind, "tiny": a.tiny, "flags": train_flags(a, kind, longest, "SAVE")}
        out.append(train_step(f"train/{kind}", save, Command(argv, [], argv[len(proc.fairseq_tool("fairseq-train")):]),
                              settings, needs=("data",)))
        out.append(Step(f"score/{kind}", os.path.join("scores", f"{kind}.json"), {"kind": kind, "window": a.window},
                        in_process(_scorer(a, kind, specs), f"score {kind}"), needs=("data", f"train/{kind}"),
                        command="(in process: evaluate/recall.py, evaluate/state.py)"))

    def draw(ctx: Context) -> None:
        _write_summary(a, kinds, specs, ctx.work)

    out.append(Step("table", "table.md", {}, in_process(draw, "table"), needs=tuple(f"score/{k}" for k in kinds),
                    always=True, also=("results.json", "recall.png")))
    return out


def _user_dir() -> str:
    from ...util.paths import USER_DIR

    return USER_DIR


def _scorer(a, kind: str, specs: Sequence[recall_data.RecallData]):
    def score(ctx: Context) -> None:
        from ...evaluate import recall as evaluate
        from ...evaluate.state import state_bytes

        import torch

        torch.set_num_threads(a.threads)
        checkpoint = os.path.join(ctx.inputs[f"train/{kind}"], "checkpoint_last.pt")
        rows, states = [], {}
        for spec in specs:
            scores = evaluate.evaluate(checkpoint, ctx.inputs["data"], recall_data.name(spec))
            if spec.length not in states:
                states[spec.length] = state_bytes(checkpoint, spec.length)
            rows.append({"kind": kind, "pairs": spec.pairs, "length": spec.length, "window": a.window,
                         "updates": a.updates, "flags": kind_flags(kind, a.window),
                         "state_bytes": states[spec.length], **scores})
            ctx.say(f"{kind}, {spec.pairs} pairs, {spec.length} tokens: beyond the window "
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


def target(row: Dict, base: Dict) -> str:
    """>= 90% of softmax's accuracy beyond the window with <= 1/10 of its state (constant-state kinds only), and
    above what no recall reaches: 90% of a softmax that does not recall either would be no target at all."""
    if row["kind"] == "softmax" or base is None:
        return "–"
    floor = no_recall(row["pairs"], row["chance"])
    if base["beyond"]["accuracy"] <= floor:
        return "n/a: softmax does not recall"
    beyond = row["beyond"]["accuracy"]
    ok = beyond > floor and beyond >= 0.9 * base["beyond"]["accuracy"] and \
        row["state_bytes"] <= base["state_bytes"] / 10
    return "**met**" if ok else "missed"


def table(rows: Sequence[Dict]) -> str:
    lines = ["| pairs | length | attention | accuracy beyond W | within W | overall | state per hypothesis @ length "
             "| vs softmax | target |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next((b for b in rows if b["kind"] == "softmax" and (b["pairs"], b["length"]) ==
                     (r["pairs"], r["length"])), None)
        ratio = f"{r['state_bytes'] / base['state_bytes']:.3f}×" if base else "–"
        lines.append(f"| {r['pairs']} | {r['length']} | {r['kind']} | {_pct(r['beyond']['accuracy'])} | "
                     f"{_pct(r['within']['accuracy'])} | {_pct(r['accuracy'])} | {r['state_bytes']:,} B | {ratio} | "
                     f"{target(r, base)} |")
    return "\n".join(lines)


def plot(rows: Sequence[Dict], path: str) -> None:
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    settings = sorted({(r["pairs"], r["length"]) for r in rows})
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    colours = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(kinds)}
    from matplotlib.ticker import NullFormatter

    cols = min(2, len(settings))
    nrows = (len(settings) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.6 * nrows + 0.8), squeeze=False, sharey=True)
    flat = axes.flatten()
    for ax in flat[len(settings):]:
        ax.set_visible(False)
    for ax, (pairs, length) in zip(flat, settings):
        here = [r for r in rows if (r["pairs"], r["length"]) == (pairs, length)]
        for r in here:
            ax.scatter(r["state_bytes"], 100 * r["beyond"]["accuracy"], color=colours[r["kind"]], label=r["kind"],
                       s=40, zorder=3)
        base = next((r for r in here if r["kind"] == "softmax"), None)
        if base:
            ax.fill_between([min(r["state_bytes"] for r in here) / 2, base["state_bytes"] / 10],
                            90 * base["beyond"]["accuracy"], 102, color="green", alpha=0.08, label="target")
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
    fig.tight_layout(rect=(0, 0.9 / (3.6 * nrows + 0.8), 1, 1))
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
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of: {', '.join(KINDS)}")
    p.add_argument("--pairs", default="4,8", help="numbers of key-value pairs per sequence (default 4,8)")
    p.add_argument("--lengths", default="64,256", help="sequence lengths in tokens (default 64,256)")
    p.add_argument("--window", type=positive_int, default=WINDOW, help=f"the window W (default {WINDOW})")
    p.add_argument("--updates", type=positive_int, default=2500, help="training updates per kind (default 2500)")
    p.add_argument("--train", type=positive_int, default=5000, help="training sequences per setting")
    p.add_argument("--test", type=positive_int, default=1000, help="test sequences per setting")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=positive_int, default=1, help="threads per training run (default 1)")
    p.add_argument("--tiny", action="store_true", help="tiny data, model and runs: checks the chain, not a result")
    p.add_argument("--force", action="store_true", help="retrain rows recorded with other settings")
    a = p.parse_args(argv)
    return run_main(p.prog, lambda: compare(a))


def compare(a) -> int:
    kinds = [k for k in a.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise OneLineError(f"--kinds: unknown {unknown}; choose from {', '.join(KINDS)}")
    pairs, lengths = _ints("--pairs")(a.pairs), _ints("--lengths")(a.lengths)
    if a.tiny:
        a.updates = min(a.updates, 4)
    specs = [data_spec(a, n, t) for n in pairs for t in lengths]
    for spec in specs:
        spec.check()  # every setting before any work
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # the training runs'
    Runner("recall", a.out, force=a.force, flag="--out").run(steps(a, kinds, specs), title="recall")
    with open(os.path.join(a.out, "table.md"), encoding="utf-8") as f:
        print(f.read())
    return 0


def _write_summary(a, kinds: Sequence[str], specs: Sequence[recall_data.RecallData], work: str) -> None:
    import torch

    rows: List[Dict] = []
    for kind in kinds:
        with open(os.path.join(work, "scores", f"{kind}.json"), encoding="utf-8") as f:
            rows += json.load(f)
    rows.sort(key=lambda r: (r["pairs"], r["length"]))  # stable: kinds keep their order within a setting
    summary = {"tiny": a.tiny, "window": a.window, "layers": LAYERS, "updates": a.updates, "threads": a.threads,
               "model": TINY_MODEL if a.tiny else MODEL, "train": TRAIN,
               "kinds": {k: kind_flags(k, a.window) for k in kinds},
               "data": recall_data.settings(specs), "torch": torch.__version__, "rows": rows}
    write_atomic(os.path.join(work, "results.json"), json.dumps(summary, indent=1) + "\n")
    write_atomic(os.path.join(work, "table.md"), table(rows) + "\n")
    plot(rows, os.path.join(work, "recall.png"))
