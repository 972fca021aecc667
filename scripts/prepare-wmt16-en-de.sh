#!/usr/bin/env bash
# WMT16 En-De for Transformer-big: joint sentencepiece BPE (32k), joined dictionary, newstest2013 valid,
# newstest2014 test, binarized with fairseq-preprocess; raw test.en/test.de for sacreBLEU.
# Options: --help (kvattn_fairseq/data/wmt16.py).
#   scripts/prepare-wmt16-en-de.sh --out OUTDIR [--raw DIR] [--tiny] [--workers N] [--bpe-size N]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The checkout's own environment when there is one (make setup), else python from PATH; PYTHON overrides both.
default_python=python
[ -x "$repo/.venv/bin/python" ] && default_python="$repo/.venv/bin/python"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-$default_python}" -m kvattn_fairseq.data.wmt16 "$@"
