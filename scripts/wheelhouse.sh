#!/usr/bin/env bash
# Download everything the plugin needs, except torch, into OUT for a machine with no network: binary wheels for the
# target Python and platform, wheels built here for the few source-only pure-Python dependencies, and fairseq's
# source (compiled on the target against its own torch by `scripts/setup_env.sh --offline OUT VENV`), plus
# manifest.json (every file with its size and sha256, what was resolved and what was left out).
# Usage: scripts/wheelhouse.sh OUT [--python 3.12] [--torch 2.11.0] [--platform TAG ...] [--have FREEZE]
#   --have FREEZE  the target's `python -m pip list --format=freeze`: those packages stay at their versions and
#                  are not downloaded (a smaller wheelhouse for a known machine)
# Runs where the package registry is reachable, with a Python that has torch (fairseq's setup.py imports it):
# PYTHON, default .venv/bin/python when the checkout has one, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" scripts/wheelhouse.py "$@"
