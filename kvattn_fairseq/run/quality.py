"""Real-text quality against decoding state: character-level language models on English prose, every kind at the
same size and the same number of updates, scored by test perplexity and by the decoding state each hypothesis
carries at 2048 tokens.

    python -m kvattn_fairseq.quality --out runs/quality                 # the README's table (hours on 2 CPU cores)
    python -m kvattn_fairseq.quality --out runs/quality-long --context 1024 --updates 500 --every 250
    python -m kvattn_fairseq.quality --out /tmp/q --tiny                # the whole chain in about a minute

--context C is the evaluation's context window: training blocks and fairseq-eval-lm's windows are 2C tokens, each
window scoring its last C tokens after C of context, so every scored token sees between C and 2C - 1 earlier ones.
The last checkpoint is also scored with a context of only the attention window (64), which shows what each kind
gains from the text beyond it.

The text is the English documentation that ships inside CPython itself, so every machine that runs the plugin has
it and nobody tuned anything on it: the pydoc topic pages (`pydoc_data.topics`) and the docstrings of the standard
library's modules, classes and functions (read with `ast`, nothing is imported), one document per line. Documents
go to train / valid / test by a hash of their text (about 90 / 5 / 5), so a document is never split across sets.
The corpus's size and SHA-256 are recorded: a different Python version ships different text.

Every step runs the real fairseq tools (fairseq-preprocess, fairseq-train, then the project's `evaluate lm`, which
runs fairseq-eval-lm), each logged in --out; a rerun skips what is done.
"""
import ast
import hashlib
import json
import os
import sys
import sysconfig
import time
from typing import Dict, List, Sequence

from ..util import proc
from ..util.cli import ArgumentParser, positive_int, run_main
from ..util.errors import OneLineError, StepFailed
from ..util.io import write_atomic

SPACE, NEWLINE = "\u2581", "\u21b5"  # visible stand-ins: fairseq's dictionary splits tokens on whitespace
MIN_DOC = 200
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}

# Model and training settings shared by every configuration (a small char-level LM: 3 layers of 192, 4 heads).
MODEL = ["--arch", "kvattn_lm", "--decoder-layers", "3", "--decoder-embed-dim", "192", "--decoder-ffn-embed-dim",
         "768", "--decoder-attention-heads", "4", "--dropout", "0.1", "--share-decoder-input-output-embed"]
TRAIN = ["--task", "language_modeling", "--sample-break-mode", "none", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "1.0",
         "--lr", "2e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100", "--warmup-init-lr", "1e-7",
         "--criterion", "cross_entropy", "--seed", "1", "--num-workers", "0", "--no-epoch-checkpoints",
         "--disable-validation", "--log-format", "simple", "--log-interval", "50", "--cpu"]
TINY_MODEL = ["--arch", "kvattn_lm", "--decoder-layers", "1", "--decoder-embed-dim", "32", "--decoder-ffn-embed-dim",
              "64", "--decoder-attention-heads", "2", "--share-decoder-input-output-embed"]

