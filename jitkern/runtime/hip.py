"""AMD driver calls through hip-python (hipModuleLoadData, hipModuleLaunchKernel).

Written against hip-python's documented API; it cannot be exercised here (no AMD GPU): ``jitkern
selftest`` on a gfx906 card is what proves it.
"""
from __future__ import annotations

import ctypes
from functools import lru_cache

from ..compiler import BackendMissing


@lru_cache(maxsize=1)
def _hip():
    try:
        from hip import hip
    except ImportError as e:
        raise BackendMissing(f"cannot import hip-python ({e}); pip install 'jitkern[rocm]'") from None
    return hip


def _check(result, what: str):
    err = result[0] if isinstance(result, tuple) else result
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {err}")
    return result[1] if isinstance(result, tuple) and len(result) > 1 else None


def load(binary: bytes, name: str):
    hip = _hip()
    module = _check(hip.hipModuleLoadData(binary), "hipModuleLoadData")
    function = _check(hip.hipModuleGetFunction(module, name.encode()), f"hipModuleGetFunction({name})")
    return module, function


def launch(function, grid, block, cargs, shared: int, stream: int, pdl: bool = False,
           cluster: tuple | None = None) -> None:
    """pdl is NVIDIA's programmatic dependent launch; HIP has none, so kernels run in stream order.
    Thread-block clusters are NVIDIA-only too: no HIP kernel asks for one."""
    if cluster:
        raise ValueError(f"cluster: thread-block clusters are NVIDIA-only, got {cluster} on HIP")
    hip = _hip()
    params = [ctypes.addressof(a) for a in cargs]
    _check(hip.hipModuleLaunchKernel(function, *grid, *block, shared, stream, params, None),
           "hipModuleLaunchKernel")


def attributes(function) -> dict:
    hip = _hip()
    A = hip.hipFunction_attribute
    out = {}
    for name, attr in (("registers", A.HIP_FUNC_ATTRIBUTE_NUM_REGS),
                       ("shared_bytes", A.HIP_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES),
                       ("local_bytes", A.HIP_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)):
        out[name] = _check(hip.hipFuncGetAttribute(attr, function), "hipFuncGetAttribute")
    return out
