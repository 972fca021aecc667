"""Key-Value Transformer (Borji, "Key-Value Transformer", arXiv 2305.19129, 2023): the synthetic tasks as the paper
ran them (an encoder-only classifier of every position, over the configuration sweep of the author's script), the
same tasks as sequence-to-sequence (ours), the Multi30k recipe, and how the tables are drawn, with the reference
notebooks' accuracies beside them.

The tasks themselves are defined once, in kvattn_fairseq/data/synthetic.py.  Facts and their primary sources:
docs/papers/kv-transformer.md.
"""
import itertools
import re
from collections import defaultdict
from typing import Dict, List, Optional

from ..data.synthetic import TASKS
from . import markdown as md
from .spec import Recipe, Row, Table, flags

# aliborji/kv-transformer `Reverse_sort_pos.py` (docs/papers/kv-transformer.md, "Synthetic tasks"): Adam lr 1e-3,
# cosine schedule with a 5-step warm-up, gradient clipping 5, batch 128, 2 epochs of 50,000 sequences (390 full
# batches an epoch: 780 updates, which fairseq's cosine schedule needs as --max-update), cross-entropy averaged
# over positions.
_OPTIMISATION = """
    --source-lang src --target-lang tgt
    --optimizer adam --adam-betas '(0.9, 0.999)' --lr 1e-3 --clip-norm 5.0
    --lr-scheduler cosine --warmup-updates 5
    --batch-size 128 --max-epoch 2 --max-update 780
"""
# The paper's model: an encoder-only classifier of every position (architecture kv_position_classifier: post-norm
# layers of 64, FFN 2 * 64, 2 layers, 4 heads, dropout 0.1; the sweep changes width, depth and heads per row).
_CLASSIFICATION = flags(_OPTIMISATION + "--criterion position_classification")
# Ours: the same tasks as sequence-to-sequence, a fairseq encoder-decoder (architecture kv_synthetic: 2+2 layers of
# 64, FFN 128, 4 heads, dropout 0.1) with plain cross-entropy.  Arms: the architecture is symmetric KV; `--kind
# kv_asym` is KV + the 2D positional term, `--kind softmax` the QKV baseline.
_SYNTHETIC = flags(_OPTIMISATION + "--criterion cross_entropy")

# aliborji/kv-transformer `translation_transformer_pos.ipynb`, Multi30k en->de (docs/papers/kv-transformer.md,
# "Translation"): Adam betas (0.9, 0.98), eps 1e-9, the Noam schedule d^-0.5 * min(step^-0.5, step * 4000^-1.5),
# which is fairseq's inverse_sqrt with 4000 warm-up steps from 0 and a peak of (256 * 4000)^-0.5 = 9.882e-4 at the
# architecture's d_model 256; label smoothing 0.1; batches of 50 sentences; 20 epochs; dropout 0.1 (the
# architecture's).  The notebook decodes greedily (fairseq-generate --beam 1).
_MULTI30K = flags("""
    --source-lang en --target-lang de
    --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-09
    --lr-scheduler inverse_sqrt --warmup-updates 4000 --lr 9.882e-4
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1
    --batch-size 50 --required-batch-size-multiple 1   # exactly 50 (fairseq would round batches down to 48)
    --max-epoch 20
""")

RECIPES = (
    # one recipe for the five tasks: the task is in the data
    Recipe("kv_classification", "Key-Value Transformer, synthetic tasks, per-position classifier (the paper's setup)",
           "kv_position_classification", "kv_position_classifier", _CLASSIFICATION,
           "kv-transformer Reverse_sort_pos.py (docs/papers/kv-transformer.md)",
           "python -m kvattn_fairseq synthetic --task TASK --out DIR  (DATA_BIN = DIR/data-bin; add --min-len 128 "
           "--max-len 128 for the sweep's longer sequences)"),
) + tuple(
    Recipe(f"kv_synthetic_{task}", f"Key-Value Transformer, synthetic task '{task}', as sequence-to-sequence (ours)",
           "translation", "kv_synthetic", _SYNTHETIC,
           "kv-transformer Reverse_sort_pos.py (docs/papers/kv-transformer.md)",
           f"python -m kvattn_fairseq synthetic --task {task} --out DIR  (DATA_BIN = DIR/data-bin)")
    for task in TASKS) + (
    Recipe("kv_multi30k_en_de", "Key-Value Transformer, Multi30k En-De translation", "translation", "kv_multi30k",
           _MULTI30K, "kv-transformer translation_transformer_pos.ipynb (docs/papers/kv-transformer.md)",
           "fairseq-preprocess output of Multi30k en-de (dict.en.txt, dict.de.txt; no prepare script here)"),
)

