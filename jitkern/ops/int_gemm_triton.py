"""Fused prefill GEMM over the int layout (M > 8 rows), in Triton.

The dequantize + BLAS path writes an fp16 copy of W (4x the int4 bytes) and reads it back; at M = 512
that traffic costs as much as the GEMM.  Here each program unpacks its [BK, BN] weight block in
registers -- one load of every word, 8 / (32 / bits) shifts -- scales it in fp16 exactly as the
dequantizer does, and feeds tl.dot (tensor cores, fp32 accumulation).

Used for 4- and 8-bit layouts on NVIDIA sm_80+ when Triton is importable, up to MAX_M rows; Triton
does not target gfx906, which keeps dequantize + rocBLAS (ops/gptq.py), as do longer prompts.  Layout: jitkern/formats/layout.py -- word row
``k // 8`` (int4) or ``2 * (k // 8) + (k % 8) // 4`` (int8) of 32-column tile ``n // 32``; row k's
value sits at bit ``bits * ((k % 8) // 2 % (32 / bits / 2)) + 16 * (k % 2)`` of its word.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:          # optional: the BLAS path serves without it
    triton = None

from ..formats.layout import TILE_N, IntLayout

BITS = (4, 8)
# Above this many rows dequantize + cuBLAS is faster on an H100 (int4, M = 16: 0.30 vs 0.13 of fp16's
# bandwidth; M = 512: at best 0.51 over five block shapes vs 0.55 of its throughput; 2026-11-26).
MAX_M = 64


def available(layout: IntLayout, device: torch.device) -> bool:
    if triton is None or device.type != "cuda" or layout.bits not in BITS or torch.version.hip:
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


if triton is not None:
    TILE = tl.constexpr(TILE_N)

    @triton.jit(do_not_specialize=["M"])     # one compile serves every row count of a config
    def _int_gemm(x_ptr, qw_ptr, s_ptr, z_ptr, ug_ptr, b_ptr, out_ptr, M, N, K, n_pad, group_size,
                  stride_xm, BITS: tl.constexpr, SYM: tl.constexpr, ACT_ORDER: tl.constexpr,
                  HAS_BIAS: tl.constexpr, GROUP_PER_STEP: tl.constexpr, BM: tl.constexpr,
                  BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
        # Programs walk GROUP_M row blocks per column block, so a weight block is reused from L2.
        pid = tl.program_id(0)
        num_m, num_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
        per_group = GROUP_M * num_n
        first_m = (pid // per_group) * GROUP_M
        rows_m = tl.minimum(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % rows_m
        pid_n = (pid % per_group) // rows_m

        offs_m = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)     # M * N may pass 2^31
        offs_n = pid_n * BN + tl.arange(0, BN)
        n_ok = offs_n < n_pad
        WPO: tl.constexpr = BITS // 4                 # words per 8 rows
        PER: tl.constexpr = 8 // WPO                  # rows per word
        word_rows = K * BITS // 32
        col_base = (offs_n // TILE) * word_rows * TILE + offs_n % TILE
        i = tl.arange(0, PER)
        shift = tl.reshape(BITS * (i // 2) + 16 * (i % 2), (1, 1, PER, 1))
        zero = 1024 + (1 << (BITS - 1))               # 1024 + z, as the unpack below needs
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            offs_k = k0 + tl.arange(0, BK)
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=offs_m[:, None] < M, other=0.0)
            wr = k0 // 8 * WPO + tl.arange(0, BK // 8 * WPO)
            w = tl.load(qw_ptr + col_base[None, :] + wr[:, None] * TILE, mask=n_ok[None, :], other=0)
            # q OR-ed into the mantissa of fp16 1024.0 (ulp 1) is 1024 + q exactly; subtracting 1024 + z
            # in fp16 leaves q - z exactly, with no integer-to-float conversion (a slow op).
            q = ((tl.reshape(w, (BK // 8, WPO, 1, BN)) >> shift) & ((1 << BITS) - 1)) | 0x6400
            q = tl.reshape(q, (BK, BN)).to(tl.int16).to(tl.float16, bitcast=True)
            if GROUP_PER_STEP:                        # one group for the whole step: [BN] vectors
                g = k0 // group_size
                s = tl.load(s_ptr + g * n_pad + offs_n, mask=n_ok, other=0.0)[None, :]
                if SYM:
                    z = zero
                else:
                    z = tl.load(z_ptr + g * n_pad + offs_n, mask=n_ok, other=0).to(tl.float16)[None, :] + 1024
            else:                                     # a group per row (act-order, small groups)
                if ACT_ORDER:
                    g = tl.load(ug_ptr + offs_k // 32)
                else:
                    g = offs_k // group_size
                idx = g[:, None] * n_pad + offs_n[None, :]
                s = tl.load(s_ptr + idx, mask=n_ok[None, :], other=0.0)
                if SYM:
                    z = zero
                else:
                    z = tl.load(z_ptr + idx, mask=n_ok[None, :], other=0).to(tl.float16) + 1024
            wf = (q - z) * s
            acc = tl.dot(x, wf, acc)
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(tl.float16), mask=out_mask)


def config(m: int) -> dict:
    """Block shape by row count (fixed, no autotuning: it must not run inside a graph capture)."""
    if m <= 32:
        return dict(BM=32, BN=64, BK=128, num_warps=4, num_stages=4)
    return dict(BM=64, BN=128, BK=64, num_warps=4, num_stages=4)


def gemm(x: torch.Tensor, layout: IntLayout, bias: torch.Tensor | None = None) -> torch.Tensor:
    """out[M, N] = x @ W.T; x fp16 [M, k] in layout row order (act-order: already gathered)."""
    m = x.shape[0]
    out = torch.empty(m, layout.n, dtype=torch.float16, device=x.device)
    c = config(m)
    while layout.k % c["BK"]:                 # K is a multiple of 32
        c["BK"] //= 2
    group = layout.group_size if layout.group_size < layout.k else layout.k
    per_step = not layout.act_order and group % c["BK"] == 0
    grid = (triton.cdiv(m, c["BM"]) * triton.cdiv(layout.n, c["BN"]),)
    _int_gemm[grid](x, layout.qweight, layout.scales, layout.zeros if layout.zeros is not None else layout.scales,
                    layout.unit_group if layout.act_order else layout.scales, bias if bias is not None else out,
                    out, m, layout.n, layout.k, layout.n_pad, group, x.stride(0), BITS=layout.bits,
                    SYM=layout.symmetric, ACT_ORDER=layout.act_order, HAS_BIAS=bias is not None,
                    GROUP_PER_STEP=per_step, GROUP_M=8, **c)
    return out


_warm: set = set()


def warm(layout: IntLayout) -> None:
    """Compile every config this layer can hit (with and without bias) before any graph capture."""
    key = (layout.bits, layout.symmetric, layout.act_order, layout.k, layout.n, layout.group_size,
           layout.qweight.device)
    if key in _warm:
        return
    for m in (32, MAX_M):
        x = torch.zeros(m, layout.k, dtype=torch.float16, device=layout.qweight.device)
        gemm(x, layout)
        gemm(x, layout, torch.zeros(layout.n, dtype=torch.float16, device=x.device))
    _warm.add(key)
