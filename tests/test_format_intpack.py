"""IntLayout bit packing (jitkern/formats/intpack.py) against the format written in layout.py.

Fresh random data every run; the seed is printed (shown on failure).  Reproduce a failure with
``JITKERN_TEST_SEED=<seed> python3 -m pytest tests/test_format_intpack.py``.
"""

import pytest
import torch

from jitkern.formats.intpack import (dequantize_layout, layout_linear, pack_act_order, pack_layout,
                                     unpack_layout)
from jitkern.formats.layout import TILE_N

BITS = (2, 3, 4, 8)


def rand_ints(gen, hi, *shape):
    return torch.randint(0, hi, shape, generator=gen)


def rand_scales(gen, *shape):
    return (torch.rand(shape, generator=gen) * 0.02 + 0.001).half()


def doc_values(layout):
    """Read q [K, N] straight from the layout.py description, one formula per element."""
    b, k, n = layout.bits, layout.k, layout.n
    kk, nn = torch.meshgrid(torch.arange(k), torch.arange(n), indexing="ij")
    u, r = kk // 32, kk % 32

    def word(row):
        return layout.qweight[nn // TILE_N, row, nn % TILE_N].to(torch.int64) & 0xFFFFFFFF

    def field(i, per_word):   # even/odd split
        return torch.where(i % 2 == 0, i // 2, per_word // 2 + i // 2)
    if b == 3:
        lo = (word(u * 3 + r // 16) >> (2 * field(r % 16, 16))) & 3
        hi = (word(u * 3 + 2) >> field(r, 32)) & 1
        return lo | (hi << 2)
    per_word = 32 // b
    return (word(u * b + r // per_word) >> (b * field(r % per_word, per_word))) & (2**b - 1)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n", [32, 40, 72, 100])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group_size", [32, 128, -1])
def test_roundtrip_and_doc_format(gen, bits, n, sym, group_size):
    k = 256
    groups = 1 if group_size == -1 else k // group_size
    q = rand_ints(gen, 2**bits, k, n)
    zeros = None if sym else rand_ints(gen, 2**bits, groups, n)
    scales = rand_scales(gen, groups, n)
    lay = pack_layout(q, scales, zeros, bits, group_size)
    n_pad = -(-n // TILE_N) * TILE_N
    assert lay.qweight.dtype == torch.int32 and lay.qweight.shape == (n_pad // TILE_N, k * bits // 32, TILE_N)
    assert lay.scales.dtype == torch.float16 and lay.scales.shape == (groups, n_pad)
    assert (lay.scales[:, n:] == 0).all() and torch.equal(lay.scales[:, :n], scales)
    assert lay.group_size == (k if group_size == -1 else group_size) and lay.k == lay.k_in == k
    assert lay.symmetric == sym and lay.perm is None and lay.unit_group is None
    if not sym:
        assert lay.zeros.dtype == torch.uint8 and lay.zeros.shape == (groups, n_pad)
    q2, z2 = unpack_layout(lay)
    assert torch.equal(q2, q)
    assert torch.equal(z2, torch.full_like(z2, 2 ** (bits - 1)) if sym else zeros)
    assert torch.equal(doc_values(lay), q)


@pytest.mark.parametrize("bits,word", [(4, 0x75316420), (2, 0xDDDD8888), (8, 0x04020301)])
def test_known_words(bits, word):
    # 4-bit rows 0..7 = 0..7 -> even rows in the low half: fields (0,2,4,6 | 1,3,5,7)
    # 2-bit rows 0..15 = i % 4 -> low half fields 0,2,0,2..., high half 1,3,1,3...
    # 8-bit rows 0..3 = 1,2,3,4 -> bytes (1,3 | 2,4)
    col = {4: torch.arange(32) % 16, 2: torch.arange(32) % 4, 8: torch.arange(32) % 4 + 1}[bits]
    q = col.view(32, 1).repeat(1, 32)
    lay = pack_layout(q, torch.ones(1, 32, dtype=torch.float16), None, bits, 32)
    assert int(lay.qweight[0, 0, 5]) & 0xFFFFFFFF == word


def test_three_bit_planes():
    q = torch.arange(32).view(32, 1).repeat(1, 32) % 8
    w = [int(x) & 0xFFFFFFFF for x in pack_layout(q, torch.ones(1, 32).half(), None, 3, 32).qweight[0, :, 0]]
    lo = [(v & 3) for v in q[:, 0].tolist()]
    hi = [(v >> 2) for v in q[:, 0].tolist()]
    for j in range(8):   # pair j of each 16-row half sits at field j (even row) and 8 + j (odd row)
        assert (w[0] >> 2 * j) & 3 == lo[2 * j] and (w[0] >> (16 + 2 * j)) & 3 == lo[2 * j + 1]
        assert (w[1] >> 2 * j) & 3 == lo[16 + 2 * j] and (w[1] >> (16 + 2 * j)) & 3 == lo[17 + 2 * j]
    for j in range(16):
        assert (w[2] >> j) & 1 == hi[2 * j] and (w[2] >> (16 + j)) & 1 == hi[2 * j + 1]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("sym", [True, False])
def test_act_order_padding(gen, bits, sym):
    # 5 groups of uneven sizes (a tensor-parallel shard), two of them absent, rows shuffled
    k, n, total_groups = 192, 48, 7
    sizes = torch.tensor([0, 37, 64, 0, 5, 70, 16])
    g_idx = torch.repeat_interleave(torch.arange(total_groups), sizes)[torch.randperm(k, generator=gen)]
    q = rand_ints(gen, 2**bits, k, n)
    zeros = None if sym else rand_ints(gen, 2**bits, total_groups, n)
    scales = rand_scales(gen, total_groups, n)
    lay = pack_act_order(q, scales, zeros, g_idx, bits, 128)
    padded = (sizes[sizes > 0] + 31) // 32 * 32
    assert lay.k == int(padded.sum()) and lay.k_in == k and lay.groups == 5
    assert lay.perm.dtype == torch.int32 and lay.unit_group.dtype == torch.int32
    assert torch.equal(lay.unit_group, torch.repeat_interleave(torch.arange(5), padded // 32).int())
    assert torch.equal(lay.scales[:, :n], scales[sizes > 0])
    lq, lz = unpack_layout(lay)
    rg = lay.unit_group.long().repeat_interleave(32)
    start = torch.cumsum(padded, 0) - padded
    real = torch.arange(lay.k) - start[rg] < sizes[sizes > 0][rg]      # the rest pads a run to 32
    assert torch.equal(lq[~real], lz[rg][~real]) and (lay.perm[~real] == 0).all()
    assert torch.equal(lq[real], q[lay.perm[real].long()])
    assert sorted(lay.perm[real].tolist()) == list(range(k))
    z = torch.full((total_groups, n), 2 ** (bits - 1)) if sym else zeros
    ref = (scales.double()[g_idx] * (q - z[g_idx]).double()).t()
    assert torch.equal(dequantize_layout(lay), ref)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.float32, 1e-3), (torch.bfloat16, 4e-3)])
@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("bias", [False, True])
def test_layout_linear(gen, dtype, tol, m, bias):
    # bf16 output rounding alone is up to 2**-9 per element, so its bound is looser
    bits, k, n = 4, 256, 72
    q, z = rand_ints(gen, 16, k, n), rand_ints(gen, 16, 2, n)
    scales = rand_scales(gen, 2, n)
    lay = pack_layout(q, scales, z, bits, 128)
    x = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    w = (scales.double()[torch.arange(k) // 128] * (q - z[torch.arange(k) // 128]).double()).t()
    ref = x.double() @ w.t() + (b.double() if bias else 0)
    out = layout_linear(x, lay, b)
    assert out.dtype == dtype and out.shape == (m, n)
    assert float((out.double() - ref).norm() / ref.norm()) < tol
    assert layout_linear(x.unsqueeze(0), lay, b).shape == (1, m, n)


def _pack_args(gen):
    return dict(q=rand_ints(gen, 16, 64, 40), scales=rand_scales(gen, 2, 40), zeros=rand_ints(gen, 16, 2, 40),
                bits=4, group_size=32)


BAD = [
    ("q", lambda a: a.update(q=a["q"].float())),
    ("q", lambda a: a.update(q=a["q"][:48])),
    ("q", lambda a: a.update(q=a["q"] + 16)),
    ("q", lambda a: a.update(q=a["q"].tolist())),
    ("scales", lambda a: a.update(scales=a["scales"].float())),
    ("scales", lambda a: a.update(scales=a["scales"][:1])),
    ("scales", lambda a: a.update(scales=a["scales"].to("meta"))),
    ("zeros", lambda a: a.update(zeros=a["zeros"][:, :8])),
    ("zeros", lambda a: a.update(zeros=a["zeros"] - 16)),
    ("bits", lambda a: a.update(bits=5)),
    ("bits", lambda a: a.update(bits=True)),
    ("group_size", lambda a: a.update(group_size=48)),
    ("unit_group", lambda a: a.update(perm=torch.arange(64))),
    ("perm", lambda a: a.update(perm=torch.arange(64) + 1, unit_group=torch.zeros(2, dtype=torch.int32))),
    ("unit_group", lambda a: a.update(perm=torch.arange(64), unit_group=torch.full((2,), 2))),
    ("k_in", lambda a: a.update(k_in=100)),
]


@pytest.mark.parametrize("name,mutate", BAD)
def test_bad_inputs(gen, name, mutate):
    args = _pack_args(gen)
    mutate(args)
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        pack_layout(**args)


def test_linear_bad_inputs(gen):
    lay = pack_layout(**_pack_args(gen))
    with pytest.raises(ValueError, match="^x: expected"):
        layout_linear(torch.randn(2, 63), lay)
    with pytest.raises(ValueError, match="^x: expected"):
        layout_linear(torch.ones(2, 64, dtype=torch.int32), lay)
    with pytest.raises(ValueError, match="^bias: expected"):
        layout_linear(torch.randn(2, 64), lay, torch.randn(41))
