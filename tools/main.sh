#!/usr/bin/env bash
# The main job on a fresh Debian/Ubuntu machine: install jitkern with the hiprtc it needs, warm the
# kernel cache for a model (cross-compiling for gfx906 when no GPU is present), print the code-object
# report, and run the self-test on the GPU if there is one.
# Usage: tools/main.sh [PRESET] [ARCH]      (defaults: llama-3-8b, gfx906)
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-llama-3-8b}
arch=${2:-gfx906}
SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
if ! dpkg -s libamdhip64-dev libhiprtc-builtins5 llvm-15 >/dev/null 2>&1 && [ ! -e /opt/rocm/lib/libhiprtc.so ]; then
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libamdhip64-dev libhiprtc-builtins5 llvm-15 >/dev/null
fi
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[rocm]"
python3 -m jitkern.cli warmup --preset "$preset" --arch "$arch"
python3 -m jitkern.cli inspect --all --preset "$preset" --arch "$arch"
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  python3 -m jitkern.cli selftest
else
  echo "no GPU here: kernels were cross-compiled for $arch only; run 'jitkern selftest' on the GPU machine"
fi
