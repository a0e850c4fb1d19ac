#!/usr/bin/env bash
# Nsight Compute on one kernel call (the device machine has /usr/local/cuda/bin/ncu): what bounds a
# GEMV or GEMM, beyond its time.  Profiles the last of tools/ncu_call.py's calls whose kernel name
# matches KERNEL_REGEX and prints DRAM and issue utilization, warps an SM, registers, the tensor
# pipe, and the stall reasons (cycles a warp waits, per issued instruction).
# Usage: tools/ncu.sh OUT_DIR KERNEL_REGEX IMPL K N M
#   e.g. tools/ncu.sh $OUT/ncu gemv jitkern-int4-g128 8192 57344 1
set -u
out=${1:?usage: tools/ncu.sh OUT_DIR KERNEL_REGEX IMPL K N M}
regex=$2; shift 2
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
metrics='regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,dram__throughput.avg.pct_of_peak_sustained_elapsed,smsp__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum,sm__warps_active.avg.per_cycle_active,launch__registers_per_thread,launch__grid_size,launch__block_size,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active'
log="$out/ncu_$(echo "$*" | tr ' ' '_').txt"
"$ncu" -k "regex:$regex" --launch-skip 3 --launch-count 1 --metrics "$metrics" \
  python3 tools/ncu_call.py "$@" > "$log" 2>&1
status=$?
echo "== $* (kernel ~ $regex; full output: $log)"
# the metrics, stall reasons under 0.05 cycles an instruction left out
grep -a -E '^\s+(smsp|dram|gpu|sm__|launch)' "$log" \
  | sed 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active\.ratio/ (stall)/' \
  | awk '!/\(stall\)/ || $NF + 0 >= 0.05'
exit $status
