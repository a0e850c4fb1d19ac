"""GPTQ packer / oracle / conversion (jitkern/formats/gptq.py) against kernel-spec §1.1.

Fresh random data every run; the seed is printed (shown on failure).  Reproduce a failure with
``JITKERN_TEST_SEED=<seed> python3 -m pytest tests/test_format_gptq.py``.
"""

import pytest
import torch

from jitkern.formats.gptq import (dequantize_gptq, gptq_to_layout, pack_gptq, quantize_gptq, unpack_gptq)
from jitkern.formats.intpack import dequantize_layout, layout_linear

BITS = (2, 3, 4, 8)
GROUPS = (32, 64, 128, -1)
FORMATS = ("gptq", "gptq_v2")
N_CHOICES = {2: [16, 48, 80], 3: [32, 64, 96], 4: [8, 40, 72], 8: [4, 36, 100]}


def pick(gen, options):
    return options[int(torch.randint(len(options), (1,), generator=gen))]


def u32(x):
    return int(x) & 0xFFFFFFFF


def stream_words(values, bits):
    """Known answer: 32 values as one little-endian 32*bits-bit integer, cut into bits words."""
    s = sum(int(v) << (bits * i) for i, v in enumerate(values))
    return [(s >> (32 * j)) & 0xFFFFFFFF for j in range(bits)]


@pytest.mark.parametrize("bits", BITS)
def test_known_answer_packing(gen, bits):
    q = torch.randint(0, 2**bits, (32, 32), generator=gen)
    z = torch.randint(0, 2**bits, (1, 32), generator=gen)
    ck = pack_gptq(q, z, torch.ones(1, 32).half(), torch.zeros(32, dtype=torch.int32), bits, "gptq_v2")
    col = 7
    assert [u32(w) for w in ck["qweight"][:, col]] == stream_words(q[:, col], bits)
    assert [u32(w) for w in ck["qzeros"][0]] == stream_words(z[0], bits)
    if bits == 3:   # the two straddling values, as spelled out in the spec
        w0, w1, w2 = (u32(w) for w in ck["qweight"][:, col])
        v = q[:, col].tolist()
        assert w0 >> 30 == v[10] & 3 and w1 & 1 == v[10] >> 2
        assert w1 >> 31 == v[21] & 1 and w2 & 3 == v[21] >> 1 and (w2 >> 2) & 7 == v[22]


@pytest.mark.parametrize("bits,v1_word,v2_word", [(4, 0x77777777, 0x88888888), (8, 0x7F7F7F7F, 0x80808080),
                                                  (2, 0x55555555, 0xAAAAAAAA), (3, None, None)])
