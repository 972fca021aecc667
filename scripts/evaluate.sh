#!/usr/bin/env bash
# Thin wrapper: scripts/evaluate.sh {wmt,cnndm,lm,synthetic} --data DIR --checkpoint CKPT --out results.json [...]
# Runs `python -m kvattn_fairseq.evaluate` with $PYTHON, else the checkout's .venv, else python3.
# See `scripts/evaluate.sh wmt --help` for every option.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$here/../.venv/bin/python" ]]; then py="$here/../.venv/bin/python"; else py=python3; fi
fi
exec "$py" -m kvattn_fairseq.evaluate "$@"
