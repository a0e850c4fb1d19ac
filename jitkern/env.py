"""Every JITKERN_* setting, read in one place.

Settings are read when asked for (not at import) so tests and the CLI can change them per process.
"""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs

SETTINGS = {
    "JITKERN_CACHE_DIR": "kernel cache directory (default: the user cache dir, e.g. ~/.cache/jitkern)",
    "JITKERN_ARCH": "compile for this target instead of the local GPU (e.g. gfx906, gfx906:sramecc+:xnack-, "
                    "sm_90; compute_75: NVIDIA PTX for any newer card)",
    "JITKERN_NO_COMPILE": "1: a cache miss is an error (proves a warmed cache is complete)",
    "JITKERN_GEMV_MAX_M": "largest batch served by the GEMV kernels; above it dequantize + GEMM (default 8)",
    "JITKERN_WORKSPACE_MB": "bound on the fp16 dequantization workspace of the prefill path (default 256)",
    "JITKERN_PREFILL": "prefill GEMM (M above the GEMV): auto (the wgmma GEMM on sm_90 or fused Triton where they run, else dequantize + BLAS) or blas",
    "JITKERN_VLLM": "vLLM plugin: 1 forces jitkern on any platform, 0 disables it (default: AMD GPUs only)",
    "JITKERN_PDL": "NVIDIA sm_90+: 0 launches the GEMVs without programmatic dependent launch (default 1)",
    "JITKERN_LOG": "log level of the 'jitkern' logger (default WARNING)",
}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected an integer") from None


def cache_dir() -> Path:
    raw = os.environ.get("JITKERN_CACHE_DIR", "").strip()
    return Path(raw).expanduser() if raw else Path(platformdirs.user_cache_dir("jitkern"))


def arch_override() -> str | None:
    return os.environ.get("JITKERN_ARCH", "").strip() or None


def no_compile() -> bool:
    return _flag("JITKERN_NO_COMPILE")


def gemv_max_m() -> int:
    return _int("JITKERN_GEMV_MAX_M", 8)


def workspace_bytes() -> int:
    return _int("JITKERN_WORKSPACE_MB", 256) << 20


def prefill_backend() -> str:
    raw = os.environ.get("JITKERN_PREFILL", "auto").strip().lower() or "auto"
    if raw not in ("auto", "blas"):
        raise ValueError(f"JITKERN_PREFILL={raw!r}: expected 'auto' or 'blas'")
    return raw


def pdl() -> bool:
    return os.environ.get("JITKERN_PDL", "1").strip().lower() not in ("0", "false", "no", "off")


def vllm_mode() -> str:
    """'on', 'off' or 'auto'."""
    raw = os.environ.get("JITKERN_VLLM", "").strip().lower()
    return {"1": "on", "true": "on", "0": "off", "false": "off"}.get(raw, "auto")


def active() -> dict[str, str]:
    """The JITKERN_* variables set in this process (for `jitkern info` and reports)."""
    return {k: os.environ[k] for k in SETTINGS if k in os.environ}