# name -> decoder attention flags.  MemSizer takes the paper's LM settings (32 slots, init scales 32 / 1).
MEMSIZER = ["--memsizer-self-slots", "32", "--memsizer-q-init-scale", "32", "--memsizer-kv-init-scale", "1"]
CONFIGS: Dict[str, List[str]] = {
    "softmax": ["--decoder-attention-type", "softmax"],
    "memsizer": ["--decoder-attention-type", "memsizer", *MEMSIZER],
    "linear": ["--decoder-attention-type", "linear"],
    "window": ["--decoder-attention-type", "window", "--attention-window", "64"],
    "window_memsizer": ["--decoder-attention-type", "window_memsizer", "--attention-window", "64", *MEMSIZER],
    "window_linear": ["--decoder-attention-type", "window_linear", "--attention-window", "64"],
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


def log(msg: str) -> None:
    print(f"[quality] {msg}", flush=True)


# --- the corpus --------------------------------------------------------------------------------------------------
def documents(docstrings: bool = True) -> List[str]:
    import pydoc_data.topics

    docs = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    root = sysconfig.get_paths()["stdlib"] if docstrings else os.devnull
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(f for f in filenames if f.endswith(".py")):
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        docs.append(doc)
    return [d.strip() for d in docs if len(d.strip()) >= MIN_DOC]


def characters(doc: str) -> str:
    return " ".join(NEWLINE if c == "\n" else SPACE if c.isspace() else c for c in doc)


def split_of(doc: str) -> str:
    bucket = int(hashlib.sha256(doc.encode("utf-8")).hexdigest()[:8], 16) % 20
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


def write_corpus(raw: str, limit: int = 0) -> Dict:
    """Write train/valid/test.txt into `raw`; returns what was written (sizes, checksum)."""
    docs = sorted(set(documents(docstrings=not limit)))
    if limit:
        docs = docs[:limit]
    os.makedirs(raw, exist_ok=True)
    counts = {s: 0 for s in ("train", "valid", "test")}
    files = {s: open(os.path.join(raw, f"{s}.txt"), "w", encoding="utf-8") for s in counts}
    digest = hashlib.sha256()
    try:
        for doc in docs:
            s = split_of(doc)
            files[s].write(characters(doc) + "\n")
            counts[s] += len(doc)
            digest.update(doc.encode("utf-8"))
    finally:
        for f in files.values():
            f.close()
    return {"source": "CPython's pydoc topics and standard-library docstrings", "python": sys.version.split()[0],
            "documents": len(docs), "characters": counts, "sha256": digest.hexdigest()}


# --- running the tools -------------------------------------------------------------------------------------------
def run(module: str, args: Sequence[str], logfile: str) -> str:
    cmd = proc.python_module(module) + [str(a) for a in args]
    log(f"{module} {' '.join(str(a) for a in args[:3])} ...   (log: {logfile})")
    return proc.run(cmd, logfile, label=module)


def user_dir() -> str:
    from .. import USER_DIR

    return USER_DIR


def prepare(out: str, tiny: bool) -> str:
    data_bin = os.path.join(out, "data-bin")
    if os.path.isfile(os.path.join(out, "corpus.json")) and os.path.isdir(data_bin):
        return data_bin
    raw = os.path.join(out, "raw")
    info = write_corpus(raw, limit=120 if tiny else 0)
    log(f"corpus: {info['documents']} documents, characters {info['characters']}")
    run("fairseq_cli.preprocess", ["--only-source", "--trainpref", os.path.join(raw, "train.txt"),
                              "--validpref", os.path.join(raw, "valid.txt"), "--testpref", os.path.join(raw, "test.txt"),
                              "--destdir", data_bin, "--workers", "1"], os.path.join(out, "preprocess.log"))
    write_atomic(os.path.join(out, "corpus.json"), json.dumps(info, indent=1))
    return data_bin


def train(out: str, data_bin: str, name: str, updates: int, every: int, tiny: bool, context: int,
          start: int = 0, start_context: int = 0) -> str:
    """Train `name` to `updates`, checkpoints every `every`; with `start`, the first `start` updates on blocks of
    2 * start_context, then the rest on blocks of 2 * context, resumed from there (optimizer and schedule kept,
    the data order restarted for the new blocks)."""
    save = os.path.join(out, "runs", name)
    os.makedirs(save, exist_ok=True)
    model = (TINY_MODEL if tiny else MODEL) + CONFIGS[name] + TRAIN + [
        "--max-target-positions", str(2 * context), "--save-interval-updates", str(every),
        "--keep-interval-updates", "-1", "--save-dir", save, "--user-dir", user_dir()]
    phases = [(start, start_context, "train_start.log", [])] if start else []
    phases.append((updates, context, "train.log", ["--reset-dataloader"] if start else []))
    for until, ctx, logname, extra in phases:
        if not _done(save, until):
            started = time.time()
            run("fairseq_cli.train", [data_bin] + model + block_flags(ctx, tiny) + ["--max-update", str(until)] +
                extra, os.path.join(save, logname))
            write_atomic(os.path.join(save, logname.replace(".log", "_seconds.txt")),
                         f"{time.time() - started:.0f}\n")
    return save


def _done(save: str, updates: int) -> bool:
    return any(n.startswith("checkpoint_") and n.endswith(f"_{updates}.pt") for n in os.listdir(save))


def checkpoint_at(save: str, update: int) -> str:
    found = [n for n in os.listdir(save) if n.startswith("checkpoint_") and n.endswith(f"_{update}.pt")]
    if not found:
        raise StepFailed(f"no checkpoint for update {update} in {save}: see {os.path.join(save, 'train.log')}")
    return os.path.join(save, found[0])


def evaluate(out: str, save: str, update: int, context: int, tag: str = "") -> float:
    """Test perplexity of the checkpoint at `update`, every scored token after `context` to 2 * context - 1 others."""
    result = os.path.join(save, f"test_{update}{tag}.json")
    if not os.path.isfile(result):
        window = ["--tokens-per-sample", str(2 * context), "--context-window", str(context)]
        run("kvattn_fairseq.evaluate", ["lm", "--data", out, "--checkpoint", checkpoint_at(save, update), "--splits",
                                         "test", "--out", result, *window], os.path.join(save, f"evaluate_{update}{tag}.log"))
    with open(result) as f:
        return json.load(f)["metrics"]["test"]["ppl"]


def state_bytes(checkpoint: str, tokens: int) -> int:
    """Bytes of decoding state one hypothesis carries after `tokens` steps of fairseq's incremental decoder (which
    feeds the layers one token per call), every tensor in the state counted."""
    import torch
    from fairseq import checkpoint_utils

    from ..bench.common import state_bytes as count

    models, _ = checkpoint_utils.load_model_ensemble([checkpoint], arg_overrides={"max_target_positions": tokens + 8,
                                                                                  "tokens_per_sample": tokens + 8})
    model = models[0].eval()
    x = torch.randint(4, len(model.decoder.dictionary), (1, tokens))
    state: Dict = {}
    with torch.no_grad():
        for t in range(1, tokens + 1):
            model.decoder(x[:, :t], incremental_state=state)
    return count(state)


# --- the table ---------------------------------------------------------------------------------------------------
def table(results: Dict, points: Sequence[int], context: int, state_at: int, start: Dict = None) -> str:
    base = results.get("softmax")
    last = str(points[-1])
    near = next((r["near"] for r in results.values() if r.get("near")), None)
    near_head = f" | test ppl @ {last}, context {near['context']} only | gain from the context beyond" if near else ""
    lines = [f"Test perplexity per character, context {context} (each scored character after {context} to "
             f"{2 * context - 1} others), by training updates" +
             (f" (the first {start['updates']} on blocks of {2 * start['context']}, the rest on blocks of "
              f"{2 * context})" if start else f" on blocks of {2 * context}") +
             f"; state per hypothesis after {state_at} tokens.", "",
             "| attention | " + " | ".join(f"test ppl @ {p}" for p in points) +
             f" | vs softmax @ {last}{near_head} | state per hypothesis @ {state_at} tokens | vs softmax |",
             "|---|" + "---|" * (len(points) + 3 + (2 if near else 0))]
    for name, r in results.items():
        ppl = " | ".join(f"{r['ppl'][str(p)]:.2f}" for p in points)
        rel = f"{r['ppl'][last] / base['ppl'][last]:.3f}×" if base else "–"
        srel = f"{r['state_bytes'] / base['state_bytes']:.3f}×" if base else "–"
        gain = ""
        if near:
            short = r.get("near", {}).get("ppl")
            gain = f" | {short:.2f} | {100 * (1 - r['ppl'][last] / short):.1f}%" if short else " | – | –"
        lines.append(f"| {name} | {ppl} | {rel}{gain} | {r['state_bytes']:,} B | {srel} |")
    return "\n".join(lines)


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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m kvattn_fairseq.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for the corpus, runs, results.json and table.md")
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
    p.add_argument("--tiny", action="store_true", help="a tiny model, corpus and run: checks the chain, not a result")
    a = p.parse_args(argv)
    return run_main(p.prog, lambda: compare(a))


def check_settings(out: str, settings: Dict) -> None:
    """A directory's runs are reused only by a run with the same corpus and blocks."""
    path = os.path.join(out, "settings.json")
    if os.path.isfile(path):
        with open(path) as f:
            before = json.load(f)
        changed = [k for k in sorted(set(before) | set(settings)) if before.get(k) != settings.get(k)]
        if changed:
            raise OneLineError(f"--out: {out} holds runs made with " + ", ".join(
                f"{k} {before.get(k)}" for k in changed) + "; choose another --out")
    else:
        os.makedirs(out, exist_ok=True)
        write_atomic(path, json.dumps(settings))


def compare(a) -> int:
    names = [c for c in a.configs.split(",") if c]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown or not names:
        raise OneLineError(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    if a.tiny:
        a.updates, a.every, a.start_updates = min(a.updates, 6), min(a.every, 3), min(a.start_updates, 3)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models lose a lot to intra-op threads on a busy CPU
    if a.updates < 1 or a.every < 1 or a.updates % a.every:
        raise OneLineError(f"--updates ({a.updates}) must be a positive multiple of --every ({a.every})")
    context = a.context or (32 if a.tiny else 128)
    if context < 2:
        raise OneLineError(f"--context: must be at least 2, got {context}")
    start_context = (a.start_context or (12 if a.tiny else 128)) if a.start_updates else 0
    if a.start_updates and (a.start_updates < 0 or a.start_updates >= a.updates or a.start_updates % a.every):
        raise OneLineError(f"--start-updates ({a.start_updates}) must be a multiple of --every ({a.every}) below "
                           f"--updates ({a.updates})")
    if a.start_updates and start_context >= context:
        raise OneLineError(f"--start-context ({start_context}) must be smaller than --context ({context})")
    state_at = max(512 if a.tiny else STATE_AT, 2 * context)  # tiny: enough to tell constant from growing
    points = list(range(a.start_updates or a.every, a.updates + 1, a.every))
    start = {"start_updates": a.start_updates, "start_context": start_context} if a.start_updates else {}
    check_settings(a.out, {"tiny": a.tiny, "context": context, **start})
    data_bin = prepare(a.out, a.tiny)
    results: Dict = {}
    for name in names:
        save = train(a.out, data_bin, name, a.updates, a.every, a.tiny, context, a.start_updates, start_context)
        ppl = {str(u): evaluate(a.out, save, u, context) for u in points}
        last = checkpoint_at(save, a.updates)
        results[name] = {"flags": CONFIGS[name], "ppl": ppl, "state_bytes": state_bytes(last, state_at)}
        short = near_context(context)
        if short < context:
            results[name]["near"] = {"context": short, "ppl": evaluate(a.out, save, a.updates, short,
                                                                       tag=f"_context{short}")}
        log(f"{name}: test ppl {ppl}, state {results[name]['state_bytes']:,} B at {state_at} tokens")
    with open(os.path.join(a.out, "corpus.json")) as f:
        corpus = json.load(f)
    summary = {"tiny": a.tiny, "context": context, "updates": a.updates, "points": points, "corpus": corpus,
               "model": TINY_MODEL if a.tiny else MODEL, "train": TRAIN + block_flags(context, a.tiny),
               "start": {"updates": a.start_updates, "context": start_context,
                         "train": block_flags(start_context, a.tiny)} if a.start_updates else None,
               "state_at": state_at, "results": results}
    write_atomic(os.path.join(a.out, "results.json"), json.dumps(summary, indent=1))
    md = table(results, points, context, state_at, summary["start"])
    write_atomic(os.path.join(a.out, "table.md"), md + "\n")
    plot(results, points, context, os.path.join(a.out, "test_ppl.png"))
    print(md)
    return 0
