"""Transformer-MGK / MLK (Nguyen et al., "Improving Transformers with Probabilistic Attention Keys", ICML 2022):
the WikiText-103 recipe of its Table 3, the table's rows with the published perplexities (plus its E-step / pi
ablation on the same task, ours), and how it is drawn.

Facts and their primary sources: docs/papers/mgk.md.
"""
from typing import Dict, List, Optional

from . import markdown as md
from .memsizer import window
from .spec import LM_TINY, Recipe, Row, Table, flags

# The official README command and, for what it leaves out, the defaults of src/train.py in
# minhtannguyen/transformer-mgk, language-modeling/lmtool-fwms (docs/papers/mgk.md, "Language-model recipe"):
# Adam lr 2.5e-4, warmup 2000, max_step 500000, tgt_len 256, mem_len 0, batch 96, adaptive softmax, seed 1111;
# torch Adam's betas, gradient clipping 0.25 (--clip), cosine annealing to 0 (--scheduler cosine, --eta_min 0) after
# a linear warm-up (fairseq's cosine period is max_update - warmup rather than max_update: 0.4% shorter).  Their
# batch of 96 was split over 2 GPUs by DataParallel; with fairseq's data parallelism pass e.g.
# `-- --distributed-world-size 2 --batch-size 48` for the same update.  Model settings (16 layers of 128, head
# width 16, FFN 2048, dropout 0.1, no attention dropout, heads per row) are the architectures'.
_LM = flags("""
    --criterion adaptive_loss
    --ddp-backend legacy_ddp            # [ours] fairseq's adaptive_loss refuses its default pytorch_ddp
    --optimizer adam --adam-betas '(0.9, 0.999)' --clip-norm 0.25
    --lr 2.5e-4 --lr-scheduler cosine --warmup-updates 2000
    --max-update 500000
    --tokens-per-sample 256 --sample-break-mode none --batch-size 96
    --skip-invalid-size-inputs-valid-test
    --seed 1111
""")

# One recipe per WikiText-103 architecture of the paper (kvattn_fairseq/models/architectures.py).
RECIPES = tuple(
    Recipe(f"mgk_wikitext103_{name}", f"Transformer-MGK paper, WikiText-103, Table 3 row {name}",
           "language_modeling", f"mgk_lm_wiki103_{name}", _LM,
           "transformer-mgk README command and src/train.py defaults (docs/papers/mgk.md)",
           "scripts/prepare-wikitext103.sh --out DIR (DATA_BIN = DIR/data-bin: dict.txt)", tiny=LM_TINY)
    for name in ("softmax8", "mgk4", "smgk4", "smgk8", "mgk8", "linear8", "mlk4", "mlk8"))


def _ppl(valid: float, test: float):
    return {"valid_ppl": valid, "test_ppl": test}


# Table 3 of the paper, in its order, with its perplexities (docs/papers/mgk.md, "Published numbers"); sMGK 4 heads
# is ours and has no published number.
ROWS = (
    Row("softmax8", "Softmax 8 heads", "mgk_wikitext103_softmax8", {"decoder": "softmax"}, heads=8,
        published=_ppl(33.15, 34.29)),
    Row("mgk4", "MGK 4 heads", "mgk_wikitext103_mgk4", {"decoder": "mgk"}, heads=4, published=_ppl(33.28, 34.21)),
    Row("smgk4", "sMGK 4 heads", "mgk_wikitext103_smgk4", {"decoder": "smgk"}, heads=4),
    Row("smgk8", "sMGK 8 heads", "mgk_wikitext103_smgk8", {"decoder": "smgk"}, heads=8, published=_ppl(32.92, 33.99)),
    Row("mgk8", "MGK 8 heads", "mgk_wikitext103_mgk8", {"decoder": "mgk"}, heads=8, published=_ppl(32.74, 33.93)),
    Row("linear8", "Linear 8 heads", "mgk_wikitext103_linear8", {"decoder": "linear"}, heads=8,
        published=_ppl(38.07, 39.08)),
    Row("mlk4", "MLK 4 heads", "mgk_wikitext103_mlk4", {"decoder": "mlk"}, heads=4, published=_ppl(38.49, 39.46)),
    Row("mlk8", "MLK 8 heads", "mgk_wikitext103_mlk8", {"decoder": "mlk"}, heads=8, published=_ppl(37.78, 38.99)),
) + tuple(
    # The paper's inference/learning ablation (its Table 4, on LRA with one head: docs/papers/mgk.md, "EM-updated
    # mixture weights") as rows of this table, ours: A is the row above (soft E-step, pi learned by gradient), B the
    # soft E-step with pi set by the EM rule, C the hard E-step.
    Row(f"{name}-{setting}", f"{label} + {text} [ours]", f"mgk_wikitext103_{name}", {"decoder": kind}, heads=4,
        flags=flags, options=options)
    for name, label, kind in (("mgk4", "MGK 4 heads", "mgk"), ("smgk4", "sMGK 4 heads", "smgk"))
    for setting, text, flags, options in (
        ("em", "Soft-E, EM π (B)", ("--mgk-pi", "em"), {"mgk_pi": "em"}),
        ("hard", "Hard-E (C)", ("--mgk-estep", "hard"), {"mgk_estep": "hard"}))
)


def _draw(table: Table, results: List[Dict], bench: Optional[Dict]) -> List[str]:
    rows = []
    for label, row, _att, r in md.rows_and_runs(table, results):
        m = r["metrics"] if r else {}
        paper = (row.published if row else {}) or {}
        rows.append([label, md.num((m.get("valid") or {}).get("ppl")), md.num((m.get("test") or {}).get("ppl")),
                     f"{paper['valid_ppl']:.2f}" if paper else md.NONE,
                     f"{paper['test_ppl']:.2f}" if paper else md.NONE, window(r), md.run_cell(r)])
    return md.markdown(["model", "valid ppl", "test ppl", "paper valid", "paper test", "context / scored tokens",
                        "run"], rows) + [""] + list(table.notes)


TABLES = (
    # The MGK code evaluates 256-token blocks without memory (mem_len 0): no context window.
    Table("mgk_lm", "Transformer-MGK: language modelling (WikiText-103, Table 3)", "lm", "wikitext103",
          ROWS, _draw, evaluation={"tokens_per_sample": 256, "context_window": 0},
          tiny_evaluation={"tokens_per_sample": 64, "context_window": 0}, extra_kinds=False,
          notes=("Paper numbers: Nguyen et al., Table 3 (OpenReview text; the camera-ready may differ), 16 layers, "
                 "sliding window of 256 scoring the last position (here: --tokens-per-sample 256 "
                 "--context-window 255).",
                 "The [ours] rows + Soft-E, EM π (B) and + Hard-E (C) put the paper's inference/learning ablation "
                 "(its Table 4: A = soft E-step with learned π, here the plain MGK / sMGK 4 heads rows; B = π set by "
                 "the EM rule, --mgk-pi em; C = hard E-step, --mgk-estep hard) on this table's task; the paper ran "
                 "it on LRA with one head, a task outside this project.")),
)
