"""GPTQ checkpoints (AutoGPTQ / GPTQModel, v1 "gptq" and v2 "gptq_v2"): packer, oracle, conversion.

Checkpoint packing (kernel-spec §1.1.2): 32 values of ``b`` bits form a little-endian ``32*b``-bit
stream split into ``b`` int32 words, value i at stream bit ``b*i``.  For b = 2/4/8 that is just "value
i of a word at bits b*i"; for b = 3 values 10 and 21 straddle two words.  ``qweight`` packs along K,
``qzeros`` along N.  v1 stores ``z - 1`` (masked to b bits), v2 stores ``z``.

``unpack_gptq`` / ``dequantize_gptq`` read the checkpoint with their own bit code and never touch the
IntLayout packer: they are the oracle the layout is tested against.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from .checks import FLOAT_DTYPES, INT_DTYPES, expect, expect_choice, expect_range, expect_tensor
from .intpack import pack_act_order, pack_layout, wrap_int32
from .layout import SUPPORTED_BITS, UNIT_K, IntLayout

GROUP_SIZES = (32, 64, 128, -1)
FORMATS = ("gptq", "gptq_v2")


def _chunk(bits: int) -> Tuple[int, int]:
    """(values, words) of the smallest closed piece of the stream: 3 bits need 32 values in 3 words."""
    return (32, bits) if 32 % bits else (32 // bits, 1)


def pack_bits(v: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Pack unsigned values along ``dim`` into GPTQ stream words (int32); ``dim`` shrinks by 32/bits."""
    vals, words = _chunk(bits)
    v = v.to(torch.int64).movedim(dim, -1)
    lead, length = v.shape[:-1], v.shape[-1]
    v = v.reshape(*lead, length // vals, vals)
    out = v.new_zeros(*lead, length // vals, words)
    for i in range(vals):                       # fixed 32/bits (or 32) slots, each a whole-tensor op
        w, s = divmod(bits * i, 32)
        out[..., w] |= (v[..., i] << s) & 0xFFFFFFFF
        if s + bits > 32:                       # straddling value: its high bits open the next word
            out[..., w + 1] |= v[..., i] >> (32 - s)
    return wrap_int32(out.reshape(*lead, length // vals * words)).movedim(-1, dim)


def unpack_bits(words: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: int64 values, ``dim`` grows by 32/bits."""
    vals, nw = _chunk(bits)
    u = (words.to(torch.int64) & 0xFFFFFFFF).movedim(dim, -1)
    lead, length = u.shape[:-1], u.shape[-1]
    u = u.reshape(*lead, length // nw, nw)
    out = []
    for i in range(vals):
        w, s = divmod(bits * i, 32)
        x = u[..., w] >> s
        if s + bits > 32:
            x = x | (u[..., w + 1] << (32 - s))
        out.append(x & ((1 << bits) - 1))
    return torch.stack(out, -1).reshape(*lead, length // nw * vals).movedim(-1, dim)


def _true_zeros(stored: torch.Tensor, bits: int, checkpoint_format: str) -> torch.Tensor:
    # v1 keeps z - 1; masking makes a stored all-ones field (z = 0 written as -1) decode back to 0
    return (stored + 1) & ((1 << bits) - 1) if checkpoint_format == "gptq" else stored


def _check_config(bits, group_size, checkpoint_format) -> None:
    expect_choice("bits", bits, SUPPORTED_BITS)
    expect_choice("group_size", group_size, GROUP_SIZES)
    expect_choice("checkpoint_format", checkpoint_format, FORMATS)


def _check_packed(qweight, qzeros, bits) -> Tuple[int, int, int]:
    """Validate the two packed tensors; return (K, N, G)."""
    qweight = expect_tensor("qweight", qweight, dtype=torch.int32, ndim=2)
    rows, n = qweight.shape
    expect(rows > 0 and rows * 32 % bits == 0 and rows * 32 // bits % UNIT_K == 0, "qweight",
           f"rows * 32 / bits = K, a positive multiple of {UNIT_K} (bits={bits})", f"{rows} rows")
    expect(n > 0 and n * bits % 32 == 0 and (bits != 3 or n % 32 == 0), "qweight",
           f"N columns packable into qzeros (multiple of {32 if bits == 3 else 32 // bits})", f"{n} columns")
    qzeros = expect_tensor("qzeros", qzeros, dtype=torch.int32, shape=(None, n * bits // 32), device=qweight)
    expect(qzeros.shape[0] > 0, "qzeros", "at least one group row", tuple(qzeros.shape))
    return rows * 32 // bits, n, qzeros.shape[0]


def unpack_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, bits: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(q [K, N], stored zeros [G, N])`` int64; zeros as stored, i.e. before v1's +1."""
    expect_choice("bits", bits, SUPPORTED_BITS)
    _check_packed(qweight, qzeros, bits)
    return unpack_bits(qweight, bits, 0), unpack_bits(qzeros, bits, 1)


def pack_gptq(q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor, bits: int,
              checkpoint_format: str = "gptq") -> Dict[str, torch.Tensor]:
    """Pack integer ``q`` [K, N] and true zero points ``zeros`` [G, N] into checkpoint tensors."""
    expect_choice("bits", bits, SUPPORTED_BITS)
    expect_choice("checkpoint_format", checkpoint_format, FORMATS)
    q = expect_tensor("q", q, dtype=INT_DTYPES, ndim=2)
    expect_range("q", q, 0, 2**bits - 1)
    zeros = expect_tensor("zeros", zeros, dtype=INT_DTYPES, shape=(None, q.shape[1]), device=q)
    expect_range("zeros", zeros, 0, 2**bits - 1)
    expect_tensor("scales", scales, dtype=torch.float16, shape=zeros.shape, device=q)
    expect_tensor("g_idx", g_idx, dtype=INT_DTYPES, shape=(q.shape[0],), device=q)
    stored = zeros.to(torch.int64)
    if checkpoint_format == "gptq":
        stored = (stored - 1) & ((1 << bits) - 1)
    return {"qweight": pack_bits(q, bits, 0), "qzeros": pack_bits(stored, bits, 1),
            "scales": scales, "g_idx": g_idx.to(torch.int32)}


def quantize_gptq(W: torch.Tensor, bits: int, group_size: int, sym: bool = True, act_order: bool = False,
                  checkpoint_format: str = "gptq",
                  generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """Round-to-nearest quantize ``W [N, K]`` with GPTQ's quantizer and pack it like AutoGPTQ/GPTQModel.

    Grid per (group, column): the range is widened to include 0; sym uses ``z = 2**(bits-1)`` and
    ``scale = 2*max|w| / maxq``, asym ``scale = (max - min) / maxq``, ``z = round(-min / scale)``.
    ``act_order``: a random permutation p (from ``generator``) stands in for the Hessian order and
    ``g_idx[k] = position of k in p // group_size``.  Returns qweight, qzeros, scales (fp16), g_idx.
    """
    _check_config(bits, group_size, checkpoint_format)
    W = expect_tensor("W", W, dtype=FLOAT_DTYPES, ndim=2)
    expect(bool(torch.isfinite(W).all()), "W", "finite values", "inf/nan")
    n, k = W.shape
    expect(k > 0 and k % UNIT_K == 0, "W", f"K = in_features a positive multiple of {UNIT_K}", k)
    expect(n > 0 and n * bits % 32 == 0 and (bits != 3 or n % 32 == 0), "W",
           f"N = out_features a multiple of {32 if bits == 3 else 32 // bits}", n)
    expect_choice("sym", sym, (True, False))
    expect_choice("act_order", act_order, (True, False))
    g = k if group_size == -1 else group_size
    order = torch.randperm(k, generator=generator, device=W.device) if act_order else torch.arange(k, device=W.device)
    groups = -(-k // g)
    pos_group = torch.arange(k, device=W.device) // g                  # group of each processing slot
    w = W.to(torch.float64).t()[order]                                  # [K, N], processing order
    maxq = 2**bits - 1
    # a short last group (K % g != 0) is padded with values that cannot win the min / max
    pad = groups * g - k
    lo = torch.nn.functional.pad(w, (0, 0, 0, pad), value=float("inf")).view(groups, g, n).amin(1)
    hi = torch.nn.functional.pad(w, (0, 0, 0, pad), value=float("-inf")).view(groups, g, n).amax(1)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if sym:
        hi = torch.maximum(-lo, hi)
        lo = torch.where(lo < 0, -hi, lo)
    flat = (lo == 0) & (hi == 0)                                        # all-zero group: any grid works
    lo, hi = torch.where(flat, -1.0, lo), torch.where(flat, 1.0, hi)
    scales = ((hi - lo) / maxq).to(torch.float16)
    s = scales.to(torch.float64)                                        # quantize with the stored scale
    s = torch.where(s == 0, 1.0, s)
    z = torch.full_like(s, 2 ** (bits - 1)) if sym else torch.round(-lo / s).clamp(0, maxq)
    qp = (torch.round(w / s[pos_group]) + z[pos_group]).clamp(0, maxq).to(torch.int64)
    q = torch.empty_like(qp)
    q[order] = qp                                                       # back to checkpoint row order
    g_idx = torch.empty(k, dtype=torch.int64, device=W.device)
    g_idx[order] = pos_group
    return pack_gptq(q, z.to(torch.int64), scales, g_idx, bits, checkpoint_format)


def _check_scales_gidx(scales, g_idx, k, n, groups, qweight, indexes_scales=True):
    """Validate scales and g_idx; return g_idx as int64 or None.  An empty g_idx (vLLM's marker for
    "none") counts as None.  ``indexes_scales=False`` skips the range check (desc_act=False shards
    carry g_idx in full-model coordinates)."""
    expect_tensor("scales", scales, dtype=torch.float16, shape=(groups, n), device=qweight)
    if g_idx is not None and isinstance(g_idx, torch.Tensor) and g_idx.numel() == 0:
        return None
    if g_idx is not None:
        g_idx = expect_tensor("g_idx", g_idx, dtype=(torch.int32, torch.int64), shape=(k,), device=qweight)
        if indexes_scales:
            expect_range("g_idx", g_idx, 0, groups - 1)
        g_idx = g_idx.to(torch.int64)
    return g_idx


def dequantize_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                    g_idx: Optional[torch.Tensor], bits: int, group_size: int,
                    checkpoint_format: str = "gptq") -> torch.Tensor:
    """Oracle: ``W[n, k] = scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n])`` as float64 [N, K]."""
    _check_config(bits, group_size, checkpoint_format)
    k, n, groups = _check_packed(qweight, qzeros, bits)
    g_idx = _check_scales_gidx(scales, g_idx, k, n, groups, qweight)
    if g_idx is None:
        g_idx = torch.arange(k, device=qweight.device) // (k if group_size == -1 else group_size)
        expect_range("g_idx", g_idx, 0, groups - 1)
    q, stored = unpack_gptq(qweight, qzeros, bits)
    z = _true_zeros(stored, bits, checkpoint_format)
    return (scales.to(torch.float64)[g_idx] * (q - z[g_idx]).to(torch.float64)).t().contiguous()


def gptq_to_layout(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                   g_idx: Optional[torch.Tensor], bits: int, group_size: int, sym: bool,
                   checkpoint_format: str = "gptq", desc_act: Optional[bool] = None) -> IntLayout:
    """Convert checkpoint tensors (or a vLLM tensor-parallel shard of them) to an :class:`IntLayout`.

    Zeros become exact (v1 + 1); they are dropped when all equal 2**(bits-1), whatever ``sym`` says
    (the layout is exact either way, so ``sym`` is informational).  Groups come from ``g_idx``:

    * ``arange(K) // g`` (possibly offset by a constant, as in a row shard of a static-groups model):
      plain layout, scales/zeros rows sliced to the ones used;
    * anything else (act-order, or a row shard of one whose runs are not multiples of 32): rows sorted
      by group, runs padded to 32, ``perm`` / ``unit_group`` set.  ``g_idx`` indexes ``scales`` rows.

    ``desc_act=False`` follows vLLM: groups are ``k // g`` and ``g_idx`` (if given) must be of the
    offset-arange form; ``None`` infers from ``g_idx``.
    """
    _check_config(bits, group_size, checkpoint_format)
    expect_choice("desc_act", desc_act, (None, True, False))
    k, n, groups = _check_packed(qweight, qzeros, bits)
    g = k if group_size == -1 else group_size
    implied = -(-k // g)
    expect_choice("sym", sym, (True, False))
    g_idx = _check_scales_gidx(scales, g_idx, k, n, groups, qweight, indexes_scales=desc_act is not False)
    expect(group_size != -1 or groups == 1, "scales", "1 row for group_size=-1", f"{groups} rows")
    if desc_act is True:
        expect(g_idx is not None, "g_idx", "a [K] tensor when desc_act=True", None)

    first, act_order = 0, False                  # first: scales row of the first group (row shards)
    if g_idx is not None:
        base = torch.arange(k, device=qweight.device) // g
        shifted = bool((g_idx - g_idx[0] == base).all())
        if desc_act is False:
            expect(shifted, "g_idx", "arange(K) // group_size (plus a constant) with desc_act=False",
                   "a permuted g_idx; pass desc_act=True or None")
        else:
            counts = torch.bincount(g_idx, minlength=groups)
            expect(int(counts.max()) <= g, "g_idx", f"at most group_size={g} rows per group",
                   f"{int(counts.max())} rows in group {int(counts.argmax())}")
            act_order = not (shifted and int(g_idx[0]) + implied <= groups)
            first = 0 if act_order else int(g_idx[0])
    if g_idx is None or desc_act is False:
        expect(groups == implied, "scales", f"{implied} rows (ceil(K / group_size))", f"{groups} rows")

    q, stored = unpack_gptq(qweight, qzeros, bits)
    z = _true_zeros(stored, bits, checkpoint_format)
    if act_order:
        used = z[torch.unique(g_idx)]
        return pack_act_order(q, scales, None if _all_sym(used, bits) else z, g_idx, bits, group_size)
    z, scales = z[first:first + implied], scales[first:first + implied]
    return pack_layout(q, scales, None if _all_sym(z, bits) else z, bits, group_size)


def _all_sym(z: torch.Tensor, bits: int) -> bool:
    return bool((z == 2 ** (bits - 1)).all())
