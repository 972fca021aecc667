"""MemSizer (Zhang & Cai, "Linearizing Transformer with Key-Value Memory", EMNLP 2022): its training recipes, its
three tables (machine translation, summarization, language modelling) and how they are drawn.

Facts and their primary sources: docs/papers/memsizer.md.  Values marked [ours] are this port's choices where
the sources give nothing.
"""
from typing import Dict, List, Optional

from . import markdown as md
from .spec import LM_TINY, Recipe, Row, Table, flags

# The official recipe, jcyk/memsizer `mt_ende.sh` (fairseq 0.10; docs/papers/memsizer.md, "Machine translation
# recipe").  The MemSizer settings (softmax encoder, MemSizer decoder with causal k=4 and cross k=32, init scales
# 8/8, 16 heads) are the architecture's own.
_MT = flags("""
    --source-lang en --target-lang de   # scripts/prepare-wmt16-en-de.sh's (and Scaling NMT's) naming
    --share-all-embeddings              # mt_ende.sh (it also passes --share-decoder-input-output-embed, implied)
    --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0
    --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07
    --dropout 0.3
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1
    --max-tokens 3584 --update-freq 16 --fp16
    --seed 8 --max-update 90000 --no-epoch-checkpoints --find-unused-parameters
    # validation BLEU and model selection as in mt_ende.sh (beam 4, lenpen 0.6, max_len 1.2x+10)...
    --eval-bleu --eval-bleu-args '{"beam": 4, "lenpen": 0.6, "max_len_a": 1.2, "max_len_b": 10}'
    --best-checkpoint-metric bleu --maximize-best-checkpoint-metric
    # ...[ours] decoded for scripts/prepare-wmt16-en-de.sh's data (sentencepiece on raw text, no Moses) instead of
    # the paper's Moses-tokenized subword-nmt data (--eval-bleu-detok moses --eval-bleu-remove-bpe): pieces joined,
    # nothing to detokenize, sacreBLEU's 13a tokenization
    --eval-bleu-remove-bpe sentencepiece --eval-bleu-detok space
    # mt_ende.sh also passes --reset-optimizer; it is left out because it would reset the optimizer on every resume
""")

# No summarization recipe was released and the paper's settings could not be retrieved (docs/papers/memsizer.md,
# "Summarization").  [ours] everything: MemSizer's MT recipe at Transformer-base size (architecture
# memsizer_cnn_dm), with the sources truncated to 1024 tokens as in fairseq's BART CNN/DM recipe
# (fairseq's examples/bart/README.summarization.md).
_CNN_DM = flags("""
    --source-lang source --target-lang target --truncate-source   # prepare-cnndm.sh's (= fairseq BART's) naming
    --share-all-embeddings
    --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 --weight-decay 0.0
    --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1
    --max-tokens 4096 --update-freq 8 --fp16                      # [ours]
    --seed 8 --max-update 50000 --no-epoch-checkpoints            # [ours]
    --skip-invalid-size-inputs-valid-test --find-unused-parameters
""")

# The official `lm_wikitext-103.sh` (docs/papers/memsizer.md, "Language-model recipe"), written for fairseq 0.10,
# whose cosine schedule took --lr as the floor, --max-lr as the peak and --min-lr as the stopping point.  fairseq
# 0.12 renamed these: peak --lr 1.0, floor --min-lr 1e-4, stop --stop-min-lr 1e-9 (the same schedule; fairseq's
# own WikiText-103 adaptive-input recipe made the same change).  Model settings (32 pre-norm layers, layerdrop
# 0.2, dropout 0.2, MemSizer k=32, init scales 32/1) are the architecture's own.
_LM = flags("""
    --criterion adaptive_loss
    --optimizer nag --clip-norm 0.1
    --lr-scheduler cosine --lr 1.0 --min-lr 1e-4 --stop-min-lr 1e-09
    --t-mult 2 --lr-period-updates 270000 --lr-shrink 0.75 --warmup-updates 16000 --warmup-init-lr 1e-07
    --max-tokens 3072 --update-freq 3 --tokens-per-sample 512 --sample-break-mode none
    --skip-invalid-size-inputs-valid-test
    --fp16 --fp16-init-scale 8
    --ddp-backend legacy_ddp            # the script's no_c10d (an alias in fairseq 0.12)
    --seed 8 --max-update 286000 --save-interval 2 --find-unused-parameters
    # the script also passes --reset-optimizer; left out (it would reset the optimizer on every resume)
""")

RECIPES = (
    Recipe("memsizer_wmt16_en_de", "MemSizer, WMT16 En-De, Transformer-big", "translation",
           "memsizer_wmt_en_de_big", _MT, "jcyk/memsizer mt_ende.sh (docs/papers/memsizer.md)",
           "scripts/prepare-wmt16-en-de.sh --out DIR (DATA_BIN = DIR/data-bin: en-de, joined dictionary)"),
    Recipe("memsizer_cnn_dm", "MemSizer, CNN/DailyMail summarization", "translation", "memsizer_cnn_dm",
           _CNN_DM, "no recipe released: our choices (docs/papers/memsizer.md, Summarization)",
           "scripts/prepare-cnndm.sh --out DIR (DATA_BIN = DIR/data-bin: source-target, joined dictionary)"),
    Recipe("memsizer_wikitext103", "MemSizer, WikiText-103 language model", "language_modeling",
           "memsizer_lm_wiki103", _LM, "jcyk/memsizer lm_wikitext-103.sh (docs/papers/memsizer.md)",
           "scripts/prepare-wikitext103.sh --out DIR (DATA_BIN = DIR/data-bin: dict.txt)", tiny=LM_TINY),
)

