r"""Evaluation of trained checkpoints with the real fairseq tools, one results JSON per run.

    python -m kvattn_fairseq.evaluate wmt       --data DIR --checkpoint CKPT --out results.json [-- fairseq flags]
    python -m kvattn_fairseq.evaluate cnndm     --data DIR --checkpoint CKPT --out results.json
    python -m kvattn_fairseq.evaluate lm        --data DIR --checkpoint CKPT --context-window C \
                                                --tokens-per-sample M --out results.json
    python -m kvattn_fairseq.evaluate synthetic --data DIR --checkpoint CKPT --out results.json

`wmt` reports detokenized sacreBLEU (with its signature) and compound-split tokenized BLEU as a labelled secondary
number; `cnndm` ROUGE-1/2/L/Lsum (rouge-score, stemming); `lm` fairseq-eval-lm perplexity on valid and test;
`synthetic` exact-match sequence accuracy.  The results schema is in results.py; scripts/make_tables.py turns a
directory of results into the papers' tables.
"""
from .results import SCHEMA  # noqa: F401
