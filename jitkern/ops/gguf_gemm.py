"""GGUF prefill on Hopper (sm_90): the wgmma GEMM of templates/gguf_gemm.hip.j2 over the GEMV's layout.

x_pack gathers the activations into the GEMM's tiles in its k order (``k_order``), then one launch
multiplies; the weights are read once a token tile and never written out in fp16.  The rest
dequantize + cuBLAS: other GPUs, types it is slower on (GEMM_TYPES), K it cannot box (``takes_k``),
fewer than 128 tokens, layers that leave the last wave too empty, and JITKERN_PREFILL=blas.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import env
from ..families import GGUF_GEMM_TOKENS, GGUF_GROUPS
from ..formats.checks import expect
from ..formats.gguf import GGUFLayout
from . import splitk, xpack

STAGE = 256                      # elements of K a stage of the GEMM
MIN_BUSY = 0.5                   # below this share of the SMs busy in the last wave, dequantize + cuBLAS
# The types the op multiplies with the GEMM: those it ran faster than dequantize + cuBLAS (H100, M = 512,
# Llama-3-8B qkv / o / gate_up and 70B o, geomean of fp16's throughput, one machine: GEMM against
# dequantize + cuBLAS): Q4_0 0.76 / 0.65, Q4_1 0.73 / 0.64, Q5_0 0.65 / 0.63, Q5_1 0.66 / 0.63,
# Q8_0 0.67 / 0.61, Q2_K 0.69 / 0.65, Q4_K 0.70 / 0.64, Q5_K 0.64 / 0.61.  Not: Q3_K 0.61 / 0.63,
# Q6_K 0.52 / 0.61 (three vectors a slice for one group's 16 weights), IQ4_NL 0.54 / 0.64 and IQ4_XS
# 0.53 / 0.63 (a codebook lookup in shared memory a weight).  The kernel runs and is tested for all.
GEMM_TYPES = frozenset({"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q4_K", "Q5_K"})


def stage_order(qtype: str) -> torch.Tensor:
    """The GEMM's k order inside one 256-element stage: slot 64q + 16kk + s of sub-step q, k16 step kk
    holds element ``order[...]`` of the stage.  Slot s = 2t + e (+ 8 for the word's second pair) belongs
    to lane t, which decodes the stage's 16-element group 4q + t; word kk of that group is its elements
    4kk..4kk+3 (gguf_types.h.j2)."""
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
    instruction otherwise): for Q3_K, Q4_K and Q5_K K a multiple of 1024, for IQ4_XS of 2048 (Llama-2's
    K = 11008 is neither; such layers dequantize + cuBLAS)."""
    from ..formats.gguf import gguf_type

    if k % STAGE:
        return False
    nb, off = k // gguf_type(qtype).block, 0
    for f in gguf_type(qtype).header_fields:
        if nb * off % 16:
            return False
        off += f.size
    return True


def available(layout: GGUFLayout, kernels: dict, m: int, device) -> bool:
    """The GEMM runs for this call: built for the device, a K it takes, at least a token tile, and the
    last wave of blocks busy enough."""
    if ("gemm" not in kernels or m < GGUF_GEMM_TOKENS or env.prefill_backend() != "auto"
            or not takes_k(layout.qtype, layout.k)):
        return False
    rows = kernels["gemm"].consts["rows"]
    blocks = -(-layout.n // rows) * -(-m // GGUF_GEMM_TOKENS)
    sms = splitk.multiprocessors(device)
    return blocks >= MIN_BUSY * sms * -(-blocks // sms)


def _maps(layout: GGUFLayout, consts: dict) -> list:
    """TMA maps: one per header plane (boxes of a chunk's entries x the block's rows), then the quants
    (boxes of a stage's blocks x the rows)."""
    from ..runtime import cuda

    qs, hdr, rows = layout.qs, layout.hdr, consts["rows"]
    for name, t in (("layout.qs", qs), ("layout.hdr", hdr)):
        expect(t.is_contiguous() and t.data_ptr() % 16 == 0, name, "contiguous and 16-byte aligned",
               f"strides {t.stride()}, address {t.data_ptr():#x}")
    maps = [cuda.tensor_map(hdr.data_ptr(), (hdr.shape[1], layout.n), (run, rows), 1)
            for _name, _off, _size, run in consts["runs"]]
    row_bytes = layout.blocks_per_row * layout.quant_bytes
    maps.append(cuda.tensor_map(qs.data_ptr(), (row_bytes, layout.n), (consts["per_stage"] * layout.quant_bytes, rows), 1))
    return maps


def gemm(kernels: dict, x: torch.Tensor, layout: GGUFLayout, bias: Optional[torch.Tensor] = None,
         out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out = x @ W^T (+ bias) through the wgmma GEMM; x fp16 [M, K] rows on the layout's device."""
    gemm_kernel = kernels["gemm"]
    c, m, k = gemm_kernel.consts, x.shape[0], layout.k
    expect(takes_k(layout.qtype, k), "layout", "a K whose header planes start 16-byte aligned (takes_k)", k)
    tokens = c["tokens"]
    xp = xpack.pack(kernels["pack"], x, k_order(layout, x.device), tokens)
    if out is None:
        out = torch.empty(m, layout.n, dtype=torch.float16, device=x.device)
    gemm_kernel((-(-layout.n // c["rows"]), -(-m // tokens)), (c["threads"],), xp, *_maps(layout, c), bias, out,
                m, k, layout.n, shared=c["shared"])
    return out
