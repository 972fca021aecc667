#!/usr/bin/env bash
# CNN/DailyMail (abisee's story files, HuggingFace 3.0.0 text): sentencepiece BPE, sources truncated to 1024
# positions, joined dictionary, binarized; raw test.source/test.target and test.ref.jsonl for ROUGE.
# Options: --help (kvattn_fairseq/data/cnndm.py).
#   scripts/prepare-cnndm.sh --out OUTDIR [--raw DIR] [--tiny] [--workers N] [--bpe-size N]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The checkout's own environment when there is one (make setup), else python from PATH; PYTHON overrides both.
default_python=python
[ -x "$repo/.venv/bin/python" ] && default_python="$repo/.venv/bin/python"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-$default_python}" -m kvattn_fairseq.data.cnndm "$@"
