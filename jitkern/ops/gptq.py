"""GPTQ / AWQ linear: GEMV kernels for 1..8 rows, dequantize + BLAS GEMM above, CPU reference.

Kernels are resolved once per (variant, device) in ``prepare`` — when a layer is built or loaded —
so the forward only looks up a dict and launches.
"""
from __future__ import annotations

import torch

from .. import env
from ..formats.checks import expect, expect_tensor, rows_in_32bit_reach, vector_rows
from ..formats.layout import TILE_N, IntLayout
from ..runtime import get_kernel
from . import blas, int_gemm_triton, splitk, waves, xpack
from ..families import GEMM_TOKENS, get_family
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
    if get_family("gptq_gemm").supports(arch):
        for tokens in GEMM_TOKENS:
            specs.append(KernelSpec("gptq_gemm", "gptq", bits=bits, group=group, m=tokens, arch=arch, options=opts))
            specs.append(KernelSpec("x_pack", "f16", m=tokens, arch=arch))
    return specs


_kernels: dict[tuple, dict] = {}


def _kernel_name(spec: KernelSpec):
    """A variant's kernels by name: ("gemv", m) per row count, ("gemm", tokens) and ("pack", tokens) per
    token tile, "dequant" and "gather" once."""
    short = {"gptq_gemv": "gemv", "gptq_gemm": "gemm", "x_pack": "pack", "gptq_dequant": "dequant",
             "x_gather": "gather"}[spec.family]
    return (short, spec.m) if spec.family in ("gptq_gemv", "gptq_gemm", "x_pack") else short


def _variant_kernels(layout: IntLayout, device, arch: str | None = None) -> dict:
    """The loaded kernels of the layout's variant on a device (compiled or loaded from the cache once):
    a dict lookup on every call after the first."""
    v = variant(layout)
    key = (tuple(v.values()), device)
    found = _kernels.get(key)
    if found is None:
        target = resolve(arch, device)
        specs = kernel_specs(v["bits"], v["group"], v["sym"], v["act_order"], target.arch)
        found = {_kernel_name(s): get_kernel(s, device) for s in specs}
        _kernels[key] = found
    return found


def prepare(layout: IntLayout, device=None, arch: str | None = None) -> dict:
    """Everything one layer can hit, done when it is loaded (before any graph capture): compile or load
    its variant's kernels, size the split-K workspace for its shape, compile its Triton prefill."""
    device = torch.device(device if device is not None else layout.qweight.device)
    found = _variant_kernels(layout, device, arch)
    if device.type == "cuda":
        _reserve_workspace(found, layout, device)
        if ("gemm", GEMM_TOKENS[0]) in found:
            mma_perm(layout)
        if _fused_prefill(layout, device):              # short prompts, and layers the wgmma GEMM leaves
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
    x = rows_in_32bit_reach(x)
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


