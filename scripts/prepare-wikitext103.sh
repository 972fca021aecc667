#!/usr/bin/env bash
# WikiText-103, word level (fairseq's language_model recipe): fairseq-preprocess --only-source on
# wiki.{train,valid,test}.tokens, the dictionary being the whole training vocabulary.
# Options: --help (kvattn_fairseq/data/wikitext103.py).
#   scripts/prepare-wikitext103.sh --out OUTDIR [--raw DIR] [--tiny] [--workers N]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The checkout's own environment when there is one (make setup), else python from PATH; PYTHON overrides both.
default_python=python
[ -x "$repo/.venv/bin/python" ] && default_python="$repo/.venv/bin/python"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-$default_python}" -m kvattn_fairseq.data.wikitext103 "$@"
