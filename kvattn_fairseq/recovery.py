"""How much of a trained softmax model a conversion recovers: python -m kvattn_fairseq.recovery --out DIR [--tiny]

For each task a softmax teacher (fairseq's own `transformer` / `transformer_lm`) is trained for N updates; then, for
each attention plan, with the same budget of M updates after conversion (default M = N / 5):
  (a) convert + attention transfer (a quarter of M) + finetune (the rest)   scripts/convert.sh
  (b) convert + finetune (all of M)                                         scripts/convert.sh --transfer-updates 0
  (c) the plugin's model with that plan trained from scratch for M updates, with the teacher's recipe
and (0), the converted model before any training, all against (d), the teacher.  Tasks:
  mt  the project's generated reversal task (kvattn_fairseq.toydata), sacreBLEU of beam-4 fairseq-generate
  lm  character-level language modelling of real English prose: the Python Language Reference text shipped with
      every CPython (pydoc_data/topics.py), perplexity per character from fairseq-eval-lm
Plans (--plans): `memsizer` and `linear` replace every decoder attention (self and cross), `hybrid` keeps the last
decoder layer softmax and puts MemSizer in the others; `window`, `window_memsizer` and `window_linear` replace decoder
self-attention only, cross-attention staying the teacher's softmax (its cache is the source's keys and values, which
do not grow with the output), with a window of --attention-window positions.  Any other plan is SELF or SELF/CROSS:
a decoder self-attention plan and a cross-attention plan (default: the teacher's softmax), e.g.
`window_memsizer/memsizer` or `memsizer*2,softmax/softmax` (separate entries with ';' once one holds a comma).
Encoders stay softmax.  The targets: (a) recovers >= 95% of the
teacher's BLEU / is within 5% of its perplexity with M <= 20% of N, and (c) is clearly worse (5 BLEU points
lower, or a 5% higher perplexity, than (a)).
Writes DIR/results.json and DIR/table.md; a rerun resumes (fairseq-train resumes; finished evaluations are kept),
and rows of plans a rerun does not name are kept when its teacher and budget are the same.
"""
import argparse
import json
import os
import re
import sys
import time
from typing import Dict, List, Tuple

from .convert_chain import chain, criterion_flags, finished, run, tool
from .util.cli import ArgumentParser, positive_int, run_main
from .util.errors import OneLineError, StepFailed
from .util.io import write_atomic

FULL = {
    "mt": dict(train=8000, valid=300, test=500, layers=3, dim=64, ffn=256, heads=4, updates=1500, lr="1e-2",
               max_tokens=2000),
    "lm": dict(layers=3, dim=96, ffn=384, heads=4, updates=1000, lr="2e-3", max_tokens=1024, block=128,
               chunks=None),
}
TINY = {
    "mt": dict(train=300, valid=50, test=40, layers=2, dim=32, ffn=64, heads=2, updates=40, lr="1e-2",
               max_tokens=1000),
    "lm": dict(layers=2, dim=32, ffn=64, heads=2, updates=40, lr="2e-3", max_tokens=512, block=64, chunks=40,
               tiny=True),
}
TINY["mt"]["tiny"] = True  # (0), the converted model before training, is not evaluated
PLANS = ("memsizer", "linear", "hybrid", "window", "window_memsizer", "window_linear")
VARIANTS = {"a": "convert + transfer + finetune", "b": "convert + finetune", "c": "from scratch",
            "0": "converted, no training"}
SPACE = "\u2581"  # a character-level token for the space


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
    from .modules.window_attention import DEFAULT_WINDOW

    if "window" in plan and window != DEFAULT_WINDOW:
        return f"{plan} W={window}"
    return plan


def plan_flags(plan: str, task: str, layers: int, window: int) -> List[str]:
    self_kinds, cross = plan_kinds(plan, layers)
    flags = ["--decoder-attention-type", self_kinds] + (["--cross-attention-type", cross] if task == "mt" else [])
    return flags + (["--attention-window", str(window)] if "window" in self_kinds + cross else [])


def check_plans(plans: List[str], layers: Dict[str, int]) -> None:
    """Every plan builds at every task's size: refused in one line naming --plans before anything runs."""
    import argparse as ap

    from .models.layers import check_attention_args

    for plan in plans:
        for task, n in layers.items():
            flags = plan_flags(plan, task, n, 64)
            args = ap.Namespace(decoder_layers=n, encoder_layers=n, decoder_attention_type=flags[1],
                                cross_attention_type=flags[3] if task == "mt" else None,
                                encoder_attention_type="softmax")
            try:
                check_attention_args(args, ("decoder", "cross") if task == "mt" else ("decoder",))
            except ValueError as e:
                raise OneLineError(f"--plans: {plan!r} ({task}): {e}") from None


