"""AWQ checkpoints (AutoAWQ "GEMM" version, 4-bit, zero_point=True): packer, oracle, conversions.

``qweight [K, N/8]`` and ``qzeros [G, N/8]`` pack 8 columns a word with the interleave
``ORDER``: nibble j holds column ``8c + ORDER[j]`` (kernel-spec §1.2.1).  Zeros are exact (no v1
offset), so AWQ maps onto a GPTQ v2 checkpoint and onto the IntLayout without loss.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from .checks import FLOAT_DTYPES, INT_DTYPES, expect, expect_choice, expect_range, expect_tensor
from .gptq import GROUP_SIZES, pack_bits, pack_gptq, unpack_bits
from .intpack import pack_layout
from .layout import UNIT_K, IntLayout

BITS = 4
ORDER = (0, 2, 4, 6, 1, 3, 5, 7)      # nibble j holds column 8c + ORDER[j]
REVERSE = (0, 4, 1, 5, 2, 6, 3, 7)    # column 8c + i sits in nibble REVERSE[i]


def _reorder(v: torch.Tensor, order) -> torch.Tensor:
    r, n = v.shape
    return v.reshape(r, n // 8, 8)[:, :, list(order)].reshape(r, n)


def _check(qweight, qzeros, scales, group_size) -> Tuple[int, int, int]:
    """Validate AWQ tensors; return (K, N, G)."""
    expect_choice("group_size", group_size, GROUP_SIZES)
    qweight = expect_tensor("qweight", qweight, dtype=torch.int32, ndim=2)
    k, n = qweight.shape[0], qweight.shape[1] * 8
    expect(k > 0 and k % UNIT_K == 0, "qweight", f"K rows, a positive multiple of {UNIT_K}", k)
    expect(n > 0, "qweight", "at least one packed column", tuple(qweight.shape))
    groups = -(-k // (k if group_size == -1 else group_size))
    expect_tensor("qzeros", qzeros, dtype=torch.int32, shape=(groups, n // 8), device=qweight)
    expect_tensor("scales", scales, dtype=torch.float16, shape=(groups, n), device=qweight)
    return k, n, groups


def pack_awq(q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Pack 4-bit ``q [K, N]`` and exact ``zeros [G, N]`` with the AutoAWQ GEMM interleave."""
    q = expect_tensor("q", q, dtype=INT_DTYPES, ndim=2)
    expect(q.shape[1] % 8 == 0, "q", "N a multiple of 8", q.shape[1])
    expect_range("q", q, 0, 15)
    zeros = expect_tensor("zeros", zeros, dtype=INT_DTYPES, shape=(None, q.shape[1]), device=q)
    expect_range("zeros", zeros, 0, 15)
    expect_tensor("scales", scales, dtype=torch.float16, shape=zeros.shape, device=q)
    return {"qweight": pack_bits(_reorder(q, ORDER), BITS, 1),
            "qzeros": pack_bits(_reorder(zeros, ORDER), BITS, 1), "scales": scales}


def unpack_awq(qweight: torch.Tensor, qzeros: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(q [K, N], zeros [G, N])`` int64 in natural column order."""
    expect_tensor("qweight", qweight, dtype=torch.int32, ndim=2)
    expect_tensor("qzeros", qzeros, dtype=torch.int32, shape=(None, qweight.shape[1]), device=qweight)
    return (_reorder(unpack_bits(qweight, BITS, 1), REVERSE),
            _reorder(unpack_bits(qzeros, BITS, 1), REVERSE))


def quantize_awq(W: torch.Tensor, group_size: int,
                 generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """Round-to-nearest AWQ quantization of ``W [N, K]`` (AutoAWQ's asymmetric grid, no scale search):
    ``scale = max(max - min, 1e-5) / 15``, ``z = clamp(-round(min / scale), 0, 15)``.

    ``generator`` is accepted for symmetry with :func:`quantize_gptq`; AWQ has no random choices.
    """
    expect_choice("group_size", group_size, GROUP_SIZES)
    W = expect_tensor("W", W, dtype=FLOAT_DTYPES, ndim=2)
    expect(bool(torch.isfinite(W).all()), "W", "finite values", "inf/nan")
    n, k = W.shape
    expect(k > 0 and k % UNIT_K == 0, "W", f"K = in_features a positive multiple of {UNIT_K}", k)
    expect(n > 0 and n % 8 == 0, "W", "N = out_features a multiple of 8", n)
    g = k if group_size == -1 else group_size
    groups, pad = -(-k // g), -(-k // g) * g - k
    w = W.to(torch.float64).t()                                            # [K, N]
    lo = torch.nn.functional.pad(w, (0, 0, 0, pad), value=float("inf")).view(groups, g, n).amin(1)
    hi = torch.nn.functional.pad(w, (0, 0, 0, pad), value=float("-inf")).view(groups, g, n).amax(1)
    scales = ((hi - lo).clamp(min=1e-5) / 15).to(torch.float16)
    s = scales.to(torch.float64)                                           # quantize with the stored scale
    s = torch.where(s == 0, 1.0, s)
    z = (-torch.round(lo / s)).clamp(0, 15)
    rg = torch.arange(k, device=W.device) // g
    q = (torch.round(w / s[rg]) + z[rg]).clamp(0, 15).to(torch.int64)
    return pack_awq(q, z.to(torch.int64), scales)


def dequantize_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                   group_size: int) -> torch.Tensor:
    """Oracle: ``W[n, k] = scales[k // g, n] * (q[k, n] - z[k // g, n])`` as float64 [N, K].

    Reads nibbles directly (column 8c + i at bits 4*REVERSE[i]), independent of the packers.
    """
    k, n, _ = _check(qweight, qzeros, scales, group_size)
    shifts = 4 * torch.tensor(REVERSE, device=qweight.device)

    def nibbles(t):
        return ((t.to(torch.int64)[:, :, None] >> shifts) & 0xF).reshape(t.shape[0], n)
    rg = torch.arange(k, device=qweight.device) // (k if group_size == -1 else group_size)
    q, z = nibbles(qweight), nibbles(qzeros)
    return (scales.to(torch.float64)[rg] * (q - z[rg]).to(torch.float64)).t().contiguous()


def awq_to_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                group_size: int) -> Dict[str, torch.Tensor]:
    """Exact conversion to a 4-bit GPTQ **v2** (``checkpoint_format="gptq_v2"``) checkpoint:
    qweight [K/8, N] packed along K, qzeros [G, N/8] natural order, same scales, trivial g_idx.
    (v1 could not hold AWQ's zero point 0.)"""
    k, _, _ = _check(qweight, qzeros, scales, group_size)
    q, z = unpack_awq(qweight, qzeros)
    g_idx = torch.arange(k, device=qweight.device) // (k if group_size == -1 else group_size)
    return pack_gptq(q, z, scales, g_idx, BITS, "gptq_v2")


def awq_to_layout(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                  group_size: int) -> IntLayout:
    """Convert to the IntLayout (zeros dropped only if every one is 8)."""
    _check(qweight, qzeros, scales, group_size)
    q, z = unpack_awq(qweight, qzeros)
    return pack_layout(q, scales, None if bool((z == 8).all()) else z, BITS, group_size)
