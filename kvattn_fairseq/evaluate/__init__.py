r"""Evaluation of trained checkpoints with the real fairseq tools, one results JSON per run.

    python -m kvattn_fairseq.evaluate wmt       --data DIR --checkpoint CKPT --out results.json [-- fairseq flags]
    python -m kvattn_fairseq.evaluate cnndm     --data DIR --checkpoint CKPT --out results.json
    python -m kvattn_fairseq.evaluate lm        --data DIR --checkpoint CKPT --context-window C \
                                                --tokens-per-sample M --out results.json
    python -m kvattn_fairseq.evaluate synthetic --data DIR --checkpoint CKPT --out results.json
    python -m kvattn_fairseq.evaluate classify  --data DIR --checkpoint CKPT --out results.json

`wmt` reports detokenized sacreBLEU (with its signature) and compound-split tokenized BLEU as a labelled secondary
number; `cnndm` ROUGE-1/2/L/Lsum (rouge-score, stemming); `lm` fairseq-eval-lm perplexity on valid and test;
`synthetic` exact-match sequence accuracy (sequence-to-sequence models); `classify` per-position and per-sequence
accuracy of a per-position classifier (the fairseq model and batching, in process: fairseq has no tool for it).

One module per task computes its metrics (wmt.py, cnndm.py, lm.py, synthetic.py, classification.py);
fairseq_tools.py is the one module that runs fairseq-generate and fairseq-eval-lm and reads their output;
generation.py is what the generation tasks share; inputs.py and checkpoints.py check and read the inputs.  The
results schema is in results.py;
scripts/make_tables.py (kvattn_fairseq/run/report.py) turns a directory of results into the papers' tables.
"""
from .results import SCHEMA  # noqa: F401
