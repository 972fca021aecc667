"""Real-text quality against decoding state: character-level language models on English prose (CPython's own
documentation, data/cpython_docs.py), every kind at the same size and the same number of updates, scored by test
perplexity and by the decoding state each hypothesis carries at 2048 tokens.

    python -m kvattn_fairseq quality --out runs/quality                 # docs/quality/table.md (hours on 2 CPU cores)
    python -m kvattn_fairseq quality --out runs/quality-long --context 1024 --updates 500 --every 250
    python -m kvattn_fairseq quality --out /tmp/q --tiny                # the whole chain on a tiny model

--context C is the evaluation's context window: training blocks and fairseq-eval-lm's windows are 2C tokens, each
window scoring its last C tokens after C of context, so every scored token sees between C and 2C - 1 earlier ones.
The last checkpoint is also scored with a context of only the attention window (64), which shows what each kind
gains from the text beyond it.  --start-updates N trains the first N updates on blocks of 2 * --start-context (a
run of its own, OUT/runs/NAME-start), then continues from its last checkpoint on blocks of 2C (fairseq-train
--continue-once, optimizer and schedule kept, the data order restarted for the new blocks); scores start at N.

The steps run on the experiment spine (run/spine.py): the corpus binarized by fairseq-preprocess (OUT/data), per
configuration its fairseq-train run(s) (OUT/runs/NAME), the test perplexity of each scored checkpoint by the lm
evaluator, which runs fairseq-eval-lm (OUT/scores/NAME/test_U.json), and the state bytes of the last checkpoint
(evaluate/state.py); OUT/results.json, OUT/table.md and OUT/test_ppl.png are drawn from all of them at every run.
A rerun skips what is done, continues an interrupted training, and refuses in one line anything recorded with other
settings (another --context, --updates, ...) unless --force.
"""
import json
import os
from typing import Dict, List, Optional, Sequence

from ...data import cpython_docs as corpus
from ...util import proc
from ...util.cli import ArgumentParser, positive_int, run_main
from ...util.errors import OneLineError
from ...util.io import save_figure, write_atomic
from ...util.markdown import table as markdown_table
from ..spine import Context, Runner, Step, in_process, work_dir
from ..steps import evaluate_step, train_step
from ..train import Command

PROG = "python -m kvattn_fairseq quality"

# Model and training settings shared by every configuration (a small char-level LM: 3 layers of 192, 4 heads).
MODEL = ["--arch", "kvattn_lm", "--decoder-layers", "3", "--decoder-embed-dim", "192", "--decoder-ffn-embed-dim",
         "768", "--decoder-attention-heads", "4", "--dropout", "0.1", "--share-decoder-input-output-embed"]
TRAIN = ["--task", "language_modeling", "--sample-break-mode", "none", "--optimizer", "adam", "--adam-betas",
         "(0.9, 0.98)", "--clip-norm", "1.0", "--lr", "2e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates",
         "100", "--warmup-init-lr", "1e-7", "--criterion", "cross_entropy", "--seed", "1", "--num-workers", "0",
         "--no-epoch-checkpoints", "--disable-validation", "--log-format", "simple", "--log-interval", "50", "--cpu"]
TINY_MODEL = ["--arch", "kvattn_lm", "--decoder-layers", "1", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim",
              "64", "--decoder-attention-heads", "2", "--share-decoder-input-output-embed"]
TINY_DOCUMENTS = 120  # pydoc topic pages only
TINY_EVAL_BATCH = 64  # the lm evaluator's default, 2, spends seconds on the tiny windows

# name -> decoder attention flags.  MemSizer takes the paper's LM settings (32 slots, init scales 32 / 1).
MEMSIZER = ["--memsizer-self-slots", "32", "--memsizer-q-init-scale", "32", "--memsizer-kv-init-scale", "1"]
CONFIGS: Dict[str, List[str]] = {
    "softmax": ["--decoder-attention-type", "softmax"],
    "memsizer": ["--decoder-attention-type", "memsizer", *MEMSIZER],
    "linear": ["--decoder-attention-type", "linear"],
    "window": ["--decoder-attention-type", "window", "--attention-window", "64"],
    "window_memsizer": ["--decoder-attention-type", "window_memsizer", "--attention-window", "64", *MEMSIZER],
    "window_linear": ["--decoder-attention-type", "window_linear", "--attention-window", "64"],
    "gated_delta": ["--decoder-attention-type", "gated_delta"],
    "window_gated_delta": ["--decoder-attention-type", "window_gated_delta", "--attention-window", "64"],
}
STATE_AT = 2048
WINDOW = 64  # the window configurations' W


