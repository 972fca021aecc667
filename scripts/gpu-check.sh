#!/usr/bin/env bash
# The GPU path in one command, for a GPU node with no network: set up from the wheelhouse, run the CUDA tests, run
# the benchmark's GPU mode.  Everything measured lands in OUT (gpu-check.md first), even when a later phase fails
# or runs out of its time box; each phase is timed and printed with timestamps.
#
#   scripts/gpu-check.sh OUT [--wheelhouse DIR] [--venv DIR] [--kinds a,b] [--minutes M]
#   scripts/gpu-check.sh OUT --dry-run     a CPU, the checkout's .venv, tiny sizes (part of the test suite)
#
# Defaults: --wheelhouse .cache/wheelhouse-py312 (made by scripts/wheelhouse.sh, copied with the checkout),
# --venv .cache/gpu-venv, --kinds $GPU_KINDS (the fused softmax and the constant-state kinds), --minutes 9 (the whole run; the benchmark gets what set-up and tests left,
# and records the settings it could not start as skipped).  PYTHON: the node's Python with torch (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
usage() {
  echo "gpu-check: usage: scripts/gpu-check.sh OUT [--wheelhouse DIR] [--venv DIR] [--kinds a,b] [--minutes M]" \
       "[--dry-run]" >&2
  exit 2
}
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || usage
OUT=$1; shift
WHEELHOUSE=.cache/wheelhouse-py312 VENV=.cache/gpu-venv KINDS="" MINUTES=9 DRY=0
GPU_KINDS=softmax,memsizer,linear,window,window_memsizer,window_linear
while [ $# -gt 0 ]; do
  case $1 in
    --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a directory}; shift 2 ;;
    --venv) VENV=${2:?--venv needs a directory}; shift 2 ;;
    --kinds) KINDS=${2:?--kinds needs a list}; shift 2 ;;
    --minutes) MINUTES=${2:?--minutes needs a number}; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) echo "gpu-check: unknown argument $1" >&2; usage ;;
  esac
done
[[ $MINUTES =~ ^[0-9]+$ ]] && [ "$MINUTES" -ge 3 ] \
  || { echo "gpu-check: --minutes: expected a whole number >= 3, got $MINUTES" >&2; exit 2; }
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
START=$(date +%s)
DEADLINE=$((START + MINUTES * 60))
LOG="$OUT/gpu-check.log"
: > "$LOG"
printf 'phase\tseconds\tstatus\n' > "$OUT/phases.tsv"
say() { printf '[gpu-check %s +%ss] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - START ))" "$*" | tee -a "$LOG"; }

# phase NAME LIMIT_S COMMAND...: run with a time box, output to OUT/NAME.log and the console, status recorded
phase() {
  local name=$1 limit=$2; shift 2
  local t0 rc status
  t0=$(date +%s)
  say "$name: start (time box ${limit}s)"
  timeout --signal=TERM --kill-after=15 "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timed out after ${limit}s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - t0 ))" "$status" >> "$OUT/phases.tsv"
  say "$name: $status in $(( $(date +%s) - t0 ))s"
  return $rc
}
left() { echo $(( DEADLINE - $(date +%s) )); }

report() {
  local total=$(( $(date +%s) - START ))
  {
    echo "# GPU check"
    echo
    echo "Ran $(date -u +'%Y-%m-%d %H:%M UTC') on $(hostname), checkout" \
         "$(git rev-parse --short HEAD 2>/dev/null || echo '?'), $([ $DRY = 1 ] && echo 'dry run (CPU)' || echo GPU)."
    [ -f "$OUT/machine.txt" ] && { echo; echo '```'; cat "$OUT/machine.txt"; echo '```'; }
    echo
    echo "| phase | seconds | status |"
    echo "|---|---|---|"
    tail -n +2 "$OUT/phases.tsv" | awk -F'\t' '{print "| " $1 " | " $2 " | " $3 " |"}'
    echo
    echo "$([ $total -le 480 ] && echo 'MET ' || echo MISS)  whole check within 8 minutes: ${total}s"
    if [ -f "$OUT/cuda-tests.log" ]; then
      echo
      echo "CUDA tests: $(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)' "$OUT/cuda-tests.log" | tail -1 \
                          | tr -d '=' | sed 's/^ *//')"
      grep -E '^(FAILED|ERROR) ' "$OUT/cuda-tests.log" | head -30
    fi
    if [ -f "$OUT/summary.md" ]; then echo; echo "## Benchmark"; echo; cat "$OUT/summary.md"; fi
  } > "$OUT/gpu-check.md"
  say "wrote $OUT/gpu-check.md (${total}s in all)"
}
trap report EXIT

if [ $DRY = 1 ]; then
  PY=${VENV_PY:-.venv/bin/python}; [ "$VENV" = .cache/gpu-venv ] || PY="$VENV/bin/python"
  [ -x "$PY" ] || { say "dry run: $PY is missing; run make setup first"; exit 1; }
  DEVICE=cpu MODE=gpu-dry KINDS=${KINDS:-memsizer,kv}
  "$PY" -c 'import platform, torch; print("dry run on", platform.machine(), "- torch", torch.__version__)' \
    > "$OUT/machine.txt"
else
  NODE_PY=${PYTHON:-python3}
  # Fail fast, before minutes of set-up, when there is no GPU to check.
  if ! "$NODE_PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>>"$LOG"; then
    seen=$("$NODE_PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -1)
    say "no CUDA device visible to $NODE_PY ($seen); nothing to check"
    exit 1
  fi
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    "$NODE_PY" -c 'import platform, torch; print("Python", platform.python_version(), "- torch", torch.__version__,
                                                  "- CUDA", torch.version.cuda, "-", torch.cuda.get_device_name(0))'
    echo "CPU cores: $(nproc)"; } > "$OUT/machine.txt"
  if [ ! -f "$WHEELHOUSE/manifest.json" ]; then
    say "no wheelhouse at $WHEELHOUSE: make it where the registry is reachable with scripts/wheelhouse.sh" \
        "$WHEELHOUSE --python $("$NODE_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') and copy it here"
    exit 1
  fi
  phase setup $(( $(left) > 300 ? 300 : $(left) )) \
    env PYTHON="$NODE_PY" scripts/setup_env.sh --offline "$WHEELHOUSE" "$VENV" || exit 1
  PY="$VENV/bin/python" DEVICE=cuda MODE=gpu KINDS=${KINDS:-$GPU_KINDS}
fi

# pytest's own exit code is recorded; a failing test does not stop the benchmark
limit=$(( $(left) - 150 )); [ $limit -gt 240 ] && limit=240
if [ $limit -ge 30 ]; then
  phase cuda-tests $limit "$PY" -m pytest -m cuda -q -p no:cacheprovider -o addopts="-ra" \
    --junitxml "$OUT/cuda-tests.xml" tests/test_kernels.py tests/test_cuda.py tests/test_numerics.py
else
  say "cuda-tests: skipped, $(left)s left"
fi

limit=$(( $(left) - 10 ))
if [ $limit -ge 30 ]; then
  phase bench $limit "$PY" -m kvattn_fairseq.bench --mode $MODE --device $DEVICE --out "$OUT" \
    --budget $(( limit - 45 > 15 ? limit - 45 : 15 )) ${KINDS:+--kinds "$KINDS"}
else
  say "bench: skipped, $(left)s left"
fi
