"""GGUF prefill on Hopper (sm_90): the wgmma GEMM of templates/gguf_gemm.hip.j2 over the GEMV's layout.

x_pack gathers the activations into the GEMM's tiles in its k order (``k_order``), then one launch
multiplies, in tiles of 256 or 128 tokens, whichever fills the last wave of blocks better (``plan``);
the weights are read once a token tile and never written out in fp16.  The rest dequantize +
cuBLAS: other GPUs, K it cannot box (``takes_k``), odd N, fewer than 128 tokens, layers that leave
too many SMs idle, and JITKERN_PREFILL=blas.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import env
from ..families import GGUF_GEMM_TOKENS, GGUF_GROUPS
from ..formats.checks import expect
from ..formats.gguf import GGUFLayout
from . import splitk, waves, xpack

STAGE = 256                      # elements of K a window of the GEMM (its k order repeats each window)


def stage_order(qtype: str) -> torch.Tensor:
    """The GEMM's k order inside one 256-element window: slot 64q + 16kk + s of sub-step q, k16 step kk
    holds element ``order[...]`` of the window.  Slot s = 2t + e (+ 8 for the word's second pair)
    belongs to lane t, which decodes the window's 16-element group 4q + t; word kk of that group is its
    elements 4kk..4kk+3 (gguf_types.h.j2)."""
    fmt = qtype.lower()
    slices, groups, position = GGUF_GROUPS[fmt]
    block = 16 * slices * groups
    out = torch.empty(STAGE, dtype=torch.int32)
    for q in range(4):
        for kk in range(4):
            for s in range(16):
                t, e, pair = (s % 8) // 2, s % 2, s // 8
                grp = 4 * q + t
                bl, ts, gi = grp // (slices * groups), grp % (slices * groups) // groups, grp % groups
                out[64 * q + 16 * kk + s] = bl * block + position(ts, gi) + 4 * kk + 2 * pair + e
    return out


_orders: dict = {}


def k_order(layout: GGUFLayout, device) -> torch.Tensor:
    """x's columns in the GEMM's k order for the whole row (int32 on `device`), built once a shape."""
    key = (layout.qtype, layout.k, torch.device(device))
    found = _orders.get(key)
    if found is None:
        base = torch.arange(0, layout.k, STAGE, dtype=torch.int32)[:, None]
        found = (base + stage_order(layout.qtype)[None, :]).flatten().to(device)
        _orders[key] = found
    return found


def takes_k(qtype: str, k: int) -> bool:
    """Whether the GEMM takes rows of K elements: whole 256-element stages, and every header plane
    starting 16-byte aligned in a row (a TMA box's inner coordinate must be; the H100 raises an illegal
    instruction otherwise): for Q3_K K a multiple of 1024, for IQ4_XS of 2048 (Llama-2's K = 11008 is
    neither; such layers dequantize + cuBLAS)."""
    from ..formats.gguf import gguf_type

    if k % STAGE:
        return False
    nb, off = k // gguf_type(qtype).block, 0
    for f in gguf_type(qtype).header_fields:
        if nb * off % 16:
            return False
        off += f.size
    return True


def plan(layout: GGUFLayout, kernels: dict, m: int, device) -> Optional[int]:
    """The token tile the GEMM runs this call with (ops/waves.py), or None (dequantize + cuBLAS): it
    needs the kernels built for the device, a K it takes, an even N (its TMA box pairs rows), at
    least a 128-token tile, and SMs busy enough."""
    if (("gemm", GGUF_GEMM_TOKENS[0]) not in kernels or m < min(GGUF_GEMM_TOKENS) or env.prefill_backend() != "auto"
            or not takes_k(layout.qtype, layout.k) or layout.n % 2):
        return None
    blocks = {t: -(-layout.n // kernels[("gemm", t)].consts["rows"]) * -(-m // t) for t in GGUF_GEMM_TOKENS}
    return waves.best_tile(blocks, splitk.multiprocessors(device))


def _maps(layout: GGUFLayout, consts: dict) -> list:
    """TMA maps: one per header plane (boxes of a chunk's entries x the block's rows), then the quants
    (boxes of a stage's blocks x the rows, by columns)."""
    from ..runtime import cuda

    qs, hdr, rows = layout.qs, layout.hdr, consts["rows"]
    for name, t in (("layout.qs", qs), ("layout.hdr", hdr)):
        expect(t.is_contiguous() and t.data_ptr() % 16 == 0, name, "contiguous and 16-byte aligned",
               f"strides {t.stride()}, address {t.data_ptr():#x}")
    maps = [cuda.tensor_map(hdr.data_ptr(), (hdr.shape[1], layout.n), (run, rows), 1)
            for _name, _off, _size, run in consts["runs"]]
    # The quants as [row % 2][column][row / 2][qcol bytes] in shared memory (gguf_gemm.hip.j2).
    rb, col = layout.blocks_per_row * layout.quant_bytes, consts["qcol"]
    maps.append(cuda.tensor_map(qs.data_ptr(), (col, layout.n // 2, rb // col, 2),
                                (col, rows // 2, consts["per_stage"] * layout.quant_bytes // col, 2), 1,
                                strides=(2 * rb, col, rb)))
    return maps


def gemm(kernels: dict, x: torch.Tensor, layout: GGUFLayout, bias: Optional[torch.Tensor] = None,
         out: Optional[torch.Tensor] = None, tokens: int = GGUF_GEMM_TOKENS[0]) -> torch.Tensor:
    """out = x @ W^T (+ bias) through the wgmma GEMM in tiles of `tokens`; x fp16 [M, K] rows on the
    layout's device."""
    expect(("gemm", tokens) in kernels, "tokens", f"one of {GGUF_GEMM_TOKENS}", tokens)
    expect(takes_k(layout.qtype, layout.k), "layout", "a K whose header planes start 16-byte aligned (takes_k)", layout.k)
    expect(layout.n % 2 == 0, "layout", "an even number of rows N (the GEMM's TMA box pairs them)", layout.n)
    gemm_kernel, m = kernels[("gemm", tokens)], x.shape[0]
    c = gemm_kernel.consts
    xp = xpack.pack(kernels[("pack", tokens)], x, k_order(layout, x.device), tokens)
    if out is None:
        out = torch.empty(m, layout.n, dtype=torch.float16, device=x.device)
    gemm_kernel((-(-layout.n // c["rows"]), -(-m // tokens)), (c["threads"],), xp, *_maps(layout, c), bias, out,
                m, layout.k, layout.n, shared=c["shared"])
    return out
