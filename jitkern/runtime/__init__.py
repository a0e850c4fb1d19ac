"""Load compiled kernels onto a GPU and launch them on torch's current stream.

``Kernel`` is resolved once (when a layer is set up) and keeps its function handle, so a launch only
packs arguments and calls the driver: no hashing, rendering or file access on the hot path.  Launches
go to ``torch.cuda.current_stream()``, so they are captured by CUDA/HIP graphs like torch's own.
"""
from __future__ import annotations

import ctypes
import importlib

import torch

from .. import cache, env
from ..families import get_family
from ..spec import KernelSpec


def driver(vendor: str):
    return importlib.import_module({"amd": ".hip", "nvidia": ".cuda"}[vendor], __name__)


def _c_arg(a):
    if isinstance(a, torch.Tensor):
        return ctypes.c_void_p(a.data_ptr())
    if a is None:
        return ctypes.c_void_p(0)
    if isinstance(a, bool):
        return ctypes.c_int(int(a))
    if isinstance(a, int):
        return ctypes.c_int(a)
    if isinstance(a, float):
        return ctypes.c_float(a)
    if isinstance(a, (ctypes._SimpleCData, ctypes.Structure)):    # a Structure: by value (a TMA map)
        return a
    raise TypeError(f"kernel argument of type {type(a).__name__} is not supported")


class Kernel:
    """One compiled kernel loaded on one device."""

    def __init__(self, spec: KernelSpec, device: torch.device):
        self.spec = spec
        self.device = device
        self.entry = cache.get(spec)
        family = get_family(spec.family)
        self.consts = family.consts(spec)   # launch constants the template was rendered with
        self._driver = driver(spec.target.vendor)
        self._occupancy_inputs = None
        # Programmatic dependent launch where the template waits for the prior grid (families' "pdl")
        self.pdl = bool(self.consts.get("pdl")) and env.pdl()
        with torch.cuda.device(device):
            self.module, self.function = self._driver.load(self.entry.binary, family.entry)
            if self.consts.get("shared", 0) > 48 * 1024:      # dynamic shared memory past the default cap
                self._driver.allow_shared(self.function, self.consts["shared"])

    def __call__(self, grid, block, *args, shared: int = 0, stream: int | None = None,
                 cluster: tuple | None = None) -> None:
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        if stream is None:
            stream = torch.cuda.current_stream(self.device).cuda_stream
        cargs = [_c_arg(a) for a in args]
        self._driver.launch(self.function, grid, block, cargs, shared, stream, self.pdl, cluster)

    def attributes(self) -> dict:
        """Registers, shared memory, local memory... as the driver reports them."""
        return self._driver.attributes(self.function)

    def resident_blocks(self, threads: int) -> int:
        """Blocks of `threads` one multiprocessor keeps resident at once, as its registers, shared
        memory and thread slots allow (registers are allocated per warp in 256s)."""
        if self._occupancy_inputs is None:
            props = torch.cuda.get_device_properties(self.device)
            attrs = self.attributes()
            self._occupancy_inputs = (attrs["registers"], attrs["shared_bytes"], props.warp_size,
                                      getattr(props, "regs_per_multiprocessor", 65536),
                                      getattr(props, "shared_memory_per_multiprocessor", 1 << 16),
                                      props.max_threads_per_multi_processor)
        regs, shared, wave, sm_regs, sm_shared, sm_threads = self._occupancy_inputs
        warps = -(-threads // wave)
        per_warp = -(-max(regs, 1) * wave // 256) * 256
        return min(sm_regs // (per_warp * warps), sm_shared // max(shared, 1), sm_threads // threads, 32)


_loaded: dict[tuple, Kernel] = {}


def get_kernel(spec: KernelSpec, device) -> Kernel:
    """The loaded kernel for (spec, device), compiling and loading it on first use."""
    device = torch.device(device)
    if device.index is None:
        device = torch.device(device.type, torch.cuda.current_device())
    k = _loaded.get((spec, device.index))
    if k is None:
        k = _loaded[(spec, device.index)] = Kernel(spec, device)
    return k