_MT_LAYOUT = {"encoder": "softmax", "decoder": "memsizer", "cross": "memsizer"}
_SOFTMAX = {"encoder": "softmax", "decoder": "softmax", "cross": "softmax"}
UNPUBLISHED = ("MemSizer's published numbers could not be retrieved (docs/papers/memsizer.md, Published numbers), "
               "so there is no paper column; the rows are the paper's layout and its baseline.")


def _draw_mt(table: Table, results: List[Dict], bench: Optional[Dict]) -> List[str]:
    positions = table.positions()
    header = ["model", "attention (enc self / dec self / cross)", "sacreBLEU", "tok-BLEU (compound split)", "params"]
    bench_header, bench_cells, bench_note = md.bench_columns(bench) if bench else (None, None, None)
    rows = []
    for label, _row, att, r in md.rows_and_runs(table, results):
        m = r["metrics"] if r else {}
        cells = [label, md.layout(att, positions), md.num(m.get("sacrebleu")),
                 md.num(m.get("tok_bleu_compound_split")), md.params(r)]
        if bench:
            cells += bench_cells("vanilla" if dict(att) == _SOFTMAX else att.get("decoder"))
        rows.append(cells + [md.run_cell(r)])
    sigs = sorted({r["metrics"].get("sacrebleu_signature", "") for r in results} - {""})
    toks = sorted({r["metrics"].get("tok_bleu_tokenizer", "") for r in results} - {""})
    notes = ["sacreBLEU: detokenized, against the raw references" +
             (f"; signature {', '.join(f'`{s}`' for s in sigs)}" if sigs else "") + ".",
             "tok-BLEU (compound split): Moses-tokenized, `##AT##-##AT##` compound splitting, no smoothing "
             "(the AIAYN / tensor2tensor / fairseq Scaling-NMT convention); inflated, secondary, not comparable "
             "with sacreBLEU" + (f"; tokenizer {', '.join(toks)}" if toks else "") + "."]
    return md.markdown(header + (bench_header or []) + ["run"], rows) + [""] + notes + \
        ([bench_note] if bench_note else []) + list(table.notes)


def _draw_summarization(table: Table, results: List[Dict], bench: Optional[Dict]) -> List[str]:
    positions = table.positions()
    rows = [[label, md.layout(att, positions)] +
            [md.num(((r or {}).get("metrics", {}).get(t) or {}).get("f")) for t in
             ("rouge1", "rouge2", "rougeL", "rougeLsum")] + [md.params(r), md.run_cell(r)]
            for label, _row, att, r in md.rows_and_runs(table, results)]
    return md.markdown(["model", "attention (enc self / dec self / cross)", "R-1", "R-2", "R-L", "R-Lsum", "params",
                        "run"], rows) + [""] + list(table.notes)


def window(r: Optional[Dict]) -> str:
    """The evaluation window of a language-model result: context tokens / scored tokens per window."""
    return md.NONE if r is None else f"{r['metrics'].get('context_window')} / {r['metrics'].get('scored_block')}"


def _draw_lm(table: Table, results: List[Dict], bench: Optional[Dict]) -> List[str]:
    rows = []
    for label, _row, att, r in md.rows_and_runs(table, results):
        m = r["metrics"] if r else {}
        rows.append([label, att.get("decoder", "-"), md.num((m.get("valid") or {}).get("ppl")),
                     md.num((m.get("test") or {}).get("ppl")), window(r), md.params(r), md.run_cell(r)])
    return md.markdown(["model", "attention", "valid ppl", "test ppl", "context / scored tokens", "params", "run"],
                       rows) + [""] + list(table.notes)


TABLES = (
    # The released MT recipe selects checkpoint_best by validation BLEU, no averaging (mt_ende.sh).
    Table("memsizer_mt", "MemSizer: machine translation (WMT16 En-De, newstest2014)", "wmt", "wmt16",
          (Row("transformer", "Transformer", "memsizer_wmt16_en_de", _SOFTMAX, kind="softmax"),
           Row("memsizer", "MemSizer", "memsizer_wmt16_en_de", _MT_LAYOUT)),
          _draw_mt, tiny_evaluation={"extra": ["--max-len-b", "20"]}, notes=(UNPUBLISHED,)),
    Table("memsizer_summarization", "MemSizer: abstractive summarization (CNN/DailyMail)", "cnndm", "cnndm",
          (Row("transformer", "Transformer", "memsizer_cnn_dm", _SOFTMAX, kind="softmax"),
           Row("memsizer", "MemSizer", "memsizer_cnn_dm", _MT_LAYOUT)),
          _draw_summarization, tiny_evaluation={"min_len": 1, "max_len_b": 20},
          notes=("ROUGE F1 x100 (rouge-score, use_stemmer=True, mean over examples); R-Lsum on newline-separated "
                 "sentences. MemSizer's paper did not publish its summarization setup (docs/papers/memsizer.md, "
                 "Summarization).",)),
    # The paper's LM evaluation window was not found: [ours] the model's 512-token window, 384 of them context.
    Table("memsizer_lm", "MemSizer: language modelling (WikiText-103)", "lm", "wikitext103",
          (Row("transformer", "Transformer", "memsizer_wikitext103", {"decoder": "softmax"}, kind="softmax"),
           Row("memsizer", "MemSizer", "memsizer_wikitext103", {"decoder": "memsizer"})),
          _draw_lm, evaluation={"tokens_per_sample": 512, "context_window": 384},
          tiny_evaluation={"tokens_per_sample": 64, "context_window": 32},
          notes=("Perplexity from fairseq-eval-lm with a sliding context window.",)),
)
