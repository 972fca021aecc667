#!/usr/bin/env bash
# Train one of the papers' recipes (kvattn_fairseq/papers/*.py) with the real fairseq-train.
#
#   scripts/train.sh EXPERIMENT DATA_BIN SAVE_DIR [--kind KIND] [--tiny] [--drop FLAG]... [-- FLAGS...]
#
#   EXPERIMENT  a name from `python -m kvattn_fairseq experiments list`
#   DATA_BIN    fairseq-preprocess output (its dictionaries are checked before anything starts)
#   SAVE_DIR    checkpoints; a rerun resumes from SAVE_DIR/checkpoint_last.pt
#   --kind K    attention kind K at every position of the model where it fits, softmax at the others
#   --tiny      tiny architecture and limits: a CPU smoke run of the whole chain in seconds
#   --drop F    remove flag F (and its value) from the recipe's flags, e.g. --drop fp16 on a CPU
#   -- FLAGS    passed to fairseq-train verbatim after the recipe's flags (a later flag wins), e.g.
#               -- --distributed-world-size 8 --update-freq 2 --max-tokens 4096
#
# The command is printed before it runs.  The Python used is $PYTHON, else the checkout's .venv, else python3.
set -euo pipefail
if [[ $# -eq 0 || "$1" == "-h" || "$1" == "--help" ]]; then
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
  [[ $# -eq 0 ]] && exit 2 || exit 0
fi
export KVATTN_EXPERIMENTS_PROG="${KVATTN_EXPERIMENTS_PROG:-train.sh}"
source "$(dirname "${BASH_SOURCE[0]}")/python.sh" && run_module kvattn_fairseq experiments train "$@"
