#!/usr/bin/env bash
# Create (or complete) a virtual environment with the plugin's stack: torch, fairseq-fixed compiled against that
# torch, the scorers, the test tools, and this package (editable).
#
#   scripts/setup_env.sh [VENV]                 online (default VENV: .venv in the checkout)
#   scripts/setup_env.sh --offline WHEELHOUSE VENV
#                                               no network: a machine that already has torch (e.g. a GPU node)
#
# Both go through a wheelhouse and install from it with pip's index disabled, so every online set-up (and so every
# CI run) also proves the offline install.  Online: torch==$TORCH_VERSION is installed into VENV unless VENV
# already has a torch (kept, e.g. a CUDA build), then scripts/wheelhouse.sh fills .cache/wheelhouse-cpXY.
# Offline: VENV is created with --system-site-packages from $PYTHON (default python3), so it sees that Python's
# torch (when $PYTHON is itself a venv, its site-packages are added too); torch is never installed or upgraded.
# Nothing is resolved by pip (scripts/offline_install.py: the wheels the stack lacks, --no-deps, then every
# requirement of what was installed checked), so a machine whose own packages miss its torch's declared pins works.
# Every file of the wheelhouse is checked against the size and sha256 manifest.json records before anything is
# installed: a file changed since the wheelhouse was made stops the set-up, named, in one line.
# fairseq is built once per (Python, torch) without build isolation and without CUDA_HOME, and cached in
# .cache/wheels/.
set -euo pipefail
cd "$(dirname "$0")/.."
OFFLINE=0
if [ "${1:-}" = "--offline" ]; then
  [ $# -eq 3 ] || { echo "setup: usage: scripts/setup_env.sh --offline WHEELHOUSE VENV" >&2; exit 2; }
  OFFLINE=1 WHEELHOUSE=$2 VENV=$3
  [ -f "$WHEELHOUSE/manifest.json" ] || {
    echo "setup: --offline: $WHEELHOUSE has no manifest.json; make it with scripts/wheelhouse.sh $WHEELHOUSE" >&2
    exit 2; }
else
  VENV=${1:-${VENV:-.venv}}
fi
PYTHON=${PYTHON:-python3}
if [ $OFFLINE = 1 ]; then  # every file against manifest.json's sizes and hashes, before anything is made
  "$PYTHON" scripts/offline_install.py verify "$WHEELHOUSE" >/dev/null || exit 1
fi
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TRITON_VERSION=${TRITON_VERSION:-3.6.0}  # the GPU node's (torch 2.11's); only carried for a CPU torch
EXTRAS=${KVATTN_EXTRAS:-test,gpu}  # the plugin's extras whose packages the wheelhouse carries
WHEELS=${KVATTN_WHEEL_CACHE:-.cache/wheels}  # compiled fairseq wheels, one per (Python, torch)
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { echo "setup: $*" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  if [ $OFFLINE = 1 ]; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
    # A venv's --system-site-packages reaches the base interpreter only: when $PYTHON is itself a venv (torch
    # installed there), add its site-packages after the new venv's own.
    "$PYTHON" - "$VENV" <<'EOF'
import os, site, subprocess, sys
if sys.prefix != sys.base_prefix:
    target = subprocess.check_output([os.path.join(sys.argv[1], "bin", "python"), "-c",
                                      "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip()
    with open(os.path.join(target, "_kvattn_parent_env.pth"), "w") as f:
        f.write("".join(f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages()))
EOF
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
"$PY" -c 'import sys; assert sys.version_info[:2] >= (3, 8)' \
  || die "$VENV has an unsupported Python; remove it or set PYTHON=python3.11"

if "$PY" -c 'import torch' 2>/dev/null; then
  say "keeping torch $("$PY" -c 'import torch; print(torch.__version__, "from", torch.__file__.rsplit("/", 2)[0])')"
elif [ $OFFLINE = 1 ]; then
  die "--offline: $VENV sees no torch; install torch for $PYTHON first (or set PYTHON to the Python that has it)"
else
  say "installing torch==$TORCH_VERSION"
  "$PY" -m pip install -q "torch==$TORCH_VERSION" "numpy>=2,<3"
fi
tag=$("$PY" -c 'import sys, torch; v = torch.__version__.split("+")[0]; print("cp%d%d-torch%s" % (sys.version_info[0], sys.version_info[1], v))')

if [ $OFFLINE = 0 ]; then
  WHEELHOUSE=.cache/wheelhouse-${tag%%-*}
  if [ ! -f "$WHEELHOUSE/manifest.json" ] || [ pyproject.toml -nt "$WHEELHOUSE/manifest.json" ] \
      || [ scripts/wheelhouse.py -nt "$WHEELHOUSE/manifest.json" ]; then
    say "downloading the wheelhouse $WHEELHOUSE"
    # A CPU build of torch brings no triton: carry it, so that the tests run the plugin's Triton kernels in
    # Triton's interpreter (the plugin itself never imports triton without a GPU).
    triton=()
    "$PY" -c 'import sys, torch; sys.exit(1 if torch.version.cuda else 0)' && triton=(--triton "$TRITON_VERSION")
    PYTHON="$PY" scripts/wheelhouse.sh "$WHEELHOUSE" "${triton[@]}"
  fi
fi

# From here on, nothing but the wheelhouse: no index, no pip configuration (its find-links or extra indexes).
offline_pip() {
  env $(compgen -e | grep '^PIP_' | sed 's/^/-u /') PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 \
      PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip "$@"
}
# pip never resolves here: the wheelhouse was resolved where it was made, and a resolver would also have to accept
# this machine's torch, which it refuses when the machine's packages do not meet torch's declared requirements (a
# GPU node's torch pins its CUDA packages, sympy, setuptools, ...), although that torch imports and runs.
# offline_install.py picks the wheels the stack needs (what the machine lacks, or has at a version the stack does not
# accept), pip installs them with --no-deps, and offline_install.py checks every requirement of what was installed.
say "installing the stack from $WHEELHOUSE (no resolver: --no-deps, then checked)"
plan=$("$PY" scripts/offline_install.py plan "$WHEELHOUSE") || exit 1
if [ -n "$plan" ]; then
  mapfile -t wheels <<< "$plan"
  offline_pip install -q --no-deps "${wheels[@]}"
fi

sdist=$(ls "$WHEELHOUSE"/fairseq_fixed-*.tar.gz 2>/dev/null | head -1)
[ -n "$sdist" ] || die "$WHEELHOUSE has no fairseq_fixed-*.tar.gz; remake it with scripts/wheelhouse.sh"
version=$(basename "$sdist" .tar.gz); version=${version#fairseq_fixed-}
if ! "$PY" -c 'import fairseq' 2>/dev/null; then
  # The wheel's C++ extensions are compiled against this torch: keep one wheel per (python, torch).
  cache="$WHEELS/$tag"
  if ! ls "$cache"/fairseq_fixed-"$version"-*.whl >/dev/null 2>&1; then
    say "building fairseq-fixed $version against torch ($tag) from $sdist, once"
    mkdir -p "$cache"
    # No build isolation: an isolated build would want its own torch.  No CUDA_HOME: setup.py would add CUDA
    # extensions whose sources are not in the sdist.  ninja (from the wheelhouse) compiles on every core.
    (unset CUDA_HOME; export PATH="$VENV/bin:$PATH" MAX_JOBS=${MAX_JOBS:-$(nproc)}
     offline_pip wheel -q --no-build-isolation --no-deps "$sdist" -w "$cache")
  else
    say "using cached fairseq wheel from $cache"
  fi
  offline_pip install -q --no-deps "$(ls "$cache"/fairseq_fixed-"$version"-*.whl | head -1)"
fi

say "installing kvattn_fairseq (editable)"
offline_pip install -q --no-deps --no-build-isolation --use-pep517 -e .
"$PY" scripts/offline_install.py check "$WHEELHOUSE" --extras "$EXTRAS" || exit 1
"$PY" -c 'import logging; logging.disable(logging.CRITICAL)
import torch, fairseq, kvattn_fairseq, sacrebleu, rouge_score, sentencepiece, hydra, matplotlib' \
  || die "$VENV: importing the stack failed (the line above says which package)"
say "ready: $VENV"
