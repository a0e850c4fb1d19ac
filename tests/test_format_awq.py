"""AWQ packer / oracle / conversions (jitkern/formats/awq.py) against kernel-spec §1.2.

Fresh random data every run; the seed is printed (shown on failure).  Reproduce a failure with
``JITKERN_TEST_SEED=<seed> python3 -m pytest tests/test_format_awq.py``.
"""

import pytest
import torch

from jitkern.formats.awq import (awq_to_gptq, awq_to_layout, dequantize_awq, pack_awq, quantize_awq,
                                 unpack_awq)
from jitkern.formats.gptq import dequantize_gptq, gptq_to_layout, unpack_gptq
from jitkern.formats.intpack import dequantize_layout, layout_linear, unpack_layout

GROUPS = (32, 64, 128, -1)


def test_known_answer_interleave(gen):
    # nibble j of word c holds column 8c + ORDER[j], ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    q = torch.randint(0, 16, (32, 16), generator=gen)
    z = torch.randint(0, 16, (1, 16), generator=gen)
    ck = pack_awq(q, z, torch.ones(1, 16).half())
    assert ck["qweight"].shape == (32, 2) and ck["qzeros"].shape == (1, 2)
    for row, packed in ((q[5], ck["qweight"][5]), (z[0], ck["qzeros"][0])):
        for c in range(2):
            want = sum(int(row[8 * c + order[j]]) << (4 * j) for j in range(8))
            assert int(packed[c]) & 0xFFFFFFFF == want
    # natural order 0..7 interleaves to nibbles 0,2,4,6,1,3,5,7
    ramp = pack_awq(torch.arange(8).repeat(32, 1), torch.zeros(1, 8, dtype=torch.long), torch.ones(1, 8).half())
    assert int(ramp["qweight"][0, 0]) == 0x75316420


def test_pack_unpack_roundtrip(gen):
    k, n, groups = 64, 48, 2
    q = torch.randint(0, 16, (k, n), generator=gen)
    z = torch.randint(0, 16, (groups, n), generator=gen)
    z[0, :3] = 0                                         # AWQ zeros are exact: 0 must survive
    ck = pack_awq(q, z, torch.ones(groups, n).half())
    q2, z2 = unpack_awq(ck["qweight"], ck["qzeros"])
    assert torch.equal(q2, q) and torch.equal(z2, z)


@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("n", [8, 40, 64, 136])
def test_quantize_convert(gen, group_size, n):
    k = 256
    W = torch.randn(n, k, generator=gen, dtype=torch.float64) * 0.05
    ck = quantize_awq(W, group_size, generator=gen)
    g = k if group_size == -1 else group_size
    groups = k // g
    assert ck["qweight"].dtype == ck["qzeros"].dtype == torch.int32
    assert ck["qweight"].shape == (k, n // 8) and ck["qzeros"].shape == (groups, n // 8)
    assert ck["scales"].dtype == torch.float16 and ck["scales"].shape == (groups, n)
    ref = dequantize_awq(**ck, group_size=group_size)
    s = ck["scales"].double()[torch.arange(k) // g].t()
    assert ((ref - W).abs() <= (0.5 + 16 * 2**-11) * s).all(), "round-to-nearest error too large"

    lay = awq_to_layout(**ck, group_size=group_size)
    assert torch.equal(dequantize_layout(lay), ref)
    assert not lay.symmetric and not lay.act_order and lay.bits == 4

    gp = awq_to_gptq(**ck, group_size=group_size)
    assert gp["qweight"].shape == (k // 8, n) and gp["qzeros"].shape == (groups, n // 8)
    assert gp["scales"] is ck["scales"] and torch.equal(gp["g_idx"], (torch.arange(k) // g).int())
    assert torch.equal(dequantize_gptq(**gp, bits=4, group_size=group_size, checkpoint_format="gptq_v2"), ref)
    q_awq, z_awq = unpack_awq(ck["qweight"], ck["qzeros"])
    assert all(torch.equal(a, b) for a, b in zip(unpack_gptq(gp["qweight"], gp["qzeros"], 4), (q_awq, z_awq)))
    lay2 = gptq_to_layout(**gp, bits=4, group_size=group_size, sym=False, checkpoint_format="gptq_v2")
    assert all(torch.equal(a, b) for a, b in zip(unpack_layout(lay2), unpack_layout(lay)))
    assert torch.equal(lay2.qweight, lay.qweight) and torch.equal(lay2.scales, lay.scales)

    x = torch.randn(4, k, generator=gen).half()
    want = x.double() @ ref.t()
    assert float((layout_linear(x, lay).double() - want).norm() / want.norm()) < 1e-3


def test_zero_point_zero_is_exact(gen):
    # AWQ can hold z = 0 (a group with no negative weights); v2 GPTQ and the layout keep it
    q = torch.randint(0, 16, (32, 8), generator=gen)
    z = torch.zeros(1, 8, dtype=torch.long)
    scales = (torch.rand(1, 8, generator=gen) + 0.5).half()
    ck = pack_awq(q, z, scales)
    ref = (scales.double() * q.double()).t()
    assert torch.equal(dequantize_awq(**ck, group_size=32), ref)
    assert torch.equal(dequantize_layout(awq_to_layout(**ck, group_size=32)), ref)
    gp = awq_to_gptq(**ck, group_size=32)
    assert torch.equal(dequantize_gptq(**gp, bits=4, group_size=32, checkpoint_format="gptq_v2"), ref)


def _ckpt(gen):
    return dict(quantize_awq(torch.randn(16, 128, generator=gen), 32), group_size=32)


def _set(**kw):
    return lambda a: a.update({k: (v(a) if callable(v) else v) for k, v in kw.items()})


BAD = [
    ("qweight", _set(qweight=lambda a: a["qweight"].float())),
    ("qweight", _set(qweight=lambda a: a["qweight"][:100])),
    ("qweight", _set(qweight=lambda a: a["qweight"].flatten())),
    ("qweight", _set(qweight=None)),
    ("qzeros", _set(qzeros=lambda a: a["qzeros"][:, :1])),
    ("qzeros", _set(qzeros=lambda a: a["qzeros"][:3])),
    ("qzeros", _set(qzeros=lambda a: a["qzeros"].to("meta"))),
    ("scales", _set(scales=lambda a: a["scales"].bfloat16())),
    ("scales", _set(scales=lambda a: a["scales"][:, :8])),
    ("group_size", _set(group_size=16)),
    ("group_size", _set(group_size="128")),
]


@pytest.mark.parametrize("fn", [awq_to_layout, awq_to_gptq, dequantize_awq])
@pytest.mark.parametrize("name,mutate", BAD)
def test_bad_inputs(gen, fn, name, mutate):
    args = _ckpt(gen)
    mutate(args)
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        fn(**args)


@pytest.mark.parametrize("name,kw", [
    ("W", dict(W=torch.ones(16, 128, dtype=torch.int64))), ("W", dict(W=torch.ones(12, 128))),
    ("W", dict(W=torch.ones(16, 100))), ("W", dict(W=torch.full((16, 128), float("inf")))),
    ("group_size", dict(group_size=100)),
])
def test_quantize_bad_inputs(name, kw):
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        quantize_awq(**(dict(W=torch.randn(16, 128), group_size=32) | kw))
