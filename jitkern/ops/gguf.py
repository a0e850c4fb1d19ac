"""GGUF linear: GEMV for 1..8 rows, dequantize + BLAS GEMM above, float32 reference on CPU.

Two GEMV paths, picked by the target (``families._gguf_consts``: ``mma``):

* NVIDIA sm_80+ (tensor cores): fp16 activations go straight to the kernel (no quantization launch);
  each 16-element weight group is decoded to fp16 ``y = a*v + c`` (v exact, then one fp16 rounding)
  and multiplied on mma m16n8k16 with fp32 accumulation.  Error budget against a float64 product of
  the dequantized weights: a and c rounded to fp16 (≤ 2^-12 relative, a per-group factor) and y
  rounded to fp16 (≤ 2^-12 relative per element), random in sign, so ‖out−ref‖/‖ref‖ is ~2-3e-4
  (the host model in tests/gguf_host.py measures that for all 12 types) plus the fp16 rounding of the
  output (≤ 2^-12 per element, ~1.4e-4 rms): ~3-4e-4, inside 2e-3.  Groups whose fp16 factor a falls
  below 2^-14 (subnormal) lose relative precision, but their weights are then below 2^-14 · |v| too.
* Everything else (gfx906 first: v_dot4_i32_i8): activations are quantized per 32 to Q8_1 int8 quants
  (d = amax/127, kernel-spec §1.3.4) *plus* a second int8 plane holding the rounding residual at
  d/254, so each activation is represented to within amax/64516 (about 1.5e-5 of amax); integer dot
  products are exact and the per-16 scale products and sums are fp32.  Expected error ~1e-5 plus the
  fp16 rounding of the output: well inside 2e-3.  (llama.cpp's single-plane Q8_1 costs ~5e-3 on
  Gaussian activations.)

Kernels are resolved once per (type, device) in ``prepare`` so a forward only looks up a dict.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import env
from . import blas, gguf_gemm, splitk
from ..arch import resolve
from ..families import GGUF_GEMM_TOKENS, get_family
from ..formats.checks import expect, expect_tensor, loadable_rows, rows_in_32bit_reach, vector_rows
from ..formats.gguf import GGUFLayout, dequantize_layout, gguf_type
from ..runtime import get_kernel
from ..spec import KernelSpec

MAX_GEMV_M = 8
THREADS = 256
ROWS_PER_BLOCK = THREADS // 32     # gguf_gemv integer path: 32 lanes per output row
MMA_ROWS = 16                      # gguf_gemv tensor-core path: rows of one m16n8k16 A tile
MAX_GRID_Y = 65535                 # gguf_dequant: one block row per output row


def uses_mma(arch: str) -> bool:
    """True where the GEMV runs on tensor cores with fp16 activations (no activation quantizer)."""
    return bool(get_family("gguf_gemv").consts(KernelSpec("gguf_gemv", "q4_0", arch=arch))["mma"])


def kernel_specs(qtype, arch: str, max_m: int = MAX_GEMV_M) -> list[KernelSpec]:
    """Every kernel one GGUF type can hit: GEMV for M = 1..max_m, the activation quantizer (integer
    path only), the fp16 dequantizer (prefill) and, on an H100, the prefill GEMM and its packer in both
    token tiles."""
    fmt = gguf_type(qtype).name.lower()
    specs = [KernelSpec("gguf_gemv", fmt, m=m, arch=arch) for m in range(1, min(max_m, MAX_GEMV_M) + 1)]
    if not uses_mma(arch):
        specs.append(KernelSpec("q8_1_quantize", "q8_1", arch=arch))
    specs.append(KernelSpec("gguf_dequant", fmt, act="f16", arch=arch))
    if get_family("gguf_gemm").supports(arch):
        for tokens in GGUF_GEMM_TOKENS:
            specs.append(KernelSpec("gguf_gemm", fmt, m=tokens, arch=arch))
            specs.append(KernelSpec("x_pack", "f16", m=tokens, arch=arch))
    return specs


_kernels: dict[tuple, dict] = {}


def _key(spec: KernelSpec):
    if spec.family == "gguf_gemv":
        return ("gemv", spec.m)
    if spec.family == "gguf_dequant":
        return ("dequant", spec.act)
    if spec.family in ("gguf_gemm", "x_pack"):
        return ("gemm" if spec.family == "gguf_gemm" else "pack", spec.m)     # per token tile
    return "quantize"


def _device(layout: GGUFLayout, device) -> torch.device:
    """The device a call runs on, with its index (the key of the kernel and k-order caches)."""
    device = torch.device(device if device is not None else layout.qs.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _loaded(layout: GGUFLayout, device=None, arch: Optional[str] = None) -> dict:
    """The loaded kernels of the layout's type on a device (compiled or loaded from the cache once): a
    dict lookup on every call after the first, which the forward paths make."""
    device = _device(layout, device)
    key = (layout.qtype, device)
    found = _kernels.get(key)
    if found is None:
        target = resolve(arch, device)
        found = {_key(s): get_kernel(s, device) for s in kernel_specs(layout.qtype, target.arch)}
        _kernels[key] = found
    return found


def prepare(layout: GGUFLayout, device=None, arch: Optional[str] = None) -> dict:
    """Everything one layer can hit, done when it is loaded (never under graph capture): its type's
    kernels, and the prefill GEMM's k order for its K (a host-to-device copy, once a type and K)."""
    device = _device(layout, device)
    found = _loaded(layout, device, arch)
    if ("gemm", GGUF_GEMM_TOKENS[0]) in found and gguf_gemm.takes_k(layout.qtype, layout.k):
        gguf_gemm.k_order(layout, device)
    return found


