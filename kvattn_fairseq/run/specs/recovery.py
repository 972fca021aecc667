"""How much of a trained softmax model a conversion recovers.

    python -m kvattn_fairseq recovery --out DIR [--tasks mt,lm] [--plans P1,P2] [--teacher-updates N]
        [--seeds 1,2,3] [--tiny]

For each task a softmax teacher (fairseq's own `transformer` / `transformer_lm`) is trained for N updates, and its
best checkpoint by validation loss is the one scored and converted (the last can sit on a late loss spike); then, for
each attention plan, with the same budget of M updates after conversion (default M = N / 5):
  (a) convert + attention transfer (a quarter of M) + finetune (the rest)   the steps of scripts/convert.sh
  (b) convert + finetune (all of M)                                         the same, --transfer-updates 0
  (c) the plugin's model with that plan trained from scratch for M updates, with the teacher's recipe
and (0), the converted model before any training, all against (d), the teacher.  Tasks:
  mt  the project's generated reversal task (data/toy.py), sacreBLEU of beam-4 fairseq-generate (the synthetic
      evaluator)
  lm  character-level language modelling of real English prose: the Python Language Reference text shipped with
      every CPython (pydoc_data/topics.py), perplexity per character from fairseq-eval-lm (the lm evaluator)
Plans (--plans): `memsizer` and `linear` replace every decoder attention (self and cross), `hybrid` keeps the last
decoder layer softmax and puts MemSizer in the others; `window`, `window_memsizer` and `window_linear` replace decoder
self-attention only, cross-attention staying the teacher's softmax (its cache is the source's keys and values, which
do not grow with the output), with a window of --attention-window positions.  Any other plan is SELF or SELF/CROSS:
a decoder self-attention plan and a cross-attention plan (default: the teacher's softmax), e.g.
`window_memsizer/memsizer` or `memsizer*2,softmax/softmax` (separate entries with ';' once one holds a comma).
Encoders stay softmax.  The targets: (a) recovers >= 95% of the teacher's BLEU / is within 5% of its perplexity
with M <= 20% of N, and (c) is clearly worse (5 BLEU points lower, or a 5% higher perplexity, than (a)).
With --seeds S1,S2,... the whole experiment (teacher, conversion, every run) is repeated per seed on the same data
(seed 1 in DIR/TASK/, another under DIR/TASK/seedS/); the table shows each number's mean and standard deviation
over the seeds, each ratio's too, and in how many seeds the targets were met; results.json keeps every seed's value.

The steps run on the experiment spine (run/spine.py): DIR/results.json and DIR/table.md at the end, each step's log
under DIR/logs/; a rerun skips what is done and resumes an interrupted fairseq-train, refuses in one line anything
recorded with other settings unless --force, and keeps the rows of plans it does not name when its teacher, budget,
seeds and --tiny are the same.
"""
import argparse
import json
import os
import platform
from typing import Dict, List, Optional, Sequence, Tuple

from ...checkpoints import convert
from ...util import proc
from ...util.cli import ArgumentParser, positive_int, run_main
from ...util.errors import OneLineError
from ...util.io import mark, read_json, write_atomic
from ...util.markdown import table as markdown_table
from ..spine import Context, Runner, Step, in_process, work_dir
from ..steps import evaluate_step, train_step
from ..steps_convert import Chain, chain_steps, criterion_flags
from ..train import Command

PROG = "python -m kvattn_fairseq recovery"
FULL = {
    "mt": dict(train=8000, valid=300, test=500, layers=3, dim=64, ffn=256, heads=4, updates=1500, lr="1e-2",
               max_tokens=2000),
    "lm": dict(layers=3, dim=96, ffn=384, heads=4, updates=1000, lr="2e-3", max_tokens=1024, block=128,
               chunks=None),
}
# --tiny checks the chain, not a result: a few updates, and (0) is not evaluated.  30 teacher updates give (a) 2
# transfer updates: the first update of a run has the warmup's initial learning rate, 0, and changes nothing
TINY = {
    "mt": dict(train=200, valid=20, test=20, layers=2, dim=16, ffn=32, heads=2, updates=30, lr="1e-2",
               max_tokens=1000, tiny=True),
    "lm": dict(layers=2, dim=16, ffn=32, heads=2, updates=30, lr="2e-3", max_tokens=512, block=32, chunks=20,
               tiny=True),
}
PLANS = ("memsizer", "linear", "hybrid", "window", "window_memsizer", "window_linear")
VARIANTS = {"a": "convert + transfer + finetune", "b": "convert + finetune", "c": "from scratch",
            "0": "converted, no training"}
