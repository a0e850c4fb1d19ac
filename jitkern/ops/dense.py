"""Unquantized fp16 linear: GEMV kernels for 1..16 rows (lm_head, dense layers), ``F.linear`` above.

Weights stay in PyTorch's layout [N, K].  bf16: the kernels are fp16-only.  Where the arch has no bf16
arithmetic (gfx906, gfx908) bf16 activations and weights are computed as fp16 (``DenseLinear`` converts
its weight once; values beyond fp16's range would overflow, which real checkpoints do not reach) and
results are returned as bf16.  Where the arch has bf16 (NVIDIA sm_80+, gfx90a+), bf16 goes to
``F.linear``.  CPU tensors run ``F.linear`` in float32.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..arch import Target, resolve
from ..families import get_family
from ..formats.checks import expect, expect_tensor, loadable_rows, rows_in_32bit_reach
from ..runtime import get_kernel
from ..spec import KernelSpec

MAX_GEMV_M = 16
WAVE_UNIT = 64                   # K halves a warp streams per step (the template's UNIT)
calls = {"dense_linear": 0}      # how often the op ran (tests prove which path an engine took)


def kernel_specs(arch: str, max_m: int = MAX_GEMV_M) -> list[KernelSpec]:
    """Every kernel a dense layer can hit on ``arch``: GEMV for M = 1..max_m."""
    return [KernelSpec("dense_gemv", "f16", m=m, act="f16", arch=arch) for m in range(1, min(max_m, MAX_GEMV_M) + 1)]


def native_bf16(target: Target) -> bool:
    if target.vendor == "nvidia":
        return target.sm >= 80
    return target.base not in ("gfx900", "gfx906", "gfx908") and not target.base.startswith("gfx10")


_kernels: dict[tuple, dict] = {}
_resident: dict[int, int] = {}   # device -> threads the whole GPU keeps resident


def prepare(device=None, arch: Optional[str] = None) -> dict:
    """Compile (or load from the cache) and load the M = 1..16 GEMV kernels on a device."""
    device = torch.device(device if device is not None else "cuda")
    if device.index is None:
        device = torch.device(device.type, torch.cuda.current_device())
    found = _kernels.get((device.index, arch))
    if found is None:
        target = resolve(arch, device)
        found = {s.m: get_kernel(s, device) for s in kernel_specs(target.arch)}
        found["target"] = target
        found["rows"] = get_family("dense_gemv").consts(found[1].spec)["rows"]
        props = torch.cuda.get_device_properties(device)
        _resident[device.index] = props.multi_processor_count * getattr(props, "max_threads_per_multi_processor", 2048)
        _kernels[(device.index, arch)] = found
    return found


def _block(tiles: int, k: int, wave: int, device_index: int, max_threads: int = 512) -> int:
    """Threads per block (4..max_threads/wave warps splitting K): enough that even small N fills every
    SM, while each warp keeps at least two 64-half units of K to stream."""
    threads = 4 * wave
    while threads * 2 <= max_threads and tiles * threads < _resident[device_index] and threads * 4 // wave <= k // WAVE_UNIT:
        threads *= 2
    return threads


def _check(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    expect_tensor("weight", weight, dtype=(torch.float16, torch.bfloat16), ndim=2)
    n, k = weight.shape
    expect_tensor("x", x, dtype=(torch.float16, torch.bfloat16), ndim=2, device=weight)
    expect(x.shape[1] == k, "x", f"last dimension {k} (weight's in_features)", tuple(x.shape))
    expect(1 <= x.shape[0] <= MAX_GEMV_M, "x", f"1..{MAX_GEMV_M} rows for the GEMV", x.shape[0])
    expect(k % 8 == 0, "weight", "in_features a multiple of 8", k)
    expect(weight.is_contiguous() and weight.data_ptr() % 16 == 0, "weight",
           "a contiguous, 16-byte aligned tensor", f"strides {weight.stride()}")
    if bias is not None:
        expect_tensor("bias", bias, dtype=(torch.float16, torch.bfloat16), shape=(n,), device=weight)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = x @ weight.T (+ bias) for x [M, K], 1 <= M <= 16, weight [N, K] on the same GPU."""
    _check(x, weight, bias)
    dtype = x.dtype
    kernels = prepare(x.device)
    if torch.bfloat16 in (x.dtype, weight.dtype):
        if native_bf16(kernels["target"]):
            return F.linear(x.to(weight.dtype), weight, bias if bias is None else bias.to(weight.dtype)).to(dtype)
        weight = weight.half()           # only a bf16 weight passed in directly pays this per call
    x = rows_in_32bit_reach(loadable_rows(x.half()))                 # 128-bit loads of every row
    bias = None if bias is None else bias.half()
    m, (n, k) = x.shape[0], weight.shape
    tiles = (n + kernels["rows"] - 1) // kernels["rows"]
    out = torch.empty(m, n, dtype=torch.float16, device=x.device)
    kernel = kernels[m]
    threads = _block(tiles, k, kernel.spec.wave, x.device.index, kernel.consts["max_threads"])
    kernel((tiles,), (threads,), x, weight, bias, out, k, n, x.stride(0))
    return out if dtype == torch.float16 else out.to(dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [M, K]: GEMV for M <= 16, ``F.linear`` above; CPU tensors in float32."""
    if x.device.type == "cpu":
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)
    if x.shape[0] == 0:
        return x.new_empty(0, weight.shape[0])
    if x.shape[0] <= MAX_GEMV_M:
        return gemv(x, weight, bias)
    if x.dtype != weight.dtype:      # bf16 activations over a weight DenseLinear made fp16 (gfx906)
        return F.linear(x.to(weight.dtype), weight, None if bias is None else bias.to(weight.dtype)).to(x.dtype)
    return F.linear(x, weight, bias)


@torch.library.custom_op("jitkern::dense_linear", mutates_args=())
def dense_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    calls["dense_linear"] += 1
    return linear(x, weight, bias)


@dense_linear_op.register_fake
def _(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0])