def block_flags(context: int, tiny: bool) -> List[str]:
    """Training blocks of 2C tokens, at least two of them (and 2048 tokens) per batch."""
    block = 2 * context
    return ["--tokens-per-sample", str(block), "--max-tokens", str(max(256 if tiny else 2048, 2 * block))]


def near_context(context: int) -> int:
    """The short context the last checkpoint is also scored with: the window, or less in tiny runs."""
    return min(WINDOW, context // 2)


# --- the steps -------------------------------------------------------------------------------------------------------
class Plan:
    """What one command line asks for, checked before any work."""

    def __init__(self, a):
        self.names = [c for c in a.configs.split(",") if c]
        unknown = [c for c in self.names if c not in CONFIGS]
        if unknown or not self.names:
            raise OneLineError(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
        self.tiny = a.tiny
        if a.tiny:
            a.updates, a.every, a.start_updates = min(a.updates, 6), min(a.every, 3), min(a.start_updates, 3)
        if a.updates < 1 or a.every < 1 or a.updates % a.every:
            raise OneLineError(f"--updates ({a.updates}) must be a positive multiple of --every ({a.every})")
        self.updates, self.every, self.start = a.updates, a.every, a.start_updates
        self.context = a.context or (32 if a.tiny else 128)
        if self.context < 2:
            raise OneLineError(f"--context: must be at least 2, got {self.context}")
        self.start_context = (a.start_context or (12 if a.tiny else 128)) if self.start else 0
        if self.start and (self.start < 0 or self.start >= self.updates or self.start % self.every):
            raise OneLineError(f"--start-updates ({self.start}) must be a multiple of --every ({self.every}) below "
                               f"--updates ({self.updates})")
        if self.start and self.start_context >= self.context:
            raise OneLineError(f"--start-context ({self.start_context}) must be smaller than --context "
                               f"({self.context})")
        self.state_at = max(512 if a.tiny else STATE_AT, 2 * self.context)  # tiny: enough to tell constant from growing
        self.points = list(range(self.start or self.every, self.updates + 1, self.every))
        self.near = near_context(self.context)

    def train_flags(self, name: str, context: int, until: int, save: str) -> List[str]:
        return (TINY_MODEL if self.tiny else MODEL) + CONFIGS[name] + TRAIN + [
            "--max-target-positions", str(2 * self.context), "--save-interval-updates", str(self.every),
            "--keep-interval-updates", "-1", "--save-dir", save] + block_flags(context, self.tiny) + [
            "--max-update", str(until)]

    def summary(self) -> Dict:
        return {"tiny": self.tiny, "context": self.context, "updates": self.updates, "points": self.points,
                "model": TINY_MODEL if self.tiny else MODEL, "train": TRAIN + block_flags(self.context, self.tiny),
                "start": {"updates": self.start, "context": self.start_context,
                          "train": block_flags(self.start_context, self.tiny)} if self.start else None,
                "state_at": self.state_at}


def _train(plan: Plan, name: str, work: str, data_bin: str, start: Optional[Step] = None,
           phase: str = "main") -> Step:
    """A fairseq-train run of `name`: the short-context start (phase "start": --start-updates on blocks of
    2 * --start-context), or the run to --updates on blocks of 2C, from scratch or continued from `start`'s last
    checkpoint (--continue-once: optimizer and schedule kept; --reset-dataloader: the data order restarts for the
    new blocks)."""
    first = phase == "start"
    out = os.path.join("runs", f"{name}-start" if first else name)
    context, until = (plan.start_context, plan.start) if first else (plan.context, plan.updates)

    def flags(save: str, start_dir: str) -> List[str]:
        more = ["--continue-once", os.path.join(start_dir, "checkpoint_last.pt"), "--reset-dataloader"] \
            if start is not None else []
        return plan.train_flags(name, context, until, save) + more

    tool = proc.fairseq_tool("fairseq-train")
    args = [data_bin, "--user-dir", _user_dir(),
            *flags(os.path.join(work, out), os.path.join(work, start.out) if start is not None else "")]
    settings = {"config": name, "tiny": plan.tiny, "phase": phase, "flags": flags("SAVE", "START")}
    return train_step(f"train/{name}" + ("/start" if first else ""), out, Command([*tool, *args], [], args),
                      settings, needs=("data",) + ((start.name,) if start is not None else ()))


def steps(plan: Plan, work: str) -> List[Step]:
    """The corpus, then per configuration its training (a short-context start first where asked), the test
    perplexity of every scored checkpoint, the state bytes of the last; then the table, plot and results.json."""
    limit = TINY_DOCUMENTS if plan.tiny else 0

    def make_data(ctx: Context) -> None:
        corpus.prepare(ctx.out, limit)

    data = Step("data", "data", {"corpus": "cpython-docs", "documents": limit or "all", "python": _python()},
                in_process(make_data, "data"), command="(in process: kvattn_fairseq/data/cpython_docs.py, "
                                                       "then fairseq-preprocess --only-source)")
    out = [data]
    data_bin = os.path.join(work, "data", "data-bin")
    scored: List[str] = []
    for name in plan.names:
        start = _train(plan, name, work, data_bin, phase="start") if plan.start else None
        train = _train(plan, name, work, data_bin, start)
        out += [s for s in (start, train) if s is not None]
        for u in plan.points:
            run = start if start is not None and u == plan.start else train
            for context in (plan.context, plan.near) if u == plan.updates and plan.near < plan.context \
                    else (plan.context,):
                tag = "" if context == plan.context else f"_context{context}"
                out.append(evaluate_step(
                    f"ppl/{name}/{u}{tag}", _score_file(name, u, tag), "lm", data=data, train=run,
                    checkpoint=f"checkpoint_*_{u}.pt", label=f"{name} @ {u} updates, context {context}",
                    options={"context_window": context, "tokens_per_sample": 2 * context, "splits": "test",
                             **({"batch_size": TINY_EVAL_BATCH} if plan.tiny else {})}))
                scored.append(out[-1].name)
        out.append(Step(f"state/{name}", os.path.join("scores", name, "state.json"),
                        {"config": name, "tokens": plan.state_at}, in_process(_state(plan, name), f"state {name}"),
                        needs=(train.name,), command="(in process: evaluate/state.py on checkpoint_last.pt)"))
        scored.append(out[-1].name)

    def draw(ctx: Context) -> None:
        write_summary(plan, ctx.work, corpus.read_info(os.path.join(ctx.work, "data")))

    out.append(Step("table", "table.md", {}, in_process(draw, "table"), needs=("data", *scored), always=True,
                    also=("results.json", "test_ppl.png"), command="(in process: results.json, table.md and test_ppl.png from scores/)"))
    return out


def _score_file(name: str, update: int, tag: str = "") -> str:
    return os.path.join("scores", name, f"test_{update}{tag}.json")


def _state(plan: Plan, name: str):
    def measure(ctx: Context) -> None:
        from ...evaluate.state import state_bytes

        checkpoint = os.path.join(ctx.inputs[f"train/{name}"], "checkpoint_last.pt")
        n = state_bytes(checkpoint, plan.state_at)
        print(f"{name}: {n:,} B of decoding state per hypothesis after {plan.state_at} tokens")
        write_atomic(ctx.out, json.dumps({"config": name, "tokens": plan.state_at, "state_bytes": n}) + "\n")

    return measure


def _user_dir() -> str:
    from ...util.paths import USER_DIR

    return USER_DIR


def _python() -> str:
    import platform

    return platform.python_version()  # another Python ships other documentation


# --- the table and the plot ------------------------------------------------------------------------------------------
def _ppl(path: str) -> float:
    with open(path, encoding="utf-8") as f:
        return json.load(f)["metrics"]["test"]["ppl"]


def collect(plan: Plan, work: str) -> Dict:
    results: Dict = {}
    for name in plan.names:
        with open(os.path.join(work, "scores", name, "state.json"), encoding="utf-8") as f:
            state = json.load(f)["state_bytes"]
        results[name] = {"flags": CONFIGS[name],
                         "ppl": {str(u): _ppl(os.path.join(work, _score_file(name, u))) for u in plan.points},
                         "state_bytes": state}
        if plan.near < plan.context:
            results[name]["near"] = {"context": plan.near, "ppl": _ppl(os.path.join(
                work, _score_file(name, plan.updates, f"_context{plan.near}")))}
    return results


def write_summary(plan: Plan, work: str, corpus_info: Dict) -> None:
    results = collect(plan, work)
    summary = {**plan.summary(), "corpus": corpus_info, "results": results}
    write_atomic(os.path.join(work, "results.json"), json.dumps(summary, indent=1) + "\n")
    write_atomic(os.path.join(work, "table.md"),
                 table(results, plan.points, plan.context, plan.state_at, summary["start"]) + "\n")
    plot(results, plan.points, plan.context, os.path.join(work, "test_ppl.png"))


def table(results: Dict, points: Sequence[int], context: int, state_at: int, start: Optional[Dict] = None) -> str:
    base = results.get("softmax")
    last = str(points[-1])
    near = next((r["near"] for r in results.values() if r.get("near")), None)
    caption = (f"Test perplexity per character, context {context} (each scored character after {context} to "
               f"{2 * context - 1} others), by training updates" +
               (f" (the first {start['updates']} on blocks of {2 * start['context']}, the rest on blocks of "
                f"{2 * context})" if start else f" on blocks of {2 * context}") +
               f"; state per hypothesis after {state_at} tokens.")
    header = ["attention", *(f"test ppl @ {p}" for p in points), f"vs softmax @ {last}"]
    if near:
        header += [f"test ppl @ {last}, context {near['context']} only", "gain from the context beyond"]
    header += [f"state per hypothesis @ {state_at} tokens", "vs softmax"]
    rows = []
    for name, r in results.items():
        row = [name, *(f"{r['ppl'][str(p)]:.2f}" for p in points),
               f"{r['ppl'][last] / base['ppl'][last]:.3f}×" if base else "–"]
        if near:
            short = r.get("near", {}).get("ppl")
            row += [f"{short:.2f}", f"{100 * (1 - r['ppl'][last] / short):.1f}%"] if short else ["–", "–"]
        row += [f"{r['state_bytes']:,} B", f"{r['state_bytes'] / base['state_bytes']:.3f}×" if base else "–"]
        rows.append(row)
    return "\n".join([caption, "", *markdown_table(header, rows)])


def plot(results: Dict, points: Sequence[int], context: int, path: str) -> None:
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # before its import, which logs at DEBUG
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    near = [n for n, r in results.items() if r.get("near")]
    fig, axes = plt.subplots(1, 2 if near else 1, figsize=(11 if near else 6, 4), squeeze=False)
    ax = axes[0][0]
    for name, r in results.items():
        ax.plot(points, [r["ppl"][str(p)] for p in points], marker="o", label=name)
    ax.set_xlabel("updates")
    ax.set_ylabel(f"test perplexity (characters), context {context}")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if near:
        ax = axes[0][1]
        short = results[near[0]]["near"]["context"]
        xs = range(len(near))
        ax.bar([x - 0.2 for x in xs], [results[n]["near"]["ppl"] for n in near], 0.4, label=f"context {short}")
        ax.bar([x + 0.2 for x in xs], [results[n]["ppl"][str(points[-1])] for n in near], 0.4,
               label=f"context {context}")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(near, rotation=20, ha="right")
        ax.set_ylabel(f"test perplexity @ {points[-1]} updates")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


# --- the command -----------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for the corpus, runs, scores, results.json, table.md and "
                                                "test_ppl.png")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    p.add_argument("--updates", type=int, default=1200, help="training updates per configuration (default 1200)")
    p.add_argument("--every", type=int, default=300, help="score the test set every N updates (default 300)")
    p.add_argument("--context", type=positive_int, default=None,
                   help="tokens of context before each scored one (training blocks and eval windows are twice "
                        "that; default 128, 32 with --tiny)")
    p.add_argument("--start-updates", type=int, default=0,
                   help="train the first N updates at --start-context, then continue at --context (scored from N on)")
    p.add_argument("--start-context", type=positive_int, default=None,
                   help="the context of the first --start-updates (default 128, 12 with --tiny)")
    p.add_argument("--jobs", type=positive_int, default=1, help="training runs side by side (default 1)")
    p.add_argument("--tiny", action="store_true", help="a tiny model, corpus and run: checks the chain, not a result")
    p.add_argument("--force", action="store_true", help="redo the steps recorded with other settings (without it "
                   "such a rerun is refused); only what the tool made is removed")
    a = p.parse_args(argv)
    return run_main(p.prog, lambda: compare(a), interrupted="interrupted: rerun the same command to resume")


def compare(a) -> int:
    plan = Plan(a)  # every setting before any work
    if a.tiny:  # tiny models lose a lot to intra-op threads on a busy CPU
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = work_dir(a.out, "--out")
    Runner("quality", work, force=a.force, flag="--out").run(steps(plan, work), title="quality", jobs=a.jobs)
    with open(os.path.join(work, "table.md"), encoding="utf-8") as f:
        print(f.read(), end="")
    return 0