SPACE = "\u2581"  # a character-level token for the space
DROPOUT = ["--dropout", "0.1"]
# The teacher's checkpoint that is scored and converted: at the teacher's learning rate its loss can spike late, and
# its last checkpoint then scored 70 sacreBLEU where another run of the same command scored 97.
TEACHER_CHECKPOINT = "checkpoint_best.pt"


def chain_extra(seed: int) -> List[str]:
    """fairseq-train flags after the chain's own."""
    return ["--seed", str(seed), *DROPOUT, "--log-interval", "100"]


# --- plans -------------------------------------------------------------------------------------------------------
def split_plans(text: str) -> List[str]:
    return [x.strip() for x in text.split(";" if ";" in text else ",") if x.strip()]


def plan_kinds(plan: str, layers: int) -> Tuple[str, str]:
    """(decoder self-attention plan, cross-attention plan) of a named plan or a SELF[/CROSS] entry."""
    if plan == "hybrid":
        return f"memsizer*{layers - 1},softmax", f"memsizer*{layers - 1},softmax"
    if plan in ("memsizer", "linear"):
        return plan, plan
    self_kinds, _, cross = plan.partition("/")
    return self_kinds, cross or "softmax"


def plan_label(plan: str, window: int) -> str:
    """The plan's name in results and its directory: a window plan names its window when it is not the default."""
    from ...modules.window_attention import DEFAULT_WINDOW

    if "window" in plan and window != DEFAULT_WINDOW:
        return f"{plan} W={window}"
    return plan


def plan_values(plan: str, task: str, layers: int, window: int) -> Dict[str, object]:
    """The plan as the conversion's option values (by destination)."""
    self_kinds, cross = plan_kinds(plan, layers)
    values: Dict[str, object] = {"decoder_attention_type": self_kinds}
    if task == "mt":
        values["cross_attention_type"] = cross
    if "window" in self_kinds + cross:
        values["attention_window"] = window
    return values


def plan_flags(plan: str, task: str, layers: int, window: int) -> List[str]:
    """The same plan as flags (the from-scratch run's, and the table's)."""
    return convert.conversion_flags(plan_values(plan, task, layers, window))


def check_plans(plans: Sequence[str], layers: Dict[str, int]) -> None:
    """Every plan builds at every task's size: refused in one line naming --plans before anything runs."""
    from ...models.layers import check_attention_args

    for plan in plans:
        for task, n in layers.items():
            values = plan_values(plan, task, n, 64)
            args = argparse.Namespace(decoder_layers=n, encoder_layers=n, encoder_attention_type="softmax",
                                      decoder_attention_type=values["decoder_attention_type"],
                                      cross_attention_type=values.get("cross_attention_type"))
            try:
                check_attention_args(args, ("decoder", "cross") if task == "mt" else ("decoder",))
            except ValueError as e:
                raise OneLineError(f"--plans: {plan!r} ({task}): {e}") from None


