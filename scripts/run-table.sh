#!/usr/bin/env bash
# Regenerate one paper table end to end (data, training per row, evaluation, Markdown table); a rerun resumes.
#
#   scripts/run-table.sh TABLE --work DIR [--raw DIR] [--tiny] [--rows R1,R2] [--kinds K1,K2] [--bench FILE] [--drop FLAG]... [-- FLAGS]
#
#   TABLE   memsizer_mt | memsizer_summarization | memsizer_lm | mgk_lm | kv_synthetic
#   --tiny  the bundled fixtures and tiny models: checks the whole chain on a CPU in minutes (not a result)
#   --drop F  remove recipe flag F from every row (e.g. fp16 where it is unsupported)
#   -- FLAGS  passed to every fairseq-train run (e.g. --distributed-world-size 8 --update-freq 2)
#
# The Python used is $PYTHON, else the checkout's .venv, else python3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$here/../.venv/bin/python" ]]; then py="$here/../.venv/bin/python"; else py=python3; fi
fi
exec "$py" -m kvattn_fairseq.paper_tables "$@"
