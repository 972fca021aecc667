#!/usr/bin/env bash
# WMT16 En-De: joint sentencepiece BPE (32k), joined dictionary, newstest2013 valid, newstest2014 test, binarized
# with fairseq-preprocess; raw test.en/test.de for sacreBLEU (kvattn_fairseq/data/wmt16.py; --help for options).
#   scripts/prepare-wmt16-en-de.sh --out OUTDIR [--raw DIR] [--tiny] [--workers N] [--bpe-size N]
source "$(dirname "${BASH_SOURCE[0]}")/python.sh" && run_module kvattn_fairseq.data.wmt16 "$@"