# --- data --------------------------------------------------------------------------------------------------------
def prose_lines() -> List[str]:
    """The Python Language Reference's text, as shipped with CPython (pydoc_data/topics.py), one line per line."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics))
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def write_chars(raw: str, chunks: Optional[int]) -> None:
    """Character-level splits: blocks of 50 lines, every 20th block to valid, another to test, the rest train."""
    os.makedirs(raw, exist_ok=True)
    lines = prose_lines()
    blocks = [lines[i:i + 50] for i in range(0, len(lines), 50)][:chunks]
    split: Dict[str, List[str]] = {"train": [], "valid": [], "test": []}
    for i, block in enumerate(blocks):
        split["valid" if i % 20 == 9 else "test" if i % 20 == 19 else "train"].extend(block)
    if chunks is not None:  # a small slice: make sure every split has text
        split["valid"], split["test"] = split["valid"] or blocks[1], split["test"] or blocks[2]
    for name, part in split.items():
        with open(os.path.join(raw, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.writelines(" ".join(SPACE if c == " " else c for c in line) + "\n" for line in part)


def data_step(task: str, cfg: Dict) -> Step:
    """TASK/data: raw/ (the text) and data-bin/ (fairseq-preprocess)."""
    if task == "mt":
        sizes = {k: cfg[k] for k in ("train", "valid", "test")}
        settings = {"task": "reverse", **sizes, "min_len": 3, "max_len": 15, "seed": 1}
        splits = ["--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary"]
        prefix = "{}"
    else:  # the text differs between Python versions
        settings = {"task": "python-reference-chars", "chunks": cfg["chunks"],
                    "python": ".".join(platform.python_version_tuple()[:2])}
        splits, prefix = ["--only-source"], "{}.txt"

    def run(ctx: Context) -> None:
        os.makedirs(ctx.out, exist_ok=True)
        mark(ctx.out, ["raw", "data-bin"])
        raw = os.path.join(ctx.out, "raw")
        if task == "mt":
            from ...data import toy

            toy.write_reverse(raw, **sizes, min_len=3, max_len=15, seed=1)
        else:
            write_chars(raw, cfg["chunks"])
        cmd = [*proc.fairseq_tool("fairseq-preprocess"), *splits,
               *(a for s in ("train", "valid", "test") for a in (f"--{s}pref", os.path.join(raw, prefix.format(s)))),
               "--destdir", os.path.join(ctx.out, "data-bin"), "--workers", "1"]
        proc.run(cmd, ctx.log, label="fairseq-preprocess", append=True)

    return Step(f"{task}/data", os.path.join(task, "data"), settings, in_process(run, f"{task} data"),
                command=f"(in process: {__name__}.data_step, then fairseq-preprocess)")


# --- training ----------------------------------------------------------------------------------------------------
def size_flags(task: str, cfg: Dict) -> List[str]:
    parts = ["decoder"] + (["encoder"] if task == "mt" else [])
    flags: List = []
    for part in parts:
        flags += [f"--{part}-layers", cfg["layers"], f"--{part}-embed-dim", cfg["dim"], f"--{part}-ffn-embed-dim",
                  cfg["ffn"], f"--{part}-attention-heads", cfg["heads"]]
    if task == "lm":  # fairseq's transformer_lm would otherwise keep 512-wide input/output embeddings
        flags += ["--decoder-input-dim", cfg["dim"], "--decoder-output-dim", cfg["dim"]]
    return [str(f) for f in flags] + (["--share-all-embeddings"] if task == "mt" else
                                      ["--share-decoder-input-output-embed"])


def data_flags(task: str, cfg: Dict) -> List[str]:
    """The task and its data settings, as the teacher was trained with them (the chain's runs take them too)."""
    if task == "lm":
        return ["--task", "language_modeling", "--tokens-per-sample", str(cfg["block"]), "--sample-break-mode",
                "none", "--max-tokens", str(cfg["max_tokens"])]
    return ["--task", "translation", "--source-lang", "src", "--target-lang", "tgt", "--max-tokens",
            str(cfg["max_tokens"])]


def recipe(task: str, cfg: Dict, updates: int, seed: int = 1) -> List[str]:
    """The teacher's training recipe (also the from-scratch runs')."""
    return [*data_flags(task, cfg), "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", cfg["lr"],
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(min(100, max(1, updates // 10))),
            "--max-update", str(updates), *DROPOUT, "--seed", str(seed), "--no-epoch-checkpoints", "--log-format",
            "simple", "--log-interval", "100",
            *criterion_flags("language_modeling" if task == "lm" else "translation")]


def run_step(name: str, out: str, work: str, data: Step, arch: str, flags: List[str]) -> Step:
    from ...util.paths import USER_DIR

    args = [os.path.join(work, data.out, "data-bin"), "--user-dir", USER_DIR, "--arch", arch, "--save-dir",
            os.path.join(work, out), *flags]
    return train_step(name, out, Command([*proc.fairseq_tool("fairseq-train"), *args], [], args),
                      {"arch": arch, "flags": flags}, needs=(data.name,))


# --- evaluation --------------------------------------------------------------------------------------------------
def evaluation(task: str, cfg: Dict) -> Tuple[str, Dict]:
    """The registry evaluator of a task and its options: beam-4 fairseq-generate on reversal; fairseq-eval-lm on the
    test split, blocks of the training length scored after half a block of context."""
    if task == "mt":
        return "synthetic", {"beam": 4, "batch_size": 64, "synthetic_task": "reverse"}
    return "lm", {"tokens_per_sample": cfg["block"], "context_window": cfg["block"] // 2, "splits": "test",
                  "batch_size": 16}


def row(task: str, results_path: str, data: str) -> Dict:
    """A row of the table from a results file: BLEU and the sentences, or perplexity and the tokens (every token of
    the test text, one more per line for its end, must have been scored)."""
    with open(results_path, encoding="utf-8") as f:
        r = json.load(f)
    if task == "mt":
        return {"bleu": r["metrics"]["sacrebleu"], "sentences": r["sentences"]}
    scored = r["metrics"]["test"]["tokens"]
    with open(os.path.join(data, "raw", "test.txt"), encoding="utf-8") as f:
        expected = sum(len(line.split()) + 1 for line in f)
    if scored != expected:
        raise OneLineError(f"{results_path}: fairseq-eval-lm scored {scored} of the {expected} test tokens")
    return {"ppl": r["metrics"]["test"]["ppl"], "tokens": scored}


# --- the experiment ----------------------------------------------------------------------------------------------
def budget(cfg: Dict, share: float, transfer_share: float) -> Tuple[int, int, int]:
    """(N teacher updates, M updates after conversion, of which the transfer's in (a))."""
    n = cfg["updates"]
    m = max(2, int(round(n * share)))
    return n, m, max(1, int(round(m * transfer_share)))


def seed_dir(task: str, seed: int) -> str:
    """Where one seed's runs go: seed 1 in TASK/, another in TASK/seedS/."""
    return task if seed == 1 else os.path.join(task, f"seed{seed}")


def task_steps(a, task: str, cfg: Dict, plans: Sequence[str], work: str) -> Tuple[List[Step], Dict]:
    """One task's steps, for every seed, and where its table finds each row's results ({seed: results file})."""
    arch, kvattn = ("transformer", "kvattn_transformer") if task == "mt" else ("transformer_lm", "kvattn_lm")
    n, m, transfer = budget(cfg, a.budget, a.transfer_share)
    evaluator, options = evaluation(task, cfg)
    data = data_step(task, cfg)
    steps = [data]
    results: Dict = {"teacher": {}, "plans": {}}
    source_args, target = convert.source_args_of(arch, size_flags(task, cfg) + DROPOUT)
    for seed in a.seeds:
        base = seed_dir(task, seed)
        of_seed = "" if seed == 1 else f", seed {seed}"
        teacher = run_step(f"{base}/teacher", os.path.join(base, "teacher"), work, data, arch,
                           size_flags(task, cfg) + recipe(task, cfg, n, seed))
        steps.append(teacher)

        def evaluate(key: str, made: Step, checkpoint: Optional[str], label: str) -> str:
            out = os.path.join(base, "results", f"{key}.json")
            steps.append(evaluate_step(f"{base}/evaluate/{key}", out, evaluator, data=data, train=made,
                                       checkpoint=checkpoint, options=options, label=label + of_seed))
            return out

        results["teacher"][str(seed)] = evaluate("teacher", teacher, TEACHER_CHECKPOINT, f"{task} teacher")
        for plan in plans:
            label = plan_label(plan, a.attention_window)
            name = label.replace(" ", "_").replace("/", "+").replace("*", "x").replace(",", "-")  # a directory's
            where = os.path.join(base, name)
            values = plan_values(plan, task, cfg["layers"], a.attention_window)
            chain = Chain(os.path.join(work, teacher.out, TEACHER_CHECKPOINT), os.path.join(work, data.out, "data-bin"),
                          values, convert.converted_flags(source_args, target, values), data_flags(task, cfg),
                          {"teacher": os.path.join(teacher.out, TEACHER_CHECKPOINT),
                           "data": os.path.join(data.out, "data-bin")}, a.transfer_lr, a.finetune_lr, chain_extra(seed),
                          teacher_step=teacher.name, data_step=data.name, seed=seed)
            with_transfer = chain_steps(chain, work, os.path.join(where, "a"), transfer, m - transfer)
            converted = with_transfer[0]
            without = chain_steps(chain, work, os.path.join(where, "b"), 0, m, converted=converted)
            scratch = run_step(f"{where}/c", os.path.join(where, "c"), work, data, kvattn,
                               size_flags(task, cfg) + plan_flags(plan, task, cfg["layers"], a.attention_window) +
                               recipe(task, cfg, m, seed))
            steps += [*with_transfer, *without, scratch]
            runs = [("a", with_transfer[-1]), ("b", without[-1]), ("c", scratch)] + ([] if cfg.get("tiny") else
                                                                                    [("0", converted)])
            entry = results["plans"].setdefault(label, {"flags": plan_flags(plan, task, cfg["layers"],
                                                                            a.attention_window), "rows": {}})
            for key, made in runs:
                checkpoint = None if made is converted else "checkpoint_last.pt"
                entry["rows"].setdefault(key, {})[str(seed)] = evaluate(f"{name}/{key}", made, checkpoint,
                                                                         f"{task} {label} ({key})")
    header = {"teacher_updates": n, "budget_updates": m, "transfer_updates": transfer,
              "metric": "bleu" if task == "mt" else "ppl", "transfer_lr": a.transfer_lr, "finetune_lr": a.finetune_lr,
              "seeds": list(a.seeds), "teacher_checkpoint": TEACHER_CHECKPOINT}
    return steps, {"header": header, "data": data.out, **results}


def over_seeds(task: str, rows: Dict[str, Dict]) -> Dict:
    """One row from each seed's ({seed: row}): the metric's mean, its sample standard deviation (None for one seed)
    and every seed's value; the count of sentences or tokens, the same for every seed."""
    metric = "bleu" if task == "mt" else "ppl"
    values = {seed: r[metric] for seed, r in rows.items()}
    first = next(iter(rows.values()))
    return {metric: _mean(list(values.values())), "sd": _sd(list(values.values())), "by_seed": values,
            **{k: v for k, v in first.items() if k != metric}}


def _mean(xs: Sequence[float], digits: Optional[int] = 3) -> float:
    mean = sum(xs) / len(xs)
    return mean if digits is None else round(mean, digits)


def _sd(xs: Sequence[float], digits: Optional[int] = 3) -> Optional[float]:
    if len(xs) < 2:
        return None
    mean = sum(xs) / len(xs)
    sd = (sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
    return sd if digits is None else round(sd, digits)


def summary_step(a, tasks: Dict[str, Dict], needs: Sequence[str]) -> Step:
    """results.json and table.md from every row's results, at every run."""
    def write(ctx: Context) -> None:
        import torch

        results = {"tiny": a.tiny, "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                               "torch": torch.__version__, "cuda": torch.cuda.is_available()},
                   "tasks": {}}
        for task, where in tasks.items():
            data = os.path.join(ctx.work, where["data"])

            def seeds(paths: Dict[str, str]) -> Dict:
                return over_seeds(task, {seed: row(task, os.path.join(ctx.work, path), data)
                                         for seed, path in paths.items()})

            results["tasks"][task] = {
                **where["header"], "teacher": seeds(where["teacher"]),
                "plans": {label: {"flags": p["flags"], "rows": {k: seeds(paths) for k, paths in p["rows"].items()}}
                          for label, p in where["plans"].items()}}
        path = os.path.join(ctx.work, "results.json")
        keep_earlier(path, results)
        write_atomic(path, json.dumps(results, indent=1) + "\n")
        write_atomic(ctx.out, table(results) + "\n")

    return Step("table", "table.md", {}, in_process(write, "table"), needs=tuple(needs), always=True,
                also=("results.json",))


def keep_earlier(path: str, results: Dict) -> None:
    """Rows of plans this run did not name, from an earlier results file with the same teacher, budget and seeds,
    --tiny or not as this run (a tiny run's rows are a check of the chain, never a result beside real ones)."""
    before = read_json(path)
    if not isinstance(before, dict) or bool(before.get("tiny")) != bool(results.get("tiny")):
        return
    same = ("teacher_updates", "budget_updates", "transfer_updates", "transfer_lr", "finetune_lr", "teacher",
            "seeds", "teacher_checkpoint")
    for task, old in before.get("tasks", {}).items():
        new = results["tasks"].get(task)
        if new is None:
            results["tasks"][task] = old
        elif all(old.get(k) == new.get(k) for k in same):
            new["plans"] = {**{k: v for k, v in old["plans"].items() if k not in new["plans"]}, **new["plans"]}


# --- report ------------------------------------------------------------------------------------------------------
def by_seed(row: Dict, metric: str) -> Dict[str, float]:
    """A row's value per seed (a results file of one seed, written before seeds were recorded: seed 1)."""
    return row.get("by_seed") or {"1": row[metric]}


def versus_teacher(metric: str, teacher: float, value: float):
    """A row against the teacher: BLEU / teacher BLEU, or perplexity / teacher perplexity (None if undefined)."""
    return value / teacher if teacher and value is not None else None


def target_met(metric: str, teacher: float, rows: Dict[str, float]) -> bool:
    """(a) recovers >= 95% of the teacher's BLEU, or is within 5% of its perplexity, and (c) is clearly worse than
    (a): 5 BLEU points lower, or a perplexity 5% higher (one seed's numbers)."""
    a, c = versus_teacher(metric, teacher, rows["a"]), versus_teacher(metric, teacher, rows["c"])
    if a is None or c is None:
        return False
    if metric == "bleu":
        return a >= 0.95 and rows["c"] <= rows["a"] - 5
    return a <= 1.05 and rows["c"] >= 1.05 * rows["a"]


def _cell(row: Optional[Dict], metric: str) -> str:
    if row is None:
        return "n/a"
    values = list(by_seed(row, metric).values())
    if len(values) == 1:
        return f"{values[0]:g}"
    return f"{_mean(values):.2f} ± {_sd(values):.2f}"


def table(results: Dict) -> str:
    lines: List[str] = []
    if results.get("tiny"):
        lines += ["**--tiny**: tiny models, data and runs: a check of the chain, not a result.", ""]
    for task, r in results["tasks"].items():
        metric = r["metric"]
        bleu = metric == "bleu"
        name = "sacreBLEU of beam-4 fairseq-generate (higher is better)" if bleu else \
            "test perplexity per character from fairseq-eval-lm (lower is better)"
        ratio = "(a) / (d) BLEU, target >= 95%" if bleu else "(a) / (d) perplexity, target <= 1.05x"
        seeds = [str(s) for s in r.get("seeds") or [1]]
        spread = f"; seeds {', '.join(seeds)}: mean ± standard deviation over them (each seed's value in " \
                 f"results.json)" if len(seeds) > 1 else ""
        lines += [f"**{task}**: {name}; the teacher trained {r['teacher_updates']} updates (scored and converted: its "
                  f"{r.get('teacher_checkpoint', 'checkpoint_last.pt')}), every other row {r['budget_updates']} "
                  f"after conversion ((a): {r['transfer_updates']} of them attention transfer, lr "
                  f"{r.get('transfer_lr')}; finetunes lr {r.get('finetune_lr')}){spread}.", ""]
        teacher = by_seed(r["teacher"], metric)
        body = []
        for plan, p in r["plans"].items():
            rows = {k: by_seed(v, metric) for k, v in p["rows"].items()}
            common = [s for s in teacher if all(s in v for v in rows.values())]
            shares = [versus_teacher(metric, teacher[s], rows["a"][s]) for s in common]
            shares = [x for x in shares if x is not None]
            if not shares:
                shown = "n/a"
            elif bleu:
                shown = f"{100 * _mean(shares, None):.1f}%" + (f" ± {100 * _sd(shares, None):.1f}"
                                                                if len(shares) > 1 else "")
            else:
                shown = f"{_mean(shares, None):.2f}x" + (f" ± {_sd(shares, None):.2f}" if len(shares) > 1 else "")
            met = sum(target_met(metric, teacher[s], {k: v[s] for k, v in rows.items()}) for s in common)
            verdict = "met" if common and met == len(common) else "missed"
            if len(common) > 1:
                verdict += f" ({met} of {len(common)} seeds)"
            body.append([f"{plan} (`{' '.join(p['flags'])}`)", _cell(r["teacher"], metric),
                         *(_cell(p["rows"].get(k), metric) for k in VARIANTS), shown, verdict])
        lines += markdown_table(["plan", "(d) teacher", *(f"({k}) {v}" for k, v in VARIANTS.items()), ratio,
                                 "targets"], body)
        lines.append("")
    return "\n".join(lines)


# --- the command -------------------------------------------------------------------------------------------------
def seed_list(text: str) -> List[int]:
    """argparse type: comma-separated positive integers, each once."""
    try:
        seeds = list(dict.fromkeys(int(x) for x in text.split(",") if x.strip()))
    except ValueError:
        seeds = []
    if not seeds or any(x < 1 for x in seeds):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return seeds


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory for the data, runs, results, results.json, table.md")
    p.add_argument("--tiny", action="store_true", help="tiny models and data, a few updates: the chain in minutes")
    p.add_argument("--tasks", default="mt,lm")
    p.add_argument("--plans", default=",".join(PLANS),
                   help=f"named plans ({', '.join(PLANS)}) or SELF[/CROSS] attention plans; ';' between entries "
                        f"once one holds a comma")
    p.add_argument("--attention-window", type=positive_int, default=64,
                   help="W of the window plans (default 64, the kind's default)")
    p.add_argument("--teacher-updates", type=int, default=0, help="override the teacher's updates (N)")
    p.add_argument("--budget", type=float, default=0.2, help="updates after conversion, as a share of the teacher's")
    p.add_argument("--transfer-share", type=float, default=0.25, help="share of the budget spent on transfer in (a)")
    p.add_argument("--transfer-lr", default="1e-3", help="peak learning rate of the attention transfer")
    p.add_argument("--finetune-lr", default="1e-3", help="peak learning rate of the finetunes")
    p.add_argument("--seeds", type=seed_list, default=[1], help="comma-separated seeds: the whole experiment once "
                   "per seed, the table showing mean and standard deviation (default 1)")
    p.add_argument("--force", action="store_true", help="redo the steps recorded with other settings (without it "
                                                        "such a rerun is refused); only what the tool made is removed")
    return p


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    tasks = [t for t in a.tasks.split(",") if t]
    plans = split_plans(a.plans)
    if not tasks or set(tasks) - {"mt", "lm"}:
        p.error(f"--tasks: expected some of mt, lm, got {a.tasks!r}")
    if not plans:
        p.error(f"--plans: expected some of {', '.join(PLANS)} or SELF[/CROSS] plans, got {a.plans!r}")
    if a.teacher_updates < 0:
        p.error("--teacher-updates: expected a positive number")
    if not 0 < a.budget <= 1 or not 0 < a.transfer_share < 1:
        p.error("--budget must be in (0, 1] and --transfer-share in (0, 1)")
    if os.path.lexists(a.out) and not os.path.isdir(a.out):
        p.error(f"--out {a.out} exists and is not a directory; give a directory (it is created if needed)")
    sizes = {task: dict(cfg) for task, cfg in (TINY if a.tiny else FULL).items() if task in tasks}
    try:
        check_plans(plans, {t: sizes[t]["layers"] for t in tasks})
    except OneLineError as e:
        p.error(str(e))
    for cfg in sizes.values():
        cfg["updates"] = a.teacher_updates or cfg["updates"]

    def body() -> int:
        work = work_dir(a.out, "--out")
        steps: List[Step] = []
        where = {}
        for task in tasks:
            made, where[task] = task_steps(a, task, sizes[task], plans, work)
            steps += made
        steps.append(summary_step(a, where, [s.name for s in steps if "/evaluate/" in s.name]))
        if a.tiny:  # tiny models gain nothing from intra-op threads, and lose a lot to them on a busy CPU
            os.environ.setdefault("OMP_NUM_THREADS", "1")
        Runner("recovery", work, force=a.force, flag="--out").run(steps, title="recovery")
        with open(os.path.join(work, "table.md"), encoding="utf-8") as f:
            print(f.read(), end="")
        return 0

    return run_main(PROG, body)
