"""vLLM general plugin (entry point ``vllm.general_plugins: jitkern = engine_patch.vllm:register``).

vLLM calls :func:`register` in every process it starts (front end, engine core, each worker).  When
jitkern is active — AMD GPUs by default; ``JITKERN_VLLM=1`` anywhere (CPU included), ``0`` never — it
routes, through vLLM's own seams:

* GPTQ / AWQ checkpoints (``_vllm_linear``): the quantization config ``"jitkern"``, whose
  ``override_quantization_method`` claims the checkpoints jitkern can serve.  vLLM probes custom configs
  before its own, so no CLI flag is needed; this also serves what upstream rejects (act-order,
  asymmetric, 2/3/8-bit GPTQ).
* unquantized linear layers and the lm_head (``_vllm_dense``), whatever the checkpoint: vLLM's
  ``UnquantizedLinearMethod`` / ``UnquantizedEmbeddingMethod`` hand served layers to
  ``jitkern::dense_linear`` after loading.
* GGUF files (``_vllm_gguf``, where the ``vllm-gguf-plugin`` package is installed): its
  ``GGUFConfig`` hands out jitkern's GGUF linear / embedding methods.

Each layer's forward is one torch.library op with a fake implementation; the GEMV/GEMM choice happens
inside it, and every kernel a layer can hit is compiled when its weights are loaded.
"""
from __future__ import annotations

import logging
from typing import Any

from jitkern import env

log = logging.getLogger("jitkern.vllm")

NAME = "jitkern"
SUPPORTED = ((0, 32), (0, 33))    # vLLM minor versions whose seams this plugin was checked against
GPTQ_BITS, GROUP_SIZES = (2, 3, 4, 8), (32, 64, 128, -1)
_state: dict[str, Any] = {"done": False, "active": False}


def vllm_version() -> tuple[int, int] | None:
    import vllm

    try:
        major, minor = (int(p) for p in vllm.__version__.split(".")[:2])
        return major, minor
    except ValueError:
        return None


def wanted() -> bool:
    """Should jitkern take quantized layers in this process?  Touches no GPU."""
    mode = env.vllm_mode()
    if mode != "auto":
        return mode == "on"
    from vllm.platforms import current_platform

    return current_platform.is_rocm()


def register() -> None:
    """Idempotent; registers nothing (and logs why) unless jitkern should be active."""
    if _state["done"]:
        return
    _state["done"] = True
    if not wanted():
        return
    import vllm

    if vllm_version() not in SUPPORTED:
        log.warning("jitkern: vLLM %s is not supported (supported: %s); the jitkern plugin is inactive and "
                    "vLLM's own kernels run", vllm.__version__,
                    ", ".join(f"{a}.{b}.x" for a, b in SUPPORTED))
        return
    from vllm.model_executor.layers.quantization import register_quantization_config

    from . import _vllm_dense, _vllm_linear

    _vllm_linear.enable_v2_loaders()
    register_quantization_config(NAME)(_vllm_linear.JitkernConfig)
    _vllm_dense.install()
    served = ["GPTQ/AWQ (quantization method %r)" % NAME, "unquantized linears and lm_head"]
    if gguf_plugin_installed():
        from . import _vllm_gguf

        _vllm_gguf.install()
        served.append("GGUF")
    _state["active"] = True
    log.info("jitkern: vLLM plugin active: %s", ", ".join(served))


def active() -> bool:
    return _state["active"]


def gguf_plugin_installed() -> bool:
    """vLLM >= 0.24 reads GGUF files only through the ``vllm-gguf-plugin`` package."""
    import importlib.util

    return importlib.util.find_spec("vllm_gguf_plugin") is not None


def servable(q: dict) -> bool:
    """Can jitkern serve every linear of this checkpoint's quantization_config?"""
    method = str(q.get("quant_method", "")).lower()
    gs = q.get("group_size", q.get("q_group_size", 128))
    if gs not in GROUP_SIZES:
        return False
    if method == "gptq":
        dyn = q.get("dynamic") or {}
        bits = [q.get("bits")] + [d.get("bits", q.get("bits")) for d in dyn.values() if isinstance(d, dict)]
        return all(b in GPTQ_BITS for b in bits) and q.get("checkpoint_format", "gptq") in ("gptq", "gptq_v2")
    if method == "awq":
        return (q.get("bits", q.get("w_bit")) == 4 and q.get("zero_point", True)
                and str(q.get("version", "gemm")).lower() == "gemm")
    return False
