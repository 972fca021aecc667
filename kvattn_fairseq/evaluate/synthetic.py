"""Synthetic sequence tasks (the Key-Value Transformer paper's reverse / sort / copy / swap / sub) as translation:
fairseq-generate on DIR/data-bin, then accuracy against DIR/test.tgt.

Input directory: DIR/data-bin (binarized src-tgt, symbols separated by spaces, no BPE), and the raw test set in
the order of the binarized one, one sequence per line: DIR/test.src and DIR/test.tgt, or DIR/raw/test.src and
DIR/raw/test.tgt (the layout `python -m kvattn_fairseq synthetic` writes).  The task's name is --synthetic-task,
else the "task" of DIR/synthetic.json (written by `python -m kvattn_fairseq synthetic`), else the directory's name.

    sequence_accuracy  fraction of test sequences generated exactly (the main number)
    token_accuracy     fraction of reference positions i whose token the hypothesis has at position i (a
                       hypothesis shorter than its reference gets the missing positions wrong; extra tokens are
                       not counted).  This is the closest to the paper's per-position accuracy, which came from
                       an encoder-only classifier (docs/papers/kv-transformer.md), so neither number is the paper's.
    sacrebleu          corpus sacreBLEU of the hypotheses as fairseq prints them against the references (sacreBLEU's
                       default 13a tokenization; no subword model to undo), with its signature: the conversion
                       recovery experiment's number on the reversal task (run/specs/recovery.py)

Decoding defaults to greedy (--beam 1): the tasks are deterministic.
"""
import json
import os
from typing import Dict, List, Sequence

from ..util.errors import OneLineError
from . import fairseq_tools as tools, generation, inputs
from .wmt import sacrebleu_score

NAME = "synthetic"  # python -m kvattn_fairseq evaluate synthetic ...
MAIN_METRIC = "sequence_accuracy"
HELP = "synthetic sequence tasks: exact-match accuracy"
# this evaluator's own options and their defaults (its command line's too)
OPTIONS = {"beam": 1, "lenpen": 1.0, "gen_subset": "test", "synthetic_task": None}


def add_arguments(p) -> None:
    generation.add_arguments(p, OPTIONS)
    p.add_argument("--synthetic-task", metavar="NAME",
                   help="reverse, sort, copy, swap, sub, ... (default: the data directory's name)")



def accuracy(hyps: Sequence[str], refs: Sequence[str]) -> Dict[str, float]:
    exact, right, total = 0, 0, 0
    for hyp, ref in zip(hyps, refs):
        h, r = hyp.split(), ref.split()
        exact += h == r
        right += sum(1 for i, tok in enumerate(r) if i < len(h) and h[i] == tok)
        total += len(r)
    n = max(len(refs), 1)
    return {"sequence_accuracy": exact / n, "token_accuracy": right / total if total else 0.0}


def recorded_task(data: str):
    path = os.path.join(data, "synthetic.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise OneLineError(f"--data: {path} is not readable JSON ({e})") from None
    return meta.get("task") if isinstance(meta, dict) else None


def run(a) -> Dict:
    data = inputs.require_dir(a.data, "--data")
    data_bin = os.path.join(data, "data-bin")
    inputs.require_data_bin(data_bin, "--data", [a.gen_subset])
    raw = data if os.path.isfile(os.path.join(data, f"{a.gen_subset}.tgt")) else os.path.join(data, "raw")
    inputs.read_lines(os.path.join(raw, f"{a.gen_subset}.src"), f"--data (source {a.gen_subset}.src)")
    ref_path = os.path.join(raw, f"{a.gen_subset}.tgt")
    refs: List[str] = inputs.read_lines(ref_path, f"--data (reference {a.gen_subset}.tgt)")
    task_name = a.synthetic_task or recorded_task(data) or os.path.basename(os.path.normpath(os.path.abspath(data)))
    tools.check_extra_flags(a.extra, tools.MANAGED_GENERATE_FLAGS + tools.DETOK_FLAGS)
    gen = generation.generate_in_order(a, data_bin, ref_path, len(refs))
    metrics: Dict = accuracy(gen.hypotheses, refs)
    metrics["synthetic_task"] = task_name
    bleu, signature = sacrebleu_score(gen.hypotheses, refs)
    metrics.update(sacrebleu=round(bleu["score"], 2), sacrebleu_signature=signature)
    return generation.save(a, NAME, MAIN_METRIC, gen, data=data, hyp_suffix="tgt", hypotheses=gen.hypotheses,
                           settings={}, metrics=metrics, main_value=metrics["sequence_accuracy"],
                           signature="exact-match sequence accuracy on whitespace tokens")


def summary_line(result: Dict) -> str:
    m = result["metrics"]
    return (f"{m['synthetic_task']}: sequence accuracy {100 * m['sequence_accuracy']:.1f}%, token accuracy "
            f"{100 * m['token_accuracy']:.1f}%, sacreBLEU {m['sacrebleu']:.2f}; {result['sentences']} sequences")
