#!/usr/bin/env bash
# One command for a GPU machine: GPU tests, then the benchmark. Uses only what the machine has
# (torch, cuda-bindings, jinja2, numpy, pytest) from this source tree.
# Usage: tools/gpu_check.sh OUT_DIR [quick]
set -u
out=${1:?usage: tools/gpu_check.sh OUT_DIR [quick]}
mode=${2:-full}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export JITKERN_CACHE_DIR=${JITKERN_CACHE_DIR:-$out/cache}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1
status=0
python3 -m pytest -m gpu -q -x -p no:cacheprovider tests 2>&1 | tee "$out/pytest_gpu.txt" || status=1
if [ "$mode" != "tests" ]; then
  python3 tools/bench.py --out "$out" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.txt" || status=1
fi
rm -rf "$out/cache"
exit $status