# The tables' columns: (title, the kind in self-attention; cross-attention, where there is one, is softmax)
COLUMNS = (("QKV (softmax)", "softmax"), ("KV + 2D pos (kv_asym)", "kv_asym"), ("KV symmetric (kv)", "kv"))
# The reference notebooks' grand averages of test per-position accuracy (plot.ipynb: over 16-19 configurations of
# the encoder-only classifier, the mean and population standard deviation of each configuration's mean over its
# runs), per task in COLUMNS order (docs/papers/kv-transformer.md, "Published numbers").
NOTEBOOK = {"reverse": (0.6978, 0.7181, 0.7046), "sort": (0.9708, 0.9628, 0.9664), "copy": (1.0, 1.0, 1.0),
            "swap": (0.588, 0.6711, 0.5974), "sub": (1.0, 1.0, 1.0)}
NOTEBOOK_STD = {"reverse": (0.38, 0.35, 0.37), "sort": (0.033, 0.038, 0.035), "copy": (0.0, 0.0, 0.0),
                "swap": (0.42, 0.37, 0.41), "sub": (0.0, 0.0, 0.0)}

# The sweep of Reverse_sort_pos.py (its commented-out driver): d_model, layers, heads, sequence length, and 3 runs
# of each configuration (in this order); lengths other than the data's 64 are datasets of their own
# (run/steps.py prepares them).
SWEEP = dict(d_model=(64, 256), layers=(2, 4), heads=(2, 4), length=(64, 128), seeds=(1, 2, 3))


def _sweep_rows(task: str, i: int, kind: str):
    for d, layers, heads, length, seed in itertools.product(*SWEEP.values()):
        yield Row(f"{task}-{kind}-d{d}-l{layers}-h{heads}-n{length}-s{seed}", task, "kv_classification",
                  {"encoder": kind}, kind=kind, data=f"synthetic-{task}" + ("" if length == 64 else f"-len{length}"),
                  flags=("--encoder-embed-dim", str(d), "--encoder-layers", str(layers), "--encoder-attention-heads",
                         str(heads), "--seed", str(seed)),
                  published={"position_accuracy": NOTEBOOK[task][i], "position_accuracy_std": NOTEBOOK_STD[task][i]})


def config(name: str) -> str:
    """A run's configuration: its row name without the seed (runs of one configuration are averaged first)."""
    return re.sub(r"-s\d+$", "", name)


def _mean_std(values: List[float]):
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5


def _draw_classification(table: Table, results: List[Dict], bench: Optional[Dict]) -> List[str]:
    kinds = [k for _, k in COLUMNS]
    extra = sorted({r["model"]["attention"].get("encoder") for r in results} - set(kinds))
    tasks = list(dict.fromkeys(row.label for row in table.rows))
    paper = {(row.label, row.kind): row.published for row in table.rows}
    cells = defaultdict(lambda: defaultdict(list))  # (task, kind) -> configuration -> runs
    for r in results:
        task = r["metrics"].get("synthetic_task")
        if task not in tasks:
            tasks.append(task)
        cells[(task, r["model"]["attention"].get("encoder"))][config(r["name"])].append(r["metrics"])
    header, rows = ["task"], []
    for title, _ in COLUMNS:
        header += [title, title.split(" (")[0] + ", notebooks"]
    header += extra
    for task in tasks:
        line = [task]
        for i, kind in enumerate(kinds + extra):
            configs = cells.get((task, kind))
            if not configs:
                line.append(md.NOT_RUN)
            else:
                runs = sum(len(v) for v in configs.values())
                pos = _mean_std([sum(m["position_accuracy"] for m in v) / len(v) for v in configs.values()])
                seq = _mean_std([sum(m["sequence_accuracy"] for m in v) / len(v) for v in configs.values()])
                line.append(f"{pos[0]:.4f} ({pos[1]:.2f}); exact {seq[0]:.4f} [{len(configs)} cfg, {runs} runs]")
            if i < len(kinds):
                p = paper.get((task, kind))
                line.append(f"{p['position_accuracy']} ({p['position_accuracy_std']})" if p else md.NONE)
        rows.append(line)
    return md.markdown(header, rows) + [""] + list(table.notes)


