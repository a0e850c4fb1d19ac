#!/usr/bin/env bash
# compute-sanitizer over every kernel family at edge shapes, in one go (NVIDIA GPU machine):
#   1. compile every kernel the cases use, in parallel, into the cache (no sanitizer needed for that)
#   2. memcheck over all cases of tools/sanitize_cases.py (every family, N off the tile, K = one
#      group, smallest N/K, M = 1..8 (dense 1..16) and a prefill M, NaN/Inf inputs)
#   3. racecheck over the cases whose kernels declare __shared__ memory
#   4. controls: a kernel reading one float past a tensor (memcheck) and one racing on shared
#      memory (racecheck), launched through jitkern's runtime; both must be reported
#   5. OUT_DIR/sanitize_summary.json and a few lines on stdout; exit 0 only if every count is 0
#      and both controls were caught
# Usage: tools/sanitize.sh OUT_DIR        (SANITIZE_SEED=N replays the data of an earlier run)
set -u
out=${1:?usage: tools/sanitize.sh OUT_DIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export JITKERN_CACHE_DIR=${JITKERN_CACHE_DIR:-$out/cache}
# Every tensor its own cudaMalloc: memcheck then flags a read one element past a tensor, which
# torch's caching allocator would hide inside its pool.
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -z "$san" ]; then
  echo "sanitize: compute-sanitizer not found (CUDA toolkit); nothing was checked" | tee "$out/sanitize_summary.txt"
  exit 2
fi
seed=${SANITIZE_SEED:-$(python3 -c 'import os; print(int.from_bytes(os.urandom(3), "little"))')}
echo "sanitize: $("$san" --version | tail -1), seed $seed, cache $JITKERN_CACHE_DIR"
t0=$SECONDS
# The GPU's arch from nvidia-smi, so the compile pool forks from a process with no CUDA context.
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
python3 tools/sanitize_cases.py --warm ${cc:+--arch sm_$cc} --json "$out/warm.json" > "$out/warm.txt" 2>&1
echo "sanitize: kernels compiled in $((SECONDS - t0)) s ($(python3 -c "import json; d=json.load(open('$out/warm.json')); print(d['kernels'], 'kernels,', len(d['failed']), 'failed')" 2>/dev/null || echo 'warm failed, see warm.txt'))"

run_tool() {   # tool, name, case-driver arguments...
  local tool=$1 name=$2; shift 2
  local t=$SECONDS
  "$san" --tool "$tool" --error-exitcode 99 --print-limit 200 --log-file "$out/$name.log" \
    python3 tools/sanitize_cases.py "$@" > "$out/$name.txt" 2>&1
  echo $? > "$out/$name.rc"
  echo "sanitize: $name done in $((SECONDS - t)) s (exit $(cat "$out/$name.rc"))"
}
run_tool memcheck memcheck --run --seed "$seed" --json "$out/memcheck_cases.json"
run_tool racecheck racecheck --run --only shared --seed "$seed" --json "$out/racecheck_cases.json"
run_tool memcheck memcheck_control --control oob
run_tool racecheck racecheck_control --control race
python3 tools/sanitize_cases.py --summary "$out" | tee "$out/sanitize_summary.txt"
status=${PIPESTATUS[0]}
echo "sanitize: total $((SECONDS - t0)) s"
exit "$status"