# --- data ----------------------------------------------------------------------------------------------------------
def prose_lines() -> List[str]:
    """The Python Language Reference's text, as shipped with CPython (pydoc_data/topics.py), one line per line."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics))
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def write_chars(work: str, chunks) -> str:
    """Character-level splits: blocks of 50 lines, every 20th block to valid, another to test, the rest train."""
    raw = os.path.join(work, "raw")
    os.makedirs(raw, exist_ok=True)
    lines = prose_lines()
    blocks = [lines[i:i + 50] for i in range(0, len(lines), 50)][:chunks]
    split = {"train": [], "valid": [], "test": []}
    for i, block in enumerate(blocks):
        split["valid" if i % 20 == 9 else "test" if i % 20 == 19 else "train"].extend(block)
    if chunks is not None:  # a small slice: make sure every split has text
        split["valid"], split["test"] = split["valid"] or blocks[1], split["test"] or blocks[2]
    for name, part in split.items():
        with open(os.path.join(raw, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.writelines(" ".join(SPACE if c == " " else c for c in line) + "\n" for line in part)
    return raw


def prepare(task: str, work: str, cfg: Dict, record: List) -> str:
    data = os.path.join(work, "data-bin")
    if os.path.exists(os.path.join(data, "dict.txt" if task == "lm" else "dict.src.txt")):
        return data
    if task == "mt":
        from . import toydata

        raw = toydata.write_reverse(os.path.join(work, "raw"), cfg["train"], cfg["valid"], cfg["test"], min_len=3,
                                    max_len=15)
        cmd = [*tool("fairseq-preprocess"), "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
               "--trainpref", f"{raw}/train", "--validpref", f"{raw}/valid", "--testpref", f"{raw}/test"]
    else:
        raw = write_chars(work, cfg["chunks"])
        cmd = [*tool("fairseq-preprocess"), "--only-source", "--trainpref", f"{raw}/train.txt", "--validpref",
               f"{raw}/valid.txt", "--testpref", f"{raw}/test.txt"]
    run([*cmd, "--destdir", data, "--workers", "1"], os.path.join(work, "prepare.log"), record)
    return data


# --- training ------------------------------------------------------------------------------------------------------
def size_flags(task: str, cfg: Dict) -> List[str]:
    parts = ["decoder"] + (["encoder"] if task == "mt" else [])
    flags = []
    for part in parts:
        flags += [f"--{part}-layers", cfg["layers"], f"--{part}-embed-dim", cfg["dim"], f"--{part}-ffn-embed-dim",
                  cfg["ffn"], f"--{part}-attention-heads", cfg["heads"]]
    if task == "lm":  # fairseq's transformer_lm would otherwise keep 512-wide input/output embeddings
        flags += ["--decoder-input-dim", cfg["dim"], "--decoder-output-dim", cfg["dim"]]
    return [str(f) for f in flags] + (["--share-all-embeddings"] if task == "mt" else
                                      ["--share-decoder-input-output-embed"])


def recipe(task: str, cfg: Dict, updates: int) -> List[str]:
    """The teacher's training recipe (also the from-scratch runs')."""
    flags = ["--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", cfg["lr"], "--lr-scheduler",
             "inverse_sqrt", "--warmup-updates", str(min(100, max(1, updates // 10))), "--max-update", str(updates),
             "--max-tokens", str(cfg["max_tokens"]), "--dropout", "0.1", "--seed", "1", "--no-epoch-checkpoints",
             "--log-format", "simple", "--log-interval", "100"]
    if task == "lm":
        flags += ["--task", "language_modeling", "--tokens-per-sample", str(cfg["block"])]
    return flags + criterion_flags("language_modeling" if task == "lm" else "translation")


def train(data: str, save: str, arch: str, flags: List[str], updates: int, log: str, record: List) -> str:
    from . import USER_DIR

    if not finished(save, updates):
        run([*tool("fairseq-train"), data, "--user-dir", USER_DIR, "--arch", arch, "--save-dir", save, *flags], log,
            record)
    return os.path.join(save, "checkpoint_last.pt")


# --- evaluation ----------------------------------------------------------------------------------------------------
def evaluate(task: str, data: str, work: str, checkpoint: str, cfg: Dict, log: str, record: List) -> Dict:
    from . import USER_DIR

    if task == "mt":
        out = run([*tool("fairseq-generate"), data, "--path", checkpoint, "--user-dir", USER_DIR, "--beam", "4",
                   "--batch-size", "64", "--gen-subset", "test"], log, record)
        hyps = {int(m.group(1)): m.group(2) for m in re.finditer(r"^H-(\d+)\t\S+\t?(.*)$", out, re.M)}
        with open(os.path.join(work, "raw", "test.tgt"), encoding="utf-8") as f:
            refs = f.read().splitlines()
        if sorted(hyps) != list(range(len(refs))):
            raise StepFailed(f"{checkpoint}: fairseq-generate returned {len(hyps)} of {len(refs)} sentences")
        import sacrebleu

        bleu = sacrebleu.corpus_bleu([hyps[i] for i in range(len(refs))], [refs])
        return {"bleu": round(bleu.score, 2), "sentences": len(refs)}
    out = run([*tool("fairseq-eval-lm"), data, "--path", checkpoint, "--user-dir", USER_DIR, "--gen-subset", "test",
               "--tokens-per-sample", str(cfg["block"]), "--context-window", str(cfg["block"] // 2),
               "--batch-size", "16"], log, record)
    tokens = re.search(r"Evaluated ([\d,]+) tokens", out)
    ppl = re.search(r"Perplexity: ([\d.]+)", out)
    with open(os.path.join(work, "raw", "test.txt"), encoding="utf-8") as f:
        expected = sum(len(line.split()) + 1 for line in f)
    if not tokens or not ppl or int(tokens.group(1).replace(",", "")) != expected:
        raise StepFailed(f"{checkpoint}: fairseq-eval-lm scored {tokens and tokens.group(1)} of {expected} tokens")
    return {"ppl": float(ppl.group(1)), "tokens": expected}


def cached(path: str, fn):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    value = fn()
    write_atomic(path, json.dumps(value))
    return value


# --- one task ------------------------------------------------------------------------------------------------------
def run_task(task: str, out: str, cfg: Dict, plans, budget: float, transfer_share: float, lrs: Dict,
             record: List, window: int = 64) -> Dict:
    work = os.path.join(out, task)
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "runs.log")
    data = prepare(task, work, cfg, record)
    arch = "transformer" if task == "mt" else "transformer_lm"
    n = cfg["updates"]
    m = max(2, int(round(n * budget)))
    transfer = max(1, int(round(m * transfer_share)))
    teacher = train(data, os.path.join(work, "teacher"), arch, size_flags(task, cfg) + recipe(task, cfg, n), n,
                    log, record)
    metric = "bleu" if task == "mt" else "ppl"
    result = {"teacher_updates": n, "budget_updates": m, "transfer_updates": transfer, "metric": metric, **lrs,
              "teacher": cached(os.path.join(work, "teacher", "eval.json"),
                                lambda: evaluate(task, data, work, teacher, cfg, log, record)), "plans": {}}
    extra = ["--seed", "1", "--dropout", "0.1", "--log-interval", "100"]
    for plan in plans:
        flags = plan_flags(plan, task, cfg["layers"], window)
        label = plan_label(plan, window)
        where = os.path.join(work, label.replace(" ", "_").replace("/", "+").replace("*", "x").replace(",", "-"))
        rows = {}
        a = chain(teacher, data, os.path.join(where, "a"), flags, transfer, m - transfer, extra=extra, **lrs)
        b = chain(teacher, data, os.path.join(where, "b"), flags, 0, m, extra=extra, **lrs,
                  converted=os.path.join(where, "a", "converted.pt"))
        kvattn = "kvattn_transformer" if task == "mt" else "kvattn_lm"
        c = train(data, os.path.join(where, "c"), kvattn, size_flags(task, cfg) + flags + recipe(task, cfg, m), m,
                  log, record)
        runs = [("a", a), ("b", b), ("c", c)] + ([] if cfg.get("tiny") else [("0", os.path.join(where, "a",
                                                                                            "converted.pt"))])
        for key, ckpt in runs:
            rows[key] = cached(ckpt + ".eval.json", lambda ckpt=ckpt: evaluate(task, data, work, ckpt, cfg, log,
                                                                                record))
        result["plans"][label] = {"flags": flags, "rows": rows}
    return result


def keep_earlier(path: str, results: Dict) -> None:
    """Rows of plans this run did not name, from an earlier results file with the same teacher and budget."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        before = json.load(f)
    same = ("teacher_updates", "budget_updates", "transfer_updates", "transfer_lr", "finetune_lr", "teacher")
    for task, old in before.get("tasks", {}).items():
        new = results["tasks"].get(task)
        if new is None:
            results["tasks"][task] = old
        elif all(old.get(k) == new.get(k) for k in same):
            new["plans"] = {**{k: v for k, v in old["plans"].items() if k not in new["plans"]}, **new["plans"]}


