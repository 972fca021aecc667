"""Key-Value Transformer (Borji, "Key-Value Transformer", arXiv 2305.19129, 2023): the synthetic-task and
Multi30k recipes, the synthetic-task table (tasks as rows, attention kinds as columns) with the reference
notebooks' accuracies, and how it is drawn.

The tasks themselves are defined once, in kvattn_fairseq/data/synthetic.py.  Facts and their primary sources:
docs/papers/kv-transformer.md.
"""
from collections import defaultdict
from typing import Dict, List, Optional

from ..data.synthetic import TASKS
from . import markdown as md
from .spec import Recipe, Row, Table, flags

# aliborji/kv-transformer `Reverse_sort_pos.py` (docs/papers/kv-transformer.md, "Synthetic tasks"): Adam lr 1e-3,
# cosine schedule with a 5-step warm-up, gradient clipping 5, batch 128, 2 epochs of 50,000 sequences (390 full
# batches an epoch: 780 updates, which fairseq's cosine schedule needs as --max-update).  The paper's model is an
# encoder-only per-position classifier; here it is a fairseq encoder-decoder (architecture kv_synthetic: 2+2 layers
# of 64, FFN 128, 4 heads, dropout 0.1), trained with plain cross-entropy like the paper's classifier.  Arms: the
# architecture is symmetric KV; `--kind kv_asym` is KV + the 2D positional term, `--kind softmax` the QKV baseline.
_SYNTHETIC = flags("""
    --source-lang src --target-lang tgt
    --optimizer adam --adam-betas '(0.9, 0.999)' --lr 1e-3 --clip-norm 5.0
    --lr-scheduler cosine --warmup-updates 5
    --batch-size 128 --max-epoch 2 --max-update 780
    --criterion cross_entropy
""")

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

RECIPES = tuple(
    Recipe(f"kv_synthetic_{task}", f"Key-Value Transformer, synthetic task '{task}'", "translation",
           "kv_synthetic", _SYNTHETIC, "kv-transformer Reverse_sort_pos.py (docs/papers/kv-transformer.md)",
           f"python -m kvattn_fairseq.synthetic --task {task} --out DIR  (DATA_BIN = DIR/data-bin)")
    for task in TASKS) + (
    Recipe("kv_multi30k_en_de", "Key-Value Transformer, Multi30k En-De translation", "translation", "kv_multi30k",
           _MULTI30K, "kv-transformer translation_transformer_pos.ipynb (docs/papers/kv-transformer.md)",
           "fairseq-preprocess output of Multi30k en-de (dict.en.txt, dict.de.txt; no prepare script here)"),
)

# The table's columns: (title, kind in both self-attentions; cross-attention is softmax)
COLUMNS = (("QKV (softmax)", "softmax"), ("KV + 2D pos (kv_asym)", "kv_asym"), ("KV symmetric (kv)", "kv"))
# The reference notebooks' grand averages of test accuracy (plot.ipynb; an encoder-only per-position classifier,
# not this port's setup), per task in COLUMNS order (docs/papers/kv-transformer.md, "Published numbers").
NOTEBOOK = {"reverse": (0.6978, 0.7181, 0.7046), "sort": (0.9708, 0.9628, 0.9664), "copy": (1.0, 1.0, 1.0),
            "swap": (0.588, 0.6711, 0.5974), "sub": (1.0, 1.0, 1.0)}


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
        f"configurations, QKV / KV + pos / KV symmetric, %): {reference}."]


TABLES = (
    Table("kv_synthetic", "Key-Value Transformer: synthetic tasks", "synthetic", "",
          tuple(Row(f"{task}-{kind}", task, f"kv_synthetic_{task}",
                    {"encoder": kind, "decoder": kind, "cross": "softmax"}, kind=kind, data=f"synthetic-{task}",
                    published={"accuracy": NOTEBOOK[task][i]} if task in NOTEBOOK else {})
                for task in TASKS for i, (_, kind) in enumerate(COLUMNS)),
          _draw, tiny_eval_flags=("--", "--max-len-b", "20"), extra_kinds=False,
          notes=("Cells: exact-match sequence accuracy % (token accuracy %), fairseq encoder-decoder, greedy decoding "
                 "unless the run says otherwise; the attention kind is the one in encoder and decoder "
                 "self-attention (cross-attention is softmax).",)),
)
