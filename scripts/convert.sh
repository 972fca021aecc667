#!/usr/bin/env bash
# Convert a trained fairseq transformer / transformer_lm checkpoint to other attention kinds, train the new
# attention to reproduce the old (attention transfer), then finetune: three ordinary fairseq runs.
#
#   scripts/convert.sh --checkpoint IN.pt --data DATA_BIN --out DIR [--transfer-updates N] [--finetune-updates N]
#                      [--transfer-lr LR] [--finetune-lr LR] [POSITION AND KIND FLAGS] [-- FAIRSEQ-TRAIN FLAGS]
#
#   e.g. scripts/convert.sh --checkpoint wmt/checkpoint_best.pt --data data-bin/wmt16_en_de_bpe32k --out conv \
#            --decoder-attention-type 'memsizer*5,softmax' --cross-attention-type 'memsizer*5,softmax' \
#            --transfer-updates 500 --finetune-updates 5000 -- --max-tokens 4096 --fp16
#
# The result is DIR/finetune/checkpoint_last.pt; DIR/chain.json records the settings and every command.  A rerun
# with the same settings resumes; one with other settings is refused, or redone with --force.
# See `scripts/convert.sh --help` (python -m kvattn_fairseq convert-chain) for the details.
# The Python used is $PYTHON, else the checkout's .venv, else python3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$here/../.venv/bin/python" ]]; then py="$here/../.venv/bin/python"; else py=python3; fi
fi
exec "$py" -m kvattn_fairseq convert-chain "$@"
