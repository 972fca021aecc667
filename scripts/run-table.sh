#!/usr/bin/env bash
# Regenerate one paper table end to end (data, training per row, evaluation, Markdown table); a rerun resumes.
#
#   scripts/run-table.sh TABLE --work DIR [--raw DIR] [--tiny] [--rows R1,R2] [--kinds K1,K2] [--bench FILE] [--drop FLAG]... [-- FLAGS]
#
#   TABLE   a table of kvattn_fairseq/papers, e.g. memsizer_mt, memsizer_summarization, memsizer_lm, mgk_lm,
#           kv_synthetic (--help lists them all)
#   --tiny  the bundled fixtures and tiny models: checks the whole chain on a CPU in minutes (not a result)
#   --drop F  remove recipe flag F from every row (e.g. fp16 where it is unsupported)
#   -- FLAGS  passed to every fairseq-train run (e.g. --distributed-world-size 8 --update-freq 2)
#
# = python -m kvattn_fairseq paper-tables; the Python used is $PYTHON, else the checkout's .venv, else python3.
source "$(dirname "${BASH_SOURCE[0]}")/python.sh" && run_module kvattn_fairseq paper-tables "$@"
