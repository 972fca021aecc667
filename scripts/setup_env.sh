#!/usr/bin/env bash
# Create (or complete) the project's virtual environment with the stack that works on Python 3.11:
# torch, numpy 2, fairseq-fixed built against them, the scorers, and this package (editable).
# Usage: scripts/setup_env.sh [VENV]   (default: .venv inside the checkout)
# A torch already present in VENV is kept (e.g. a CUDA build on a GPU machine); otherwise torch==$TORCH_VERSION.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${VENV:-.venv}}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
FAIRSEQ_PKG=fairseq-fixed==0.12.3.1
WHEELS=.cache/wheels
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -c 'import sys; assert sys.version_info[:2] >= (3, 8)' \
  || { echo "setup: $VENV has an unsupported Python; remove it or set PYTHON=python3.11" >&2; exit 1; }

if "$PY" -c 'import torch' 2>/dev/null; then
  say "keeping installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  say "installing torch==$TORCH_VERSION"
  "$PY" -m pip install -q "torch==$TORCH_VERSION" "numpy>=2,<3"
fi
# Pin whatever torch is there so nothing below can swap it for another build.
CONSTRAINTS=$(mktemp); trap 'rm -f "$CONSTRAINTS"' EXIT
"$PY" -c 'import torch; print("torch==" + torch.__version__)' > "$CONSTRAINTS"

"$PY" -m pip install -q -c "$CONSTRAINTS" "numpy>=2,<3" "cython>=3" wheel

if ! "$PY" -c 'import fairseq' 2>/dev/null; then
  mkdir -p "$WHEELS"
  tag=$("$PY" -c 'import sys, torch; v = torch.__version__.split("+")[0]; print("cp%d%d-torch%s" % (sys.version_info[0], sys.version_info[1], v))')
  # The wheel's C++ extensions are compiled against this torch: keep one wheel per (python, torch).
  cache="$WHEELS/$tag"
  if ! ls "$cache"/fairseq_fixed-*.whl >/dev/null 2>&1; then
    say "building $FAIRSEQ_PKG against torch ($tag), about 4 minutes, once"
    mkdir -p "$cache"
    # No build isolation: an isolated build env would pull a multi-GB CUDA torch and compile against it.
    # No CUDA_HOME: setup.py would add CUDA extensions whose sources are not in the sdist.
    env -u CUDA_HOME "$PY" -m pip wheel -q --no-build-isolation --no-deps "$FAIRSEQ_PKG" -w "$cache"
  else
    say "using cached fairseq wheel from $cache"
  fi
  "$PY" -m pip install -q -c "$CONSTRAINTS" --find-links "$cache" "$FAIRSEQ_PKG"
fi

say "installing kvattn_fairseq (editable) and its tools"
"$PY" -m pip install -q -c "$CONSTRAINTS" -e ".[test]"
"$PY" -m pip check
say "ready: $VENV"
