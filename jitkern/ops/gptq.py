"""GPTQ / AWQ linear: GEMV kernels for 1..8 rows, dequantize + BLAS GEMM above, CPU reference.

Kernels are resolved once per (variant, device) in ``prepare`` — when a layer is built or loaded —
so the forward only looks up a dict and launches.
"""
from __future__ import annotations

import torch

from .. import env
from ..formats.layout import TILE_N, IntLayout
from ..runtime import get_kernel
from . import blas, int_gemm_triton, splitk
from ..families import get_family
from ..spec import KernelSpec
from ..arch import resolve

MAX_GEMV_M = 8


def kernel_group(layout: IntLayout) -> int:
    """The group size the kernels are specialized on: -1 when one group spans all of K."""
    return layout.group_size if layout.group_size < layout.k else -1


def variant(layout: IntLayout) -> dict:
    return dict(bits=layout.bits, group=kernel_group(layout),
                sym=layout.symmetric, act_order=layout.act_order)


def kernel_specs(bits: int, group: int, sym: bool, act_order: bool, arch: str,
                 max_m: int = MAX_GEMV_M) -> list[KernelSpec]:
    """Every kernel one GPTQ/AWQ layer variant can hit: GEMV for M = 1..max_m, and the dequantizer."""
    opts = {"sym": sym, "act_order": act_order}
    specs = [KernelSpec("gptq_gemv", "gptq", bits=bits, group=group, m=m, arch=arch, options=opts)
             for m in range(1, min(max_m, MAX_GEMV_M) + 1)]
    specs.append(KernelSpec("gptq_dequant", "gptq", bits=bits, group=group, arch=arch, options=opts))
    if act_order and not get_family("gptq_gemv").consts(specs[0])["gathers_x"]:
        specs.append(KernelSpec("x_gather", "f16", arch=arch))
    return specs


_kernels: dict[tuple, dict] = {}


def _variant_kernels(layout: IntLayout, device, arch: str | None = None) -> dict:
    """The loaded kernels of the layout's variant on a device (compiled or loaded from the cache once):
    a dict lookup on every call after the first."""
    v = variant(layout)
    key = (tuple(v.values()), device)
    found = _kernels.get(key)
    if found is None:
        target = resolve(arch, device)
        specs = kernel_specs(v["bits"], v["group"], v["sym"], v["act_order"], target.arch)
        name = {"gptq_dequant": "dequant", "x_gather": "gather"}
        found = {("gemv", s.m) if s.family == "gptq_gemv" else name[s.family]: get_kernel(s, device) for s in specs}
        _kernels[key] = found
    return found


def prepare(layout: IntLayout, device=None, arch: str | None = None) -> dict:
    """Everything one layer can hit, done when it is loaded (before any graph capture): compile or load
    its variant's kernels, size the split-K workspace for its shape, compile its Triton prefill."""
    device = torch.device(device if device is not None else layout.qweight.device)
    found = _variant_kernels(layout, device, arch)
    if device.type == "cuda":
        _reserve_workspace(found, layout, device)
        if _fused_prefill(layout, device):
            int_gemm_triton.warm(layout)
    return found


