"""Bit-level packing of the canonical K-major integer layout (see ``layout.py`` for the format).

Everything here is vectorised torch and runs on whatever device the inputs live on, so a loader may
convert on the GPU.  ``dequantize_layout`` / ``layout_linear`` are the CPU reference the kernels are
tested against.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .checks import FLOAT_DTYPES, INT_DTYPES, expect, expect_choice, expect_range, expect_tensor
from .layout import SUPPORTED_BITS, TILE_N, UNIT_K, IntLayout, round_up, settle


def wrap_int32(x: torch.Tensor) -> torch.Tensor:
    """int64 holding unsigned 32-bit words -> int32 with the same bits (two's complement)."""
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def _split_shifts(bits: int, per_word: int, device) -> torch.Tensor:
    """Bit offset of value i of a word under the even/odd split: even i -> field i/2, odd i -> P/2 + i/2."""
    i = torch.arange(per_word, device=device)
    field = torch.where(i % 2 == 0, i // 2, per_word // 2 + i // 2)
    return (field * bits).view(1, per_word, 1)


def _pack_split(v: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, N] values -> [R / P, N] words; word r holds rows r*P ... r*P + P - 1 (P = 32 / bits)."""
    per_word = 32 // bits
    r, n = v.shape
    v = v.to(torch.int64).view(r // per_word, per_word, n)
    # fields are disjoint, so the sum is the bitwise OR (and stays below 2**32)
    return wrap_int32((v << _split_shifts(bits, per_word, v.device)).sum(1))


def _unpack_split(w: torch.Tensor, bits: int) -> torch.Tensor:
    per_word = 32 // bits
    u = w.to(torch.int64).unsqueeze(1) & 0xFFFFFFFF
    vals = (u >> _split_shifts(bits, per_word, w.device)) & ((1 << bits) - 1)
    return vals.reshape(-1, w.shape[-1])


def _pack_rows(q: torch.Tensor, bits: int) -> torch.Tensor:
    """[K, N] -> [K * bits / 32, N] words in unit order (unit u = word rows u*bits ... u*bits+bits-1)."""
    if bits != 3:
        return _pack_split(q, bits)      # P * bits == 32, so word row r is unit r // bits, word r % bits
    k, n = q.shape
    lo = _pack_split(q & 3, 2).view(k // UNIT_K, 2, n)       # 2-bit plane: 16 rows a word
    hi = _pack_split(q >> 2, 1).view(k // UNIT_K, 1, n)      # 1-bit plane: all 32 rows in word 2
    return torch.cat([lo, hi], 1).view(k * 3 // 32, n)


def _unpack_rows(w: torch.Tensor, bits: int) -> torch.Tensor:
    if bits != 3:
        return _unpack_split(w, bits)
    units, n = w.shape[0] // 3, w.shape[1]
    w = w.view(units, 3, n)
    lo = _unpack_split(w[:, :2].reshape(units * 2, n), 2)
    hi = _unpack_split(w[:, 2], 1)
    return lo | (hi << 2)


def pack_layout(q: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor], bits: int,
                group_size: int, perm: Optional[torch.Tensor] = None,
                unit_group: Optional[torch.Tensor] = None, k_in: Optional[int] = None) -> IntLayout:
    """Pack unsigned ``q`` [K, N] (layout row order) with ``scales`` fp16 [G, N] and exact ``zeros``
    [G, N] (``None`` = symmetric, z = 2**(bits-1)) into an :class:`IntLayout`.

    Without ``unit_group`` row k uses group ``k // group_size`` (``-1`` = one group of all K rows).
    ``perm`` / ``unit_group`` (act-order) come together; ``k_in`` is the activation width (default K).
    """
    expect_choice("bits", bits, SUPPORTED_BITS)
    q = expect_tensor("q", q, dtype=INT_DTYPES, ndim=2)
    k, n = q.shape
    expect(k > 0 and k % UNIT_K == 0, "q", f"K (rows) a positive multiple of {UNIT_K}", k)
    expect(n > 0, "q", "at least one column", n)
    expect_range("q", q, 0, 2**bits - 1)
    expect(group_size == -1 or (isinstance(group_size, int) and group_size > 0 and group_size % UNIT_K == 0),
           "group_size", f"-1 or a positive multiple of {UNIT_K}", group_size)
    g = k if group_size == -1 else group_size
    scales = expect_tensor("scales", scales, dtype=torch.float16, shape=(None, n), device=q)
    groups = scales.shape[0]
    expect((perm is None) == (unit_group is None), "unit_group",
           "to be given exactly when perm is given (act-order)", "only one of them")
    k_in = k if k_in is None else k_in
    if perm is None:
        expect(groups == -(-k // g), "scales", f"{-(-k // g)} rows (ceil(K / group_size))", groups)
        expect(k_in == k, "k_in", f"K = {k} without perm", k_in)
    else:
        perm = expect_tensor("perm", perm, dtype=INT_DTYPES, shape=(k,), device=q)
        expect_range("perm", perm, 0, k_in - 1)
        unit_group = expect_tensor("unit_group", unit_group, dtype=INT_DTYPES, shape=(k // UNIT_K,), device=q)
        expect_range("unit_group", unit_group, 0, groups - 1)
    if zeros is not None:
        zeros = expect_tensor("zeros", zeros, dtype=INT_DTYPES, shape=(groups, n), device=q)
        expect_range("zeros", zeros, 0, 2**bits - 1)

    # padded columns: scale 0 and q == z, so they contribute exactly zero whatever a kernel does
    n_pad, sym = round_up(n, TILE_N), 2 ** (bits - 1)
    pad = n_pad - n
    q = torch.nn.functional.pad(q.to(torch.int64), (0, pad), value=sym)
    scales = torch.nn.functional.pad(scales, (0, pad), value=0.0).contiguous()
    if zeros is not None:
        zeros = torch.nn.functional.pad(zeros.to(torch.int64), (0, pad), value=sym).to(torch.uint8)
    words = _pack_rows(q, bits)                                        # [K*bits/32, N_pad]
    qweight = words.view(words.shape[0], n_pad // TILE_N, TILE_N).transpose(0, 1).contiguous()
    layout = IntLayout(bits=bits, group_size=g, k_in=k_in, k=k, n=n, qweight=qweight, scales=scales,
                       zeros=zeros,
                       perm=None if perm is None else perm.to(torch.int32).contiguous(),
                       unit_group=None if unit_group is None else unit_group.to(torch.int32).contiguous())
    settle(layout.tensors())
    return layout


def pack_act_order(q: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
                   g_idx: torch.Tensor, bits: int, group_size: int) -> IntLayout:
    """Pack ``q`` [K, N] whose rows are in activation (checkpoint) order and whose groups are arbitrary:
    ``g_idx[k]`` is the scales/zeros row of row k.

    Rows are stably sorted by group; each group's run is padded to whole 32-row units with rows whose
    weight is exactly zero (q == z, perm -> 0), so a unit never straddles two groups.  Groups with no
    rows (a tensor-parallel shard sees only some) are dropped from scales/zeros.
    """
    q = expect_tensor("q", q, dtype=INT_DTYPES, ndim=2)
    scales = expect_tensor("scales", scales, dtype=torch.float16, ndim=2, device=q)
    k, n = q.shape
    g_idx = expect_tensor("g_idx", g_idx, dtype=INT_DTYPES, shape=(k,), device=q)
    expect_range("g_idx", g_idx, 0, scales.shape[0] - 1)
    if zeros is not None:
        expect_tensor("zeros", zeros, dtype=INT_DTYPES, shape=(scales.shape[0], n), device=q)
    dev = q.device
    g_idx = g_idx.to(torch.int64)
    counts = torch.bincount(g_idx, minlength=scales.shape[0])
    present = counts.nonzero().squeeze(1)
    local = torch.full_like(counts, -1)
    local[present] = torch.arange(present.numel(), device=dev)
    cnt = counts[present]
    padded = (cnt + UNIT_K - 1) // UNIT_K * UNIT_K
    start = torch.cumsum(cnt, 0) - cnt                   # first sorted row of each group
    pstart = torch.cumsum(padded, 0) - padded            # first layout row of each group
    order = torch.argsort(g_idx, stable=True)
    grp = local[g_idx[order]]
    dest = pstart[grp] + torch.arange(k, device=dev) - start[grp]
    row_group = torch.repeat_interleave(torch.arange(present.numel(), device=dev), padded)
    k_pad = row_group.numel()

    zeros = None if zeros is None else zeros[present].to(torch.int64)
    if zeros is None:
        q_l = torch.full((k_pad, n), 2 ** (bits - 1), dtype=torch.int64, device=dev)
    else:
        q_l = zeros[row_group].clone()
    q_l[dest] = q[order].to(torch.int64)
    perm = torch.zeros(k_pad, dtype=torch.int64, device=dev)
    perm[dest] = order
    return pack_layout(q_l, scales[present], zeros, bits, group_size, perm=perm,
                       unit_group=row_group[::UNIT_K], k_in=k)


def unpack_layout(layout: IntLayout) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact inverse of :func:`pack_layout`: ``(q [K, N], zeros [G, N])`` int64, padding dropped,
    rows in layout order (symmetric layouts report their implicit 2**(bits-1) zeros)."""
    t, kw, tn = layout.qweight.shape
    words = layout.qweight.transpose(0, 1).reshape(kw, t * tn)
    q = _unpack_rows(words, layout.bits)[:, :layout.n]
    if layout.zeros is None:
        zeros = torch.full((layout.groups, layout.n), 2 ** (layout.bits - 1), dtype=torch.int64,
                           device=q.device)
    else:
        zeros = layout.zeros[:, :layout.n].to(torch.int64)
    return q, zeros


def layout_row_groups(layout: IntLayout) -> torch.Tensor:
    """Scales row of every layout row, int64 [K]."""
    if layout.unit_group is not None:
        return layout.unit_group.to(torch.int64).repeat_interleave(UNIT_K)
    return torch.arange(layout.k, device=layout.qweight.device) // layout.group_size


def dequantize_layout(layout: IntLayout, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Dense ``W [N, k_in]`` in the checkpoint's original input order (act-order undone)."""
    q, zeros = unpack_layout(layout)
    rg = layout_row_groups(layout)
    w = layout.scales[:, :layout.n].to(dtype)[rg] * (q - zeros[rg]).to(dtype)     # [K, N]
    if layout.perm is not None:
        # padding rows point at column 0 and are exactly zero, so adding them changes nothing
        w = torch.zeros(layout.k_in, layout.n, dtype=dtype, device=w.device).index_add_(
            0, layout.perm.to(torch.int64), w)
    return w.t().contiguous()


def layout_linear(x: torch.Tensor, layout: IntLayout, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Reference ``y = x @ W.T (+ bias)`` in float32 for x [..., k_in]; returns ``x.dtype``."""
    x = expect_tensor("x", x, dtype=FLOAT_DTYPES)
    expect(x.dim() >= 1 and x.shape[-1] == layout.k_in, "x", f"last dimension {layout.k_in}", tuple(x.shape))
    if bias is not None:
        bias = expect_tensor("bias", bias, dtype=FLOAT_DTYPES, shape=(layout.n,), device=x)
    w = dequantize_layout(layout, torch.float32).to(x.device)
    y = x.to(torch.float32) @ w.t()
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)