def column(r: Dict) -> str:
    """A synthetic-task result's column: the kind in both self-attentions when they agree and cross-attention is
    softmax (the paper's setting), else the whole layout."""
    att = r["model"]["attention"]
    enc, dec, cross = att.get("encoder"), att.get("decoder"), att.get("cross", "softmax")
    return enc if enc == dec and cross == "softmax" else md.layout(att, ("encoder", "decoder", "cross"))


def _draw(table: Table, results: List[Dict], bench: Optional[Dict]) -> List[str]:
    columns = list(COLUMNS) + [(c, c) for c in sorted({column(r) for r in results} - {k for _, k in COLUMNS})]
    tasks = list(dict.fromkeys(row.label for row in table.rows))
    cells = defaultdict(list)
    for r in results:
        task = r["metrics"].get("synthetic_task")
        if task not in tasks:
            tasks.append(task)
        cells[(task, column(r))].append(r)
    rows = []
    for task in tasks:
        line = [task]
        for _, kind in columns:
            runs = cells.get((task, kind), [])
            if not runs:
                line.append(md.NOT_RUN)
                continue
            seq = sum(r["metrics"]["sequence_accuracy"] for r in runs) / len(runs)
            tok = sum(r["metrics"]["token_accuracy"] for r in runs) / len(runs)
            line.append(f"{100 * seq:.1f} ({100 * tok:.1f})" + (f", mean of {len(runs)} runs" if len(runs) > 1
                                                                 else ""))
        rows.append(line)
    reference = "; ".join(f"{task} " + " / ".join(f"{100 * table.row(f'{task}-{k}').published['accuracy']:.1f}"
                                                   for _, k in COLUMNS) for task in NOTEBOOK)
    return md.markdown(["task"] + [c for c, _ in columns], rows) + [""] + list(table.notes) + [
        f"For reference only, the authors' notebooks (encoder-only per-position classification, mean over "
        f"configurations, QKV / KV + pos / KV symmetric, %): {reference}; the same setup as the notebooks is the "
        f"per-position classification table."]


TABLES = (
    Table("kv_classification", "Key-Value Transformer: per-position classification of the synthetic tasks",
          "classify", "", tuple(row for task in TASKS for i, (_, kind) in enumerate(COLUMNS)
                                for row in _sweep_rows(task, i, kind)),
          _draw_classification, checkpoint="checkpoint_last.pt", extra_kinds=False,
          notes=("Cells: test per-position accuracy, the mean (population std) over configurations of each "
                 "configuration's mean over its runs, as the notebooks' plot.ipynb computes; exact: the same for "
                 "the fraction of sequences labelled right everywhere; cfg / runs: what the cell averages.  The "
                 "\"notebooks\" columns: the authors' figures, mean (std) (docs/papers/kv-transformer.md).",
                 "Rows: d_model {64, 256} x layers {2, 4} x heads {2, 4} x length {64, 128} x 3 seeds per task "
                 "and kind, the sweep of Reverse_sort_pos.py; the notebooks averaged 16-19 configuration files "
                 "per task (which extra ones reverse and sort had is not recorded).  The model is the last "
                 "checkpoint, as the script tests the model it ends with.  Other encoder kinds (scripts/train.sh "
                 "kv_classification DATA SAVE --kind K, then the classify evaluator) get columns of their own.")),
    Table("kv_synthetic", "Key-Value Transformer: synthetic tasks as sequence-to-sequence [ours]", "synthetic", "",
          tuple(Row(f"{task}-{kind}", task, f"kv_synthetic_{task}",
                    {"encoder": kind, "decoder": kind, "cross": "softmax"}, kind=kind, data=f"synthetic-{task}",
                    published={"accuracy": NOTEBOOK[task][i]} if task in NOTEBOOK else {})
                for task in TASKS for i, (_, kind) in enumerate(COLUMNS)),
          _draw, tiny_evaluation={"extra": ["--max-len-b", "20"]}, extra_kinds=False,
          notes=("Ours, not the paper's setup (that is the per-position classification table): cells are "
                 "exact-match sequence accuracy % (token accuracy %), fairseq encoder-decoder, greedy decoding "
                 "unless the run says otherwise; the attention kind is the one in encoder and decoder "
                 "self-attention (cross-attention is softmax).",)),
)
