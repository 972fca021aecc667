#!/usr/bin/env bash
# scripts/evaluate.sh {wmt,cnndm,lm,synthetic,classify} --data DIR --checkpoint CKPT --out results.json [...] [-- FLAGS]
# = python -m kvattn_fairseq.evaluate; `scripts/evaluate.sh wmt --help` lists every option.
source "$(dirname "${BASH_SOURCE[0]}")/python.sh" && run_module kvattn_fairseq.evaluate "$@"
