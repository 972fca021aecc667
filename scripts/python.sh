# Sourced by the other scripts: `run_module MODULE ARGS...` runs `python -m MODULE ARGS...` with $PYTHON, else the
# checkout's .venv, else python3, with this checkout first on the module path (so the scripts run this checkout's
# code whatever else the interpreter has installed).
run_module() {
  local repo py
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  py="${PYTHON:-}"
  if [[ -z "$py" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then py="$repo/.venv/bin/python"; else py=python3; fi
  fi
  export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
  exec "$py" -m "$@"
}
