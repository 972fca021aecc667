#!/usr/bin/env bash
# CNN/DailyMail (abisee's story files, HuggingFace 3.0.0 text): sentencepiece BPE, sources truncated to 1024
# positions, joined dictionary, binarized; raw test.source/test.target and test.ref.jsonl for ROUGE
# (kvattn_fairseq/data/cnndm.py; --help for options).
#   scripts/prepare-cnndm.sh --out OUTDIR [--raw DIR] [--tiny] [--workers N] [--bpe-size N]
source "$(dirname "${BASH_SOURCE[0]}")/python.sh" && run_module kvattn_fairseq.data.cnndm "$@"