# --- report --------------------------------------------------------------------------------------------------------
def versus_teacher(task_result: Dict, value: float):
    """A row against the teacher: BLEU / teacher BLEU, or perplexity / teacher perplexity (None if undefined)."""
    teacher = task_result["teacher"][task_result["metric"]]
    return value / teacher if teacher and value is not None else None


def target_met(task_result: Dict, rows: Dict) -> bool:
    """(a) recovers >= 95% of the teacher's BLEU, or is within 5% of its perplexity, and (c) is clearly worse than
    (a): 5 BLEU points lower, or a perplexity 5% higher."""
    a, c = versus_teacher(task_result, rows["a"]), versus_teacher(task_result, rows["c"])
    if a is None or c is None:
        return False
    if task_result["metric"] == "bleu":
        return a >= 0.95 and rows["c"] <= rows["a"] - 5
    return a <= 1.05 and rows["c"] >= 1.05 * rows["a"]


def table(results: Dict) -> str:
    lines = []
    for task, r in results["tasks"].items():
        metric = r["metric"]
        bleu = metric == "bleu"
        name = "sacreBLEU of beam-4 fairseq-generate (higher is better)" if bleu else \
            "test perplexity per character from fairseq-eval-lm (lower is better)"
        ratio = "(a) / (d) BLEU, target >= 95%" if bleu else "(a) / (d) perplexity, target <= 1.05x"
        lines += [f"**{task}**: {name}; the teacher trained {r['teacher_updates']} updates, every other row "
                  f"{r['budget_updates']} after conversion ((a): {r['transfer_updates']} of them attention transfer, "
                  f"lr {r.get('transfer_lr')}; finetunes lr {r.get('finetune_lr')}).", "",
                  f"| plan | (d) teacher | (a) {VARIANTS['a']} | (b) {VARIANTS['b']} | (c) {VARIANTS['c']} | "
                  f"(0) {VARIANTS['0']} | {ratio} | targets |", "|---" * 8 + "|"]
        teacher = r["teacher"][metric]
        for plan, p in r["plans"].items():
            rows = {k: v[metric] for k, v in p["rows"].items()}
            share = versus_teacher(r, rows["a"])
            shown = "n/a" if share is None else f"{100 * share:.1f}%" if bleu else f"{share:.2f}x"
            lines.append(f"| {plan} (`{' '.join(p['flags'])}`) | {teacher:g} | {rows['a']:g} | {rows['b']:g} | "
                         f"{rows['c']:g} | {rows.get('0', 'n/a')} | {shown} | "
                         f"{'met' if target_met(r, rows) else 'missed'} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m kvattn_fairseq.recovery", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="tiny models and data, a few updates: the pipeline in minutes")
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
    import platform

    import torch

    sizes = {task: dict(cfg) for task, cfg in (TINY if a.tiny else FULL).items()}
    try:
        check_plans(plans, {t: sizes[t]["layers"] for t in tasks})
    except OneLineError as e:
        p.error(str(e))
    os.makedirs(a.out, exist_ok=True)
    if a.teacher_updates:
        for cfg in sizes.values():
            cfg["updates"] = a.teacher_updates
    record: List = []
    started = time.time()
    results = {"tiny": a.tiny, "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                           "torch": torch.__version__, "cuda": torch.cuda.is_available()},
               "tasks": {}}

    def body() -> int:
        try:
            for task in tasks:
                results["tasks"][task] = run_task(task, a.out, sizes[task], plans, a.budget, a.transfer_share,
                                                  {"transfer_lr": a.transfer_lr, "finetune_lr": a.finetune_lr},
                                                  record, a.attention_window)
        except ValueError as e:  # a conversion or attention flag refused: the message names the fix
            raise OneLineError(str(e)) from None
        results["seconds"] = round(time.time() - started)
        keep_earlier(os.path.join(a.out, "results.json"), results)
        write_atomic(os.path.join(a.out, "results.json"), json.dumps(results, indent=1))
        md = table(results)
        write_atomic(os.path.join(a.out, "table.md"), md)
        print(md)
        return 0

    return run_main(p.prog, body)


if __name__ == "__main__":
    sys.exit(main())
