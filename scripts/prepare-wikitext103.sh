#!/usr/bin/env bash
# WikiText-103, word level (fairseq's language_model recipe): fairseq-preprocess --only-source on
# wiki.{train,valid,test}.tokens, the dictionary being the whole training vocabulary
# (kvattn_fairseq/data/wikitext103.py; --help for options).
#   scripts/prepare-wikitext103.sh --out OUTDIR [--raw DIR] [--tiny] [--workers N]
source "$(dirname "${BASH_SOURCE[0]}")/python.sh" && run_module kvattn_fairseq.data.wikitext103 "$@"
