#!/usr/bin/env bash
# One command for a GPU machine. Uses only what the machine has (torch, cuda-bindings, jinja2, numpy,
# pytest; compute-sanitizer for `reliability`) from this source tree; pure-Python wheels in .whl/
# (gguf, hypothesis, pytest-xdist...) are installed into OUT_DIR/site when the module is missing.
# Usage: tools/gpu_check.sh OUT_DIR [MODE]
#   full (default)  GPU tests (pytest -m gpu), then the benchmark
#   tests           GPU tests only
#   reliability     tools/sanitize.sh (memcheck + racecheck over every family at edge shapes), then
#                   the GPU fuzz tests (tests/test_fuzz_gpu.py) and the GPU bad-input table;
#                   OUT_DIR/reliability.txt is the result to record in tools/RELIABILITY.md
set -u
out=${1:?usage: tools/gpu_check.sh OUT_DIR [full|tests|reliability]}
mode=${2:-full}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export JITKERN_CACHE_DIR=${JITKERN_CACHE_DIR:-$out/cache}
for w in .whl/*.whl; do
  [ -e "$w" ] || continue
  mod=$(basename "$w" | cut -d- -f1 | tr 'A-Z' 'a-z')
  [ "$mod" = pyelftools ] && mod=elftools
  [ "$mod" = pytest_xdist ] && mod=xdist
  python3 -c "import $mod" 2>/dev/null && continue
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$out/site" "$w" \
    && export PYTHONPATH=$PYTHONPATH:$out/site
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1
# pytest-xdist, where present, runs the GPU tests in 8 processes sharing the GPU (H100: the whole
# suite in 3.5 minutes instead of more than 8; most of it is NVRTC compiling on the CPU).
xdist=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
status=0
case "$mode" in
  full|quick|tests)          # quick: the old name of full, kept for callers
    python3 -m pytest -m gpu -q -x -p no:cacheprovider $xdist tests 2>&1 | tee "$out/pytest_gpu.txt" || status=1
    if [ "$mode" != tests ]; then
      python3 tools/bench.py --out "$out" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.txt" || status=1
    fi
    ;;
  reliability)
    bash tools/sanitize.sh "$out/sanitize" || status=1
    python3 -m pytest -m gpu -q -p no:cacheprovider -rA tests/test_fuzz_gpu.py tests/test_bad_inputs.py \
      2>&1 | tee "$out/pytest_reliability.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    {
      echo "date: $(date -u +%F\ %TZ)  gpu: $(cat "$out/gpu.txt")  commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+local changes')"
      cat "$out/sanitize/sanitize_summary.txt" 2>/dev/null || echo "sanitize: no summary"
      echo "pytest: $(tail -1 "$out/pytest_reliability.txt")"
    } > "$out/reliability.txt"
    cat "$out/reliability.txt"
    rm -rf "$out/sanitize/cache"
    ;;
  *) echo "unknown mode $mode (full, tests, reliability)" >&2; exit 2 ;;
esac
rm -rf "$out/cache" "$out/site"
exit $status
