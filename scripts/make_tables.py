#!/usr/bin/env python3
"""Markdown tables laid out like the papers' tables, from evaluation results.

    python scripts/make_tables.py RESULTS_DIR [--out tables.md] [--bench bench_out/results.json]

RESULTS_DIR is searched recursively for the results JSONs written by `python -m kvattn_fairseq.evaluate`; other
JSON files are ignored.  Tables: MemSizer MT (sacreBLEU, compound-split tok-BLEU; speed and memory columns from a
`python -m kvattn_fairseq.bench` results file with --bench), MemSizer summarization (ROUGE), MemSizer LM and
Transformer-MGK LM (valid/test perplexity), Key-Value Transformer synthetic tasks (accuracy).  The papers' rows are
always present; a cell with no result reads "not run".  The logic is kvattn_fairseq/evaluate/tables.py.
"""
import sys

from kvattn_fairseq.evaluate.tables import main

if __name__ == "__main__":
    sys.exit(main(prog="make_tables.py"))