def test_symmetric_qzeros_constants(gen, bits, v1_word, v2_word):
    w = torch.randn(32, 64, generator=gen)
    for fmt, word, stored in (("gptq", v1_word, 2 ** (bits - 1) - 1), ("gptq_v2", v2_word, 2 ** (bits - 1))):
        qz = quantize_gptq(w, bits, 32, sym=True, checkpoint_format=fmt)["qzeros"]
        want = stream_words([stored] * 32, bits) if bits == 3 else [word]
        assert {u32(x) for x in qz[:, :len(want)].flatten()} <= set(want)
        assert [u32(x) for x in qz[0, :len(want)]] == want


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_pack_unpack_roundtrip(gen, bits, fmt):
    k, n, groups = 128, pick(gen, N_CHOICES[bits]), 4
    q = torch.randint(0, 2**bits, (k, n), generator=gen)
    z = torch.randint(0, 2**bits, (groups, n), generator=gen)
    z[0, 0], z[1, -1] = 0, 2**bits - 1                 # the v1 edge cases: -1 wraps, max stays
    scales = (torch.rand(groups, n, generator=gen) + 0.5).half()
    g_idx = torch.arange(k) // 32
    ck = pack_gptq(q, z, scales, g_idx, bits, fmt)
    assert ck["qweight"].dtype == ck["qzeros"].dtype == torch.int32
    assert ck["qweight"].shape == (k * bits // 32, n) and ck["qzeros"].shape == (groups, n * bits // 32)
    q2, stored = unpack_gptq(ck["qweight"], ck["qzeros"], bits)
    assert torch.equal(q2, q)
    assert torch.equal(stored, (z - 1) % 2**bits if fmt == "gptq" else z)
    ref = (scales.double()[g_idx] * (q - z[g_idx]).double()).t()
    assert torch.equal(dequantize_gptq(**ck, bits=bits, group_size=32, checkpoint_format=fmt), ref)
    lay = gptq_to_layout(**ck, bits=bits, group_size=32, sym=False, checkpoint_format=fmt)
    assert torch.equal(dequantize_layout(lay), ref)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("act_order", [False, True])
def test_quantize_convert_matrix(gen, bits, group_size, sym, fmt, act_order):
    k, n = 256, pick(gen, N_CHOICES[bits])
    W = torch.randn(n, k, generator=gen, dtype=torch.float64) * 0.05
    ck = quantize_gptq(W, bits, group_size, sym, act_order, fmt, generator=gen)
    g = k if group_size == -1 else group_size
    groups = k // g
    assert ck["qweight"].shape == (k * bits // 32, n) and ck["qzeros"].shape == (groups, n * bits // 32)
    assert ck["scales"].dtype == torch.float16 and ck["scales"].shape == (groups, n)
    assert ck["g_idx"].dtype == torch.int32 and torch.equal(torch.bincount(ck["g_idx"].long()),
                                                            torch.full((groups,), g))
    trivial = torch.equal(ck["g_idx"].long(), torch.arange(k) // g)
    assert trivial == (not act_order or group_size == -1)

    ref = dequantize_gptq(**ck, bits=bits, group_size=group_size, checkpoint_format=fmt)
    s = ck["scales"].double()[ck["g_idx"].long()].t()
    # half a step, plus the clamp at the top of the grid that the fp16 rounding of the scale can cause
    assert ((ref - W).abs() <= (0.5 + 2**bits * 2**-11) * s).all(), "round-to-nearest error too large"

    lay = gptq_to_layout(**ck, bits=bits, group_size=group_size, sym=sym, checkpoint_format=fmt)
    assert torch.equal(dequantize_layout(lay), ref)
    assert lay.symmetric == sym and lay.act_order == (not trivial) and lay.k_in == k
    if lay.act_order:   # full checkpoint: every run is exactly g rows, so nothing needs padding
        assert lay.k == k and torch.equal(lay.unit_group.long(), torch.arange(k // 32) * 32 // g)
        assert torch.equal(ck["g_idx"][lay.perm.long()].long(), torch.arange(k) // g)

    x = torch.randn(3, k, generator=gen).half()
    out = layout_linear(x, lay)
    want = x.double() @ ref.t()
    assert float((out.double() - want).norm() / want.norm()) < 1e-3


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_tensor_parallel_row_shards(gen, bits, fmt):
    # act-order: vLLM keeps the full scales/qzeros and shards qweight rows and g_idx
    k, n, tp = 512, pick(gen, N_CHOICES[bits]), 4
    W = torch.randn(n, k, generator=gen)
    ck = quantize_gptq(W, bits, 128, sym=False, act_order=True, checkpoint_format=fmt, generator=gen)
    full = dequantize_gptq(**ck, bits=bits, group_size=128, checkpoint_format=fmt)
    ks, rows = k // tp, k // tp * bits // 32
    padded = False
    for r in range(tp):
        shard = dict(ck, qweight=ck["qweight"][r * rows:(r + 1) * rows], g_idx=ck["g_idx"][r * ks:(r + 1) * ks])
        lay = gptq_to_layout(**shard, bits=bits, group_size=128, sym=False, checkpoint_format=fmt)
        assert lay.act_order and lay.k_in == ks and lay.k % 32 == 0
        padded |= lay.k > ks
        want = full[:, r * ks:(r + 1) * ks]
        assert torch.equal(dequantize_gptq(**shard, bits=bits, group_size=128, checkpoint_format=fmt), want)
        assert torch.equal(dequantize_layout(lay), want)
    assert padded, "random act-order shards should need padded runs"

    # no act-order: shards of a g_idx = k // g model (full scales, or sharded scales with desc_act=False)
    ck = quantize_gptq(W, bits, 64, sym=False, checkpoint_format=fmt)
    full = dequantize_gptq(**ck, bits=bits, group_size=64, checkpoint_format=fmt)
    r, gs = 2, slice(2 * ks // 64, 3 * ks // 64)
    shard = dict(ck, qweight=ck["qweight"][r * rows:(r + 1) * rows], g_idx=ck["g_idx"][r * ks:(r + 1) * ks])
    lay = gptq_to_layout(**shard, bits=bits, group_size=64, sym=False, checkpoint_format=fmt)
    assert not lay.act_order and lay.groups == ks // 64
    assert torch.equal(dequantize_layout(lay), full[:, r * ks:(r + 1) * ks])
    shard.update(qzeros=ck["qzeros"][gs], scales=ck["scales"][gs])
    lay = gptq_to_layout(**shard, bits=bits, group_size=64, sym=False, checkpoint_format=fmt, desc_act=False)
    assert not lay.act_order and torch.equal(dequantize_layout(lay), full[:, r * ks:(r + 1) * ks])
    # a shard boundary inside a group: handled through the act-order path
    h = ck["qweight"].shape[0] * 3 // 8 // bits * bits
    shard = dict(ck, qweight=ck["qweight"][h:], g_idx=ck["g_idx"][h * 32 // bits:])
    lay = gptq_to_layout(**shard, bits=bits, group_size=64, sym=False, checkpoint_format=fmt)
    assert torch.equal(dequantize_layout(lay), full[:, h * 32 // bits:])


def _ckpt(gen):
    W = torch.randn(32, 128, generator=gen)
    return dict(quantize_gptq(W, 4, 32, sym=False, act_order=True, generator=gen), bits=4, group_size=32,
                sym=False, checkpoint_format="gptq")


def _set(**kw):
    return lambda a: a.update({k: (v(a) if callable(v) else v) for k, v in kw.items()})


BAD = [
    ("qweight", _set(qweight=lambda a: a["qweight"].float())),
    ("qweight", _set(qweight=lambda a: a["qweight"][:3])),
    ("qweight", _set(qweight=lambda a: a["qweight"][0])),
    ("qweight", _set(qweight=lambda a: a["qweight"].numpy())),
    ("qweight", _set(bits=3)),                                   # 16 rows * 32 / 3 is not whole
    ("qzeros", _set(qzeros=lambda a: a["qzeros"][:, :2])),
    ("qzeros", _set(qzeros=lambda a: a["qzeros"].long())),
    ("scales", _set(scales=lambda a: a["scales"].float())),
    ("scales", _set(scales=lambda a: a["scales"][:, :16])),
    ("scales", _set(scales=lambda a: a["scales"].to("meta"))),
    ("scales", _set(g_idx=None, qzeros=lambda a: a["qzeros"][:2], scales=lambda a: a["scales"][:2])),
    ("scales", _set(group_size=-1, g_idx=None)),
    ("g_idx", _set(g_idx=lambda a: a["g_idx"][:64])),
    ("g_idx", _set(g_idx=lambda a: a["g_idx"] + 4)),
    ("g_idx", _set(g_idx=lambda a: a["g_idx"] - 1)),
    ("g_idx", _set(g_idx=lambda a: a["g_idx"].float())),
    ("g_idx", _set(g_idx=lambda a: a["g_idx"].to("meta"))),
    ("g_idx", _set(g_idx=lambda a: torch.zeros_like(a["g_idx"]))),      # 128 rows in a group of 32
    ("g_idx", _set(desc_act=False)),                                     # permuted but desc_act=False
    ("g_idx", _set(desc_act=True, g_idx=None)),
    ("bits", _set(bits=5)),
    ("group_size", _set(group_size=48)),
    ("group_size", _set(group_size=256)),
    ("checkpoint_format", _set(checkpoint_format="v1")),
    ("desc_act", _set(desc_act="yes")),
    ("sym", _set(sym=None)),
]


@pytest.mark.parametrize("name,mutate", BAD)
def test_bad_inputs(gen, name, mutate):
    args = _ckpt(gen)
    mutate(args)
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        gptq_to_layout(**args)


@pytest.mark.parametrize("name,kw", [
    ("W", dict(W=torch.ones(32, 128, dtype=torch.int32))), ("W", dict(W=torch.ones(128))),
    ("W", dict(W=torch.ones(32, 48))), ("W", dict(W=torch.full((32, 64), float("nan")))),
    ("W", dict(bits=3, W=torch.ones(40, 64))), ("bits", dict(bits=1)), ("group_size", dict(group_size=0)),
    ("checkpoint_format", dict(checkpoint_format="gptq_v3")), ("act_order", dict(act_order=None)),
])
def test_quantize_bad_inputs(name, kw):
    args = dict(W=torch.randn(32, 64), bits=4, group_size=32) | kw
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        quantize_gptq(**args)