def _kernel(layout: GGUFLayout, device, key):
    ks = _loaded(layout, device)
    if key not in ks:            # fp32 dequant (tests, exact checks) is not part of the hot set
        ks[key] = get_kernel(KernelSpec("gguf_dequant", layout.qtype.lower(), act=key[1],
                                        arch=resolve(None, device).arch), device)
    return ks[key]


def check_layout(layout: GGUFLayout, x: Optional[torch.Tensor] = None, bias=None) -> None:
    """Cheap checks before a launch (the module checks more, with friendlier names)."""
    expect(isinstance(layout, GGUFLayout), "layout", "a GGUFLayout", type(layout).__name__)
    qt = gguf_type(layout.qtype, "layout.qtype")
    expect(layout.k % qt.block == 0, "layout", f"K a multiple of {qt.block}", layout.k)
    expect_tensor("layout.qs", layout.qs, dtype=torch.uint8, shape=(layout.n, layout.k // qt.block, qt.quant_bytes))
    expect_tensor("layout.hdr", layout.hdr, dtype=torch.uint8, shape=(layout.n, layout.header_row_bytes),
                  device=layout.qs)
    expect(layout.qs.numel() < 2 ** 32 and layout.hdr.numel() < 2 ** 32, "layout", "< 4 GiB a tensor",
           layout.qs.numel())
    if x is not None:
        expect_tensor("x", x, dtype=torch.float16, ndim=2, device=layout.qs)
        expect(x.shape[1] == layout.k, "x", f"{layout.k} columns", tuple(x.shape))
        expect(vector_rows(x), "x", "rows of contiguous, 16-byte aligned fp16", f"strides {x.stride()}")
    if bias is not None:
        expect_tensor("bias", bias, dtype=torch.float16, shape=(layout.n,), device=layout.qs)


def quantize_activations(x: torch.Tensor):
    """fp16 x [M, K] -> (xq int8 [K/16, M, 32], xm float32 [K/16, M, 2]) for the integer GEMV:
    per 16-element group and row, 16 hi bytes then 16 lo bytes, and (d/254, sum of the 16 x)."""
    m, k = x.shape
    xq = torch.empty(k // 16, m, 32, dtype=torch.int8, device=x.device)
    xm = torch.empty(k // 16, m, 2, dtype=torch.float32, device=x.device)
    kernel = prepare_quantizer(x.device)
    blocks = (m * (k // 32) + THREADS - 1) // THREADS
    kernel((blocks,), (THREADS,), x, xq, xm, m, k, x.stride(0))
    return xq, xm


_quantizers: dict = {}


def prepare_quantizer(device):
    device = torch.device(device)
    k = _quantizers.get(device)
    if k is None:
        k = _quantizers[device] = get_kernel(KernelSpec("q8_1_quantize", "q8_1", arch=resolve(None, device).arch), device)
    return k


def gemv(x: torch.Tensor, layout: GGUFLayout, bias: Optional[torch.Tensor] = None,
         out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = x @ W.T (+ bias) for 1 <= M <= 8 rows of fp16 x [M, K] on the layout's device."""
    m = x.shape[0]
    expect(1 <= m <= MAX_GEMV_M, "x", f"1..{MAX_GEMV_M} rows for the GEMV", m)
    x = rows_in_32bit_reach(x)
    kernel = _loaded(layout, x.device)[("gemv", m)]
    if out is None:
        out = torch.empty(m, layout.n, dtype=torch.float16, device=x.device)
    expect_tensor("out", out, dtype=torch.float16, shape=(m, layout.n), device=x.device)
    expect(out.is_contiguous(), "out", "a contiguous tensor", out.stride())
    if kernel.consts["mma"]:
        rows = MMA_ROWS * kernel.consts["tiles"]          # a block's rows; its warps split K
        blocks = (layout.n + rows - 1) // rows
        warps = mma_warps(kernel, blocks, x.device)
        kernel((blocks,), (32 * warps,), layout.qs, layout.hdr, x, bias, out, layout.n, layout.k,
               layout.header_row_bytes, x.stride(0), shared=4 * warps * m * rows)
        return out
    xq, xm = quantize_activations(x)
    grid = ((layout.n + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK,)
    kernel(grid, (THREADS,), layout.qs, layout.hdr, xq, xm, bias, out, layout.n, layout.k,
           layout.header_row_bytes)
    return out


_warps: dict = {}


# A warp of a build with one step in flight walks its part of K one memory round trip a step: alone
# in its block it is latency-bound.  Where one wave needs 1-warp blocks, such builds take this many
# (several waves).  H200, same run: 70B gate_up Q4_K M=8 125.8 -> 106.3 us; 8B gate_up M=1 Q4_0
# 26.5 -> 21.6, Q4_K 29.1 -> 27.0, Q4_1 26.0 -> 25.5, at M=8 Q4_1 32.0 -> 31.5, Q4_0 30.0 -> 30.7.
# The pipelined Q8_0 build (two steps in flight) measured slower with it (M=1 32.8 -> 34.5); the
# other one-step types follow Q4_K / Q4_0 unmeasured.
MIN_WARPS_ONE_STEP = 4


def mma_warps(kernel, blocks: int, device) -> int:
    """Warps splitting K in a block of the tensor-core GEMV: as many as keep all blocks resident in one
    wave (N = 6144 in 8-warp blocks would need 1.5 waves, the last one half empty), but not a lone
    warp with one step in flight (MIN_WARPS_ONE_STEP); where even 1-warp blocks need several waves,
    the most a block takes (many waves, small tail)."""
    key = (id(kernel), blocks)
    found = _warps.get(key)
    if found is None:
        sms = splitk.multiprocessors(device)
        most = found = kernel.consts["max_threads"] // 32
        while found > 1 and blocks > sms * kernel.resident_blocks(32 * found):
            found //= 2
        if blocks > sms * kernel.resident_blocks(32 * found):
            found = most
        elif found == 1 and not kernel.consts.get("pipelined"):
            found = min(MIN_WARPS_ONE_STEP, most)
        _warps[key] = found
    return found


def dequantize(layout: GGUFLayout, row0: int = 0, rows: Optional[int] = None,
               out: Optional[torch.Tensor] = None, dtype=torch.float16) -> torch.Tensor:
    """W rows [row0, row0 + rows) as fp16 (or fp32: bit-exact with gguf.quants) [rows, K]."""
    rows = layout.n - row0 if rows is None else rows
    act = {torch.float16: "f16", torch.float32: "f32"}[dtype]
    if out is None:
        out = torch.empty(rows, layout.k, dtype=dtype, device=layout.qs.device)
    expect_tensor("out", out, dtype=dtype, shape=(rows, layout.k), device=layout.qs)
    expect(out.stride(1) == 1 and out.stride(0) % 8 == 0, "out", "rows of 16-byte aligned vectors", out.stride())
    if rows == 0:
        return out
    kernel = _kernel(layout, layout.qs.device, ("dequant", act))
    per_row = (layout.k // 8 + THREADS - 1) // THREADS     # one thread per 8 outputs (gguf_dequant.hip.j2)
    for r in range(0, rows, MAX_GRID_Y):
        kernel((per_row, min(MAX_GRID_Y, rows - r)), (THREADS,), layout.qs, layout.hdr, out[r:], rows - r,
               layout.k, layout.header_row_bytes, row0 + r, out.stride(0))
    return out


def gemm(x: torch.Tensor, layout: GGUFLayout, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Prefill: on an H100 the wgmma GEMM where it fills the GPU (ops/gguf_gemm.py); otherwise
    dequantize row strips into a bounded fp16 workspace (JITKERN_WORKSPACE_MB) and multiply each with
    BLAS straight into its columns of the output (bias in the GEMM's epilogue)."""
    kernels = _loaded(layout, x.device)
    tokens = gguf_gemm.plan(layout, kernels, x.shape[0], x.device)
    if tokens is not None:
        return gguf_gemm.gemm(kernels, x, layout, bias, tokens=tokens)
    out = torch.empty(x.shape[0], layout.n, dtype=torch.float16, device=x.device)
    # whole 64-row strips: each strip's output columns start 128-byte aligned for cuBLAS
    per_chunk = max(64, env.workspace_bytes() // (layout.k * 2) // 64 * 64)
    ws = None if per_chunk >= layout.n else torch.empty(per_chunk, layout.k, dtype=torch.float16, device=x.device)
    for r0 in range(0, layout.n, per_chunk):
        rows = min(per_chunk, layout.n - r0)
        w = dequantize(layout, r0, rows, out=None if ws is None else ws[:rows])
        dst = out if ws is None else out[:, r0:r0 + rows]      # row stride N: cuBLAS writes it in place
        with blas.fp32_reductions():                            # no fp16 split-K partials (inf)
            if bias is None:
                torch.mm(x, w.t(), out=dst)
            else:
                torch.addmm(bias[r0:r0 + rows], x, w.t(), out=dst)
    return out


def reference_linear(x: torch.Tensor, layout: GGUFLayout, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CPU / reference: dequantize (bit-exact) and multiply in float32."""
    y = x.float() @ dequantize_layout(layout).to(x.device).t()
    if bias is not None:
        y = y + bias.float()
    return y


def linear(x: torch.Tensor, layout: GGUFLayout, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dispatch on rows: GEMV up to JITKERN_GEMV_MAX_M (default 8), dequantize + GEMM above."""
    if x.device.type == "cpu":
        return reference_linear(x, layout, bias).to(torch.float16 if x.dtype == torch.float16 else x.dtype)
    check_layout(layout, x, bias)
    if x.shape[0] == 0:
        return x.new_empty(0, layout.n, dtype=torch.float16)
    if x.shape[0] <= min(env.gemv_max_m(), MAX_GEMV_M):
        return gemv(x, layout, bias)
    return gemm(x, layout, bias)


# ---------------------------------------------------------------------------------------------
# torch.library: one opaque op, so torch.compile and graphs see a single call with a fake impl.

calls = {"gguf_linear": 0}


@torch.library.custom_op("jitkern::gguf_linear", mutates_args=())
def gguf_linear_op(x: torch.Tensor, qs: torch.Tensor, hdr: torch.Tensor, bias: Optional[torch.Tensor],
                   qtype: str, n: int, k: int) -> torch.Tensor:
    calls["gguf_linear"] += 1
    layout = GGUFLayout(qtype, n, k, qs, hdr)
    if x.device.type == "cpu":
        return reference_linear(x, layout, bias).to(x.dtype)
    return linear(loadable_rows(x), layout, bias)


@gguf_linear_op.register_fake
def _(x, qs, hdr, bias, qtype, n, k):
    return x.new_empty(x.shape[0], n, dtype=x.dtype if x.device.type == "cpu" else torch.float16)


def gguf_linear(x2d: torch.Tensor, layout: GGUFLayout, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    return gguf_linear_op(x2d, layout.qs, layout.hdr, bias, layout.qtype, layout.n, layout.k)
