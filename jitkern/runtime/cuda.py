"""NVIDIA driver calls through cuda-bindings (cuModuleLoadData, cuLaunchKernel / cuLaunchKernelEx)."""
from __future__ import annotations

import ctypes
import logging
from functools import lru_cache
from typing import Optional

from ..compiler import BackendMissing


@lru_cache(maxsize=1)
def _driver():
    try:
        from cuda.bindings import driver
    except ImportError as e:
        raise BackendMissing(f"cannot import cuda.bindings.driver ({e}); pip install 'jitkern[cuda]'") from None
    (err,) = driver.cuInit(0)
    _check(err, "cuInit")
    return driver


def _check(err, what: str) -> None:
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {err}")


def _ensure_context(drv) -> None:
    # torch's runtime makes the device's primary context current on its threads; other threads
    # (e.g. a compile worker) may have none yet.
    err, ctx = drv.cuCtxGetCurrent()
    _check(err, "cuCtxGetCurrent")
    if int(ctx) == 0:
        import torch

        err, dev = drv.cuDeviceGet(torch.cuda.current_device())
        _check(err, "cuDeviceGet")
        err, ctx = drv.cuDevicePrimaryCtxRetain(dev)
        _check(err, "cuDevicePrimaryCtxRetain")
        (err,) = drv.cuCtxSetCurrent(ctx)
        _check(err, "cuCtxSetCurrent")


def load(binary: bytes, name: str):
    drv = _driver()
    import torch

    torch.cuda.init()
    _ensure_context(drv)
    err, module = drv.cuModuleLoadData(binary)
    _check(err, "cuModuleLoadData")
    err, function = drv.cuModuleGetFunction(module, name.encode())
    _check(err, f"cuModuleGetFunction({name})")
    return module, function


_pdl_failed: list = []      # the driver's error, once a dependent launch was refused
_PDL_REFUSED = {"CUDA_ERROR_NOT_SUPPORTED", "CUDA_ERROR_INVALID_VALUE", "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"}


def launch(function, grid, block, cargs, shared: int, stream: int, pdl: bool = False,
           cluster: tuple | None = None) -> None:
    """pdl: programmatic dependent launch -- the kernel may start while the stream's previous kernel
    finishes, and must execute griddepcontrol.wait before it reads that kernel's results or writes.
    A driver that refuses it (older than CUDA 12.3 in graph capture, say) gets plain launches from
    then on, with one warning.  cluster: blocks launched together as one cluster (sm_90+), whose
    shared memory they can reach; never dropped."""
    drv = _driver()
    params = (ctypes.c_void_p * len(cargs))(*[ctypes.addressof(a) for a in cargs])
    pdl = pdl and not _pdl_failed
    attrs = ([_pdl_attribute()] if pdl else []) + ([_cluster_attribute(*cluster)] if cluster else [])
    if attrs:
        config = drv.CUlaunchConfig()
        config.gridDimX, config.gridDimY, config.gridDimZ = grid
        config.blockDimX, config.blockDimY, config.blockDimZ = block
        config.sharedMemBytes, config.hStream = shared, stream
        config.attrs, config.numAttrs = attrs, len(attrs)
        (err,) = drv.cuLaunchKernelEx(config, function, ctypes.addressof(params), 0)
        if int(err) == 0:
            return
        if cluster or getattr(err, "name", "") not in _PDL_REFUSED:   # only a lone PDL request falls back
            _check(err, "cuLaunchKernelEx")
        _pdl_failed.append(err)
        logging.getLogger("jitkern").warning(
            "programmatic dependent launch refused by the driver (%s); launching without it", err)
    (err,) = drv.cuLaunchKernel(function, *grid, *block, shared, stream, ctypes.addressof(params), 0)
    _check(err, "cuLaunchKernel")


@lru_cache(maxsize=8)
def _cluster_attribute(x: int, y: int, z: int):
    drv = _driver()
    attr = drv.CUlaunchAttribute()
    attr.id = drv.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
    attr.value.clusterDim.x, attr.value.clusterDim.y, attr.value.clusterDim.z = x, y, z
    return attr


@lru_cache(maxsize=1)
def _pdl_attribute():
    drv = _driver()
    attr = drv.CUlaunchAttribute()
    attr.id = drv.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
    attr.value.programmaticStreamSerializationAllowed = 1
    return attr


def allow_shared(function, nbytes: int) -> None:
    """Let launches of `function` ask for `nbytes` of dynamic shared memory (above 48 KB needs this)."""
    drv = _driver()
    attr = drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    (err,) = drv.cuFuncSetAttribute(function, attr, nbytes)
    _check(err, "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)")


def attributes(function) -> dict:
    drv = _driver()
    A = drv.CUfunction_attribute
    out = {}
    for name, attr in (("registers", A.CU_FUNC_ATTRIBUTE_NUM_REGS),
                       ("shared_bytes", A.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES),
                       ("local_bytes", A.CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES),
                       ("max_threads", A.CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)):
        err, value = drv.cuFuncGetAttribute(attr, function)
        _check(err, "cuFuncGetAttribute")
        out[name] = value
    return out


class TensorMap(ctypes.Structure):
    """A TMA tensor map (CUtensorMap: 128 opaque bytes), passed to a kernel by value."""
    _fields_ = [("opaque", ctypes.c_uint64 * 16)]


@lru_cache(maxsize=4096)
def tensor_map(address: int, shape: tuple, box: tuple, element_bytes: int = 4,
               strides: Optional[tuple] = None) -> TensorMap:
    """A tiled TMA tensor map over a tensor of 1- or 4-byte integers at `address` (sm_90+): boxes of
    `box` elements (both innermost dimension first, as cp.async.bulk.tensor counts), dimension i + 1
    `strides[i]` bytes apart (default: contiguous; any order, multiples of 16); elements outside the
    tensor read as zero.  Host-only (no stream work), so it may be built during graph capture."""
    drv = _driver()
    T = drv.CUtensorMapDataType
    dtype = {1: T.CU_TENSOR_MAP_DATA_TYPE_UINT8, 4: T.CU_TENSOR_MAP_DATA_TYPE_UINT32}[element_bytes]
    if strides is None:
        strides, size = [], element_bytes
        for d in shape[:-1]:
            size *= d
            strides.append(size)
    u64, u32 = drv.cuuint64_t, drv.cuuint32_t
    err, tmap = drv.cuTensorMapEncodeTiled(
        dtype, len(shape), address, [u64(d) for d in shape], [u64(d) for d in strides],
        [u32(d) for d in box], [u32(1)] * len(shape), drv.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        drv.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_NONE,
        drv.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        drv.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    _check(err, "cuTensorMapEncodeTiled")
    out = TensorMap()
    ctypes.memmove(ctypes.addressof(out), tmap.getPtr(), ctypes.sizeof(out))
    return out