# Layout row order -> the k order of the wgmma GEMM's MMAs (templates/gptq_gemm.hip.j2): slot
# 16j + 8h + 2t + e of a 32-row unit holds row 8t + 4j + 2h + e.
_slot = torch.arange(32)
_UNIT_ORDER = 8 * (_slot % 8 // 2) + 4 * (_slot // 16) + 2 * (_slot % 16 // 8) + _slot % 2


def mma_perm(layout: IntLayout) -> torch.Tensor:
    """The activation columns the wgmma GEMM reads, in its order (act-order's perm folded in);
    computed once a layer, when it is prepared."""
    found = getattr(layout, "_mma_perm", None)
    if found is None:
        rows = (torch.arange(0, layout.k, 32)[:, None] + _UNIT_ORDER[None, :]).flatten()
        rows = rows.to(device=layout.qweight.device, dtype=torch.int32)
        found = layout.perm[rows].contiguous() if layout.act_order else rows
        layout._mma_perm = found
    return found


GEMM_SPLITS = (1, 2)         # K splits of the wgmma GEMM: a cluster of that many blocks per output tile


def _wgmma_shape(consts: dict, layout: IntLayout, m: int) -> tuple[int, int, int]:
    """The wgmma GEMM's column blocks, token tiles and 64-row steps of K for M tokens."""
    return -(-layout.n_pad // consts["columns"]), -(-m // consts["tokens"]), -(-layout.k // 64)


def _wgmma_plan(kernels: dict, layout: IntLayout, m: int, device) -> int | None:
    """The wgmma GEMM's token tile of least estimated time (ops/waves.py), or None
    (dequantize + cuBLAS) for M below a 256-token tile or where even the best tile leaves too many SMs
    idle.  H100, int4, M = 512, fractions of fp16 cuBLAS with each plan forced in one run (tokens /
    K splits); the model picks the best of each layer:

        layer        256/1  256/2  128/1  128/2  cuBLAS     layer         256/1  256/2  128/1  128/2  cuBLAS
        8B qkv       0.76   0.50   0.62   0.59   0.61       70B qkv       0.62   0.66   0.69   0.65   0.55
        8B o         0.53   0.62   0.77   0.59   0.63       70B o         0.91   0.69   0.77   0.63   0.55
        8B gate_up   0.81   0.65   0.78   0.58   0.53       70B gate_up   0.94   0.81   0.81   0.68   0.56
        8B down      0.58   0.79   0.82   0.69   0.57       70B down      0.91   0.85   0.78   0.71   0.51

    Splitting K (a cluster of two blocks a tile) gives as many blocks as halving the tile, and ran
    slower than it on every layer, so the op does not split; the kernel still can (_wgmma_gemm)."""
    if m < GEMM_TOKENS[0]:
        return None
    blocks = {}
    for tokens in GEMM_TOKENS:
        columns, tiles, _ = _wgmma_shape(kernels[("gemm", tokens)].consts, layout, m)
        blocks[tokens] = columns * tiles
    return waves.best_tile(blocks, splitk.multiprocessors(device))


def _weight_map(layout: IntLayout, consts: dict):
    """The GEMM's TMA map of the packed words [N_pad/32, K*bits/32, 32], seen as [tile][half][row][16
    words] (gptq_gemm.hip.j2 reads each half's rows 64 bytes apart): a box is one 64-row step of a
    block's tiles, so a step's weights are one copy (four 1D copies of its tiles ran 13% slower)."""
    from ..runtime import cuda

    q = layout.qweight
    expect(q.is_contiguous() and q.element_size() == 4 and q.data_ptr() % 16 == 0, "layout.qweight",
           "contiguous, 16-byte aligned 32-bit words", f"strides {q.stride()}, address {q.data_ptr():#x}")
    tiles, rows, half = q.shape[0], q.shape[1], TILE_N // 2
    box = (half, 2 * layout.bits, 2, consts["columns"] // TILE_N)
    return cuda.tensor_map(q.data_ptr(), (half, rows, 2, tiles), box, strides=(TILE_N * 4, half * 4, rows * TILE_N * 4))


def _wgmma_gemm(kernels: dict, x: torch.Tensor, layout: IntLayout, bias: torch.Tensor | None,
                out: torch.Tensor | None = None, splits: int = 1, tokens: int = GEMM_TOKENS[0]) -> torch.Tensor:
    """x_pack lays x out in the GEMM's tiles of `tokens` (through mma_perm), then the GEMM multiplies,
    K split across clusters of `splits` blocks."""
    expect(("gemm", tokens) in kernels, "tokens", f"one of {GEMM_TOKENS}", tokens)
    gemm, m = kernels[("gemm", tokens)], x.shape[0]
    c = gemm.consts
    columns, tiles, steps = _wgmma_shape(c, layout, m)
    expect(splits in GEMM_SPLITS and splits <= steps, "splits", f"one of {GEMM_SPLITS}, at most {steps}", splits)
    xp = xpack.pack(kernels[("pack", tokens)], x, mma_perm(layout), tokens)
    if out is None:
        out = torch.empty(m, layout.n, dtype=torch.float16, device=x.device)
    gemm((columns, tiles, splits), (c["threads"],), xp, _weight_map(layout, c), layout.scales, layout.zeros,
         layout.unit_group, bias, out, m, layout.k, layout.n, shared=c["shared"],
         cluster=(1, 1, splits) if splits > 1 else None)
    return out


def gemm(x: torch.Tensor, layout: IntLayout, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Prefill: on an H100 (sm_90) the wgmma GEMM where it is faster (_wgmma_plan); else the fused
    Triton GEMM for short prompts where it runs (NVIDIA sm_80+, 4/8-bit, M <= 64); otherwise
    dequantize column strips into a bounded fp16 workspace and multiply each with BLAS."""
    kernels = _variant_kernels(layout, x.device)
    plan = None
    if env.prefill_backend() == "auto":
        plan = _wgmma_plan(kernels, layout, x.shape[0], x.device)
    if plan is not None:
        return _wgmma_gemm(kernels, x, layout, bias, tokens=plan)
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
    """Dispatch on rows: GEMV up to JITKERN_GEMV_MAX_M (default 8), dequantize + GEMM above.
    x: fp16 [M, k_in] whose rows are contiguous and start 16-byte aligned (the kernels load it 16
    bytes at a time; the jitkern::gptq_linear op copies a view that does not)."""
    expect_tensor("x", x, dtype=torch.float16, ndim=2, device=layout.qweight)
    expect(x.shape[1] == layout.k_in, "x", f"{layout.k_in} columns (in_features)", tuple(x.shape))
    expect(vector_rows(x), "x", "rows of contiguous, 16-byte aligned fp16",
           f"strides {x.stride()}, address {x.data_ptr():#x}")
    if x.shape[0] == 0:
        return x.new_empty(0, layout.n, dtype=torch.float16)
    if x.shape[0] <= min(env.gemv_max_m(), MAX_GEMV_M):
        return gemv(x, layout, bias)
    return gemm(x, layout, bias)
