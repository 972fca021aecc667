#!/usr/bin/env python3
"""Markdown tables laid out like the papers' tables, from evaluation results (kvattn_fairseq/run/report.py).

    python scripts/make_tables.py RESULTS_DIR [--out tables.md] [--bench bench_out/results.json]
"""
import sys

from kvattn_fairseq.run.report import main

if __name__ == "__main__":
    sys.exit(main(prog="make_tables.py"))