def _launch_shape(kernel, layout: IntLayout, device) -> tuple[int, int]:
    if not kernel.consts.get("mma"):
        return kernel.consts["threads"], 1
    return splitk.plan(kernel, layout.n_pad // TILE_N, layout.k // 32, device)


def _reserve_workspace(kernels: dict, layout: IntLayout, device) -> None:
    """Size the split-K workspace for every GEMV of this layer now, outside any graph capture."""
    need = 0
    for m in range(1, MAX_GEMV_M + 1):
        splits = _launch_shape(kernels[("gemv", m)], layout, device)[1]
        if splits > 1:                                 # an unsplit launch needs no workspace
            need = max(need, splits * m * layout.n_pad)
    if need:
        splitk.workspace(device, need, layout.n_pad // TILE_N)


def gemv(x: torch.Tensor, layout: IntLayout, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ W.T for 1 <= M <= 8 rows; x fp16 [M, k_in] contiguous on the layout's device."""
    m = x.shape[0]
    kernels = _variant_kernels(layout, x.device)
    kernel = kernels[("gemv", m)]
    if layout.act_order and not kernel.consts["gathers_x"]:   # the GEMV reads x in layout row order
        x = _gather(kernels["gather"], x, layout.perm)
    out = torch.empty(m, layout.n, dtype=torch.float16, device=x.device)
    tiles = layout.n_pad // TILE_N
    threads, splits = _launch_shape(kernel, layout, x.device)
    sums = done = None
    if splits > 1:
        sums, done = splitk.workspace(x.device, splits * m * layout.n_pad, tiles)
    kernel((tiles, splits), (threads,), x, layout.qweight, layout.scales, layout.zeros, layout.perm,
           layout.unit_group, bias, out, sums, done, layout.k, layout.n, x.stride(0), kernel_group(layout))
    return out


def _gather(kernel, x: torch.Tensor, perm: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x[:, perm] (fp16 [M, len(perm)], contiguous): an act-order layer's activations in layout row order."""
    if out is None:
        out = torch.empty(x.shape[0], perm.numel(), dtype=torch.float16, device=x.device)
    threads = kernel.consts["threads"]
    kernel(((perm.numel() // 8 + threads - 1) // threads, x.shape[0]), (threads,), x, perm, out, perm.numel(),
           x.stride(0))
    return out


def dequantize(layout: IntLayout, tile0: int = 0, tiles: int | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """fp16 W^T [k, n] (layout row order) for tiles [tile0, tile0 + tiles) of 32 columns."""
    tiles = layout.n_pad // TILE_N - tile0 if tiles is None else tiles
    width = min(layout.n, (tile0 + tiles) * TILE_N) - tile0 * TILE_N
    if out is None:
        out = torch.empty(layout.k, width, dtype=torch.float16, device=layout.qweight.device)
    kernel = _variant_kernels(layout, layout.qweight.device)["dequant"]
    threads = kernel.consts["threads"]
    units_per_block = threads // 32
    grid = ((tiles + 3) // 4, (layout.k // 32 + units_per_block - 1) // units_per_block)
    kernel(grid, (threads,), layout.qweight, layout.scales, layout.zeros, layout.unit_group, out,
           layout.k, layout.n, layout.n_pad, kernel_group(layout), tile0, tiles, out.stride(0))
    return out


def _fused_prefill(layout: IntLayout, device, m: int = int_gemm_triton.MAX_M) -> bool:
    return (m <= int_gemm_triton.MAX_M and env.prefill_backend() == "auto"
            and int_gemm_triton.available(layout, device))


def gemm(x: torch.Tensor, layout: IntLayout, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Prefill: the fused Triton GEMM for short prompts where it runs (NVIDIA sm_80+, 4/8-bit, M <= 64);
    otherwise dequantize column strips into a bounded fp16 workspace and multiply each with BLAS."""
    xp = x.index_select(1, layout.perm) if layout.act_order else x
    if _fused_prefill(layout, x.device, x.shape[0]):
        return int_gemm_triton.gemm(xp, layout, bias)
    out = torch.empty(x.shape[0], layout.n, dtype=torch.float16, device=x.device)
    tiles_total = layout.n_pad // TILE_N
    tiles_per_chunk = max(1, env.workspace_bytes() // (layout.k * TILE_N * 2))
    if tiles_per_chunk >= tiles_total:
        blas.matmul(xp, dequantize(layout), out=out)
    else:
        for t0 in range(0, tiles_total, tiles_per_chunk):
            wt = dequantize(layout, t0, min(tiles_per_chunk, tiles_total - t0))
            out[:, t0 * TILE_N: t0 * TILE_N + wt.shape[1]] = blas.matmul(xp, wt)
    if bias is not None:
        out += bias
    return out


def linear(x: torch.Tensor, layout: IntLayout, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch on rows: GEMV up to JITKERN_GEMV_MAX_M (default 8), dequantize + GEMM above."""
    if x.shape[0] == 0:
        return x.new_empty(0, layout.n, dtype=torch.float16)
    if x.shape[0] <= min(env.gemv_max_m(), MAX_GEMV_M):
        return gemv(x, layout, bias)
    return gemm(x, layout, bias)
