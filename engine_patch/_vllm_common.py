"""What the vLLM linear methods share (imported only by the plugin): op call counts, the test marker,
the bf16 notice, activations for fp16-only kernels, and vLLM's weight_loader_v2 allow-list."""
from __future__ import annotations

import json
import logging
import os
import sys

import torch

log = logging.getLogger("jitkern.vllm")
MARKER_ENV = "JITKERN_VLLM_MARKER_DIR"      # tests: each process that runs a jitkern forward writes here
_once: set[str] = set()


def op_calls() -> dict[str, int]:
    """How often each jitkern op ran in this process (tests prove which path vLLM took)."""
    from jitkern.ops import dense, gguf
    from jitkern.ops.library import calls

    embedding = sys.modules.get(__package__ + "._vllm_gguf")       # only where vllm-gguf-plugin is installed
    return {**calls, **dense.calls, **gguf.calls, **(embedding.calls if embedding else {"gguf_embedding": 0})}


def note_forward() -> None:
    """First eager forward in a process with ``JITKERN_VLLM_MARKER_DIR`` set: leave
    ``<dir>/jitkern-<pid>`` holding :func:`op_calls` as JSON (TP workers are separate processes)."""
    if torch.compiler.is_compiling() or "marker" in _once or not os.environ.get(MARKER_ENV):
        return
    _once.add("marker")
    d = os.environ[MARKER_ENV]
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"jitkern-{os.getpid()}"), "w") as f:
        json.dump(op_calls(), f)


def log_once(key: str, level: int, msg: str, *args) -> None:
    if key not in _once:
        _once.add(key)
        log.log(level, msg, *args)


def log_bf16() -> None:
    if torch.compiler.is_compiling():       # traced forward: no Python side effects (logged eagerly)
        return
    log_once("bf16", logging.WARNING, "jitkern: bf16 model: jitkern's layers compute in fp16 (gfx906 has no "
             "bf16 math) and return bf16; pass dtype='float16' to run the whole model in fp16")


def fp16_input(x: torch.Tensor, k: int) -> torch.Tensor:
    """x [..., K] as the 2-D input of an fp16-only GPU op (bf16 is computed as fp16, logged once);
    CPU tensors keep their dtype (the reference path computes in float32)."""
    x2d = x.reshape(-1, k)                  # the op copies rows its kernels cannot load
    if x.dtype == torch.bfloat16:
        log_bf16()
        if x.device.type != "cpu":
            x2d = x2d.half()
    return x2d


def allow_v2_loaders(*classes) -> None:
    """vLLM's linear layers hand parameter classes to their own loaders (weight_loader_v2: TP shards,
    fused qkv / gate_up offsets) only for methods whose class name is in this allow-list."""
    from vllm.model_executor.layers import linear

    for cls in classes:
        if cls.__name__ not in linear.WEIGHT_LOADER_V2_SUPPORTED:
            linear.WEIGHT_LOADER_V2_SUPPORTED.append(cls.__name__)
