"""GGUF format: bit-exact dequantization vs gguf-py, GPU layout round trip, .gguf file I/O, bad inputs."""
import os

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from jitkern.formats import gguf as G  # noqa: E402

T = gguf.GGMLQuantizationType
NAMES = list(G.TYPES)

# The layout contract of the module docstring, restated from kernel-spec.md §1.3.2 (stored offsets):
# type -> (quant fields in qs order, header planes in order), each as (stored offset, size).  Q4_K's
# and Q5_K's (d, dmin) and scales are one 16-byte plane (dm_scales).
DOC = {
    "Q4_0": ([(2, 16)], [(0, 2)]),
    "Q4_1": ([(4, 16)], [(0, 4)]),
    "Q5_0": ([(6, 16)], [(2, 4), (0, 2)]),
    "Q5_1": ([(8, 16)], [(0, 4), (4, 4)]),
    "Q8_0": ([(2, 32)], [(0, 2)]),
    "Q2_K": ([(16, 64)], [(0, 16), (80, 4)]),
    "Q3_K": ([(0, 32), (32, 64)], [(96, 12), (108, 2)]),
    "Q4_K": ([(16, 128)], [(0, 16)]),
    "Q5_K": ([(16, 32), (48, 128)], [(0, 16)]),
    "Q6_K": ([(0, 128), (128, 64)], [(192, 16), (208, 2)]),
    "IQ4_NL": ([(2, 16)], [(0, 2)]),
    "IQ4_XS": ([(8, 128)], [(4, 4), (0, 2), (2, 2)]),
}


def fresh(qtype, n=None, k_blocks=None):
    """Random valid blocks from a fresh seed; returns (raw, seed) so failures can be replayed."""
    seed = int.from_bytes(os.urandom(6), "little")
    g = torch.Generator().manual_seed(seed)
    qt = G.gguf_type(qtype)
    n = n or int(torch.randint(1, 9, (1,), generator=g))
    k_blocks = k_blocks or int(torch.randint(1, 9 if qt.block == 256 else 33, (1,), generator=g))
    return G.random_blocks(qtype, n, k_blocks * qt.block, generator=g), seed


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


def test_type_table_matches_gguf():
    assert set(NAMES) == set(DOC)
    for name, qt in G.TYPES.items():
        assert T[name].value == qt.id
        assert gguf.GGML_QUANT_SIZES[T[name]] == (qt.block, qt.nbytes)
        assert G.gguf_type(name) is G.gguf_type(name.lower()) is G.gguf_type(qt.id) is qt
        assert G.gguf_type(T[name]) is qt
        assert G.gguf_type(np.int32(qt.id)) is qt


@pytest.mark.parametrize("name", NAMES)
def test_dequantize_bit_exact_vs_gguf(name):
    raw, seed = fresh(name)
    ref = torch.from_numpy(gguf.quants.dequantize(raw.numpy(), T[name]))
    out = G.dequantize(raw, name)
    msg = f"{name} seed={seed} shape={tuple(raw.shape)}"
    assert out.dtype == torch.float32 and out.shape == ref.shape, msg
    assert torch.equal(bits(out), bits(ref)), msg
    assert torch.isfinite(out).all() and out.abs().max() > 0, msg
    # read-only numpy input (like a memmap), and a flat byte buffer with the logical shape
    ro = raw.numpy().copy()
    ro.flags.writeable = False
    assert torch.equal(bits(G.dequantize(ro, T[name])), bits(ref)), msg
    assert torch.equal(bits(G.dequantize(raw.view(-1), G.TYPES[name].id, shape=ref.shape)), bits(ref)), msg


@pytest.mark.parametrize("name", NAMES)
def test_random_blocks_are_valid(name):
    raw, seed = fresh(name, n=16, k_blocks=4)
    qt = G.TYPES[name]
    blocks = raw.view(-1, qt.nbytes)
    for f in qt.fields:
        vals = blocks[:, f.offset:f.offset + f.size].contiguous()
        if f.kind.startswith("f16"):
            v = vals.view(torch.float16).float().abs()
            assert ((v >= 9.9e-4) & (v <= 0.1001)).all(), f"{name}.{f.name} seed={seed}"
        else:
            assert vals.float().std() > 0, f"{name}.{f.name} seed={seed}"
    assert raw.shape == (16, 4 * qt.nbytes)


@pytest.mark.parametrize("name", NAMES)
def test_layout_round_trip_and_contract(name):
    raw, seed = fresh(name)
    qt = G.TYPES[name]
    n, nb = raw.shape[0], raw.shape[1] // qt.nbytes
    msg = f"{name} seed={seed} shape={tuple(raw.shape)}"
    lay = G.to_layout(raw, name)
    quants, planes = DOC[name]
    qb = sum(s for _, s in quants)
    hr = -(-nb * sum(s for _, s in planes) // 16) * 16
    assert lay.qs.dtype == lay.hdr.dtype == torch.uint8, msg
    assert lay.qs.shape == (n, nb, qb) and qb % 16 == 0 and lay.qs.is_contiguous(), msg
    assert lay.hdr.shape == (n, hr) and lay.hdr.is_contiguous(), msg
    # the documented byte positions, computed by hand from the stored blocks
    blocks = raw.view(n, nb, qt.nbytes)
    want_qs = torch.cat([blocks[..., o:o + s] for o, s in quants], -1)
    assert torch.equal(lay.qs, want_qs), msg
    off = 0
    for o, s in planes:
        assert off % min(16, s & -s) == 0, msg                     # naturally aligned plane start
        assert torch.equal(lay.hdr[:, off:off + nb * s], blocks[..., o:o + s].reshape(n, nb * s)), msg
        off += nb * s
    assert not lay.hdr[:, off:].any(), msg
    assert lay.nbytes() == n * nb * qb + n * hr
    # exact inverse, and the layout-side reference dequantizer
    assert torch.equal(G.from_layout(lay), raw), msg
    assert torch.equal(bits(G.dequantize_layout(lay)), bits(G.dequantize(raw, name))), msg


@pytest.mark.parametrize("name", ["Q4_1", "Q3_K"])
def test_chunked_decode(name, monkeypatch):
    raw, seed = fresh(name, n=5, k_blocks=7)
    whole = G.dequantize(raw, name)
    monkeypatch.setattr(G, "_CHUNK", 3)          # block chunks that straddle rows
    assert torch.equal(bits(G.dequantize(raw, name)), bits(whole)), f"seed={seed}"
    assert torch.equal(bits(G.dequantize_layout(G.to_layout(raw, name))), bits(whole)), f"seed={seed}"


def test_gguf_file_roundtrip(tmp_path):
    seed = int.from_bytes(os.urandom(6), "little")
    g = torch.Generator().manual_seed(seed)
    quant = {"blk.0.attn_q.weight": ("Q4_K", 8, 512), "blk.0.ffn_down.weight": ("Q6_K", 3, 256),
             "blk.0.attn_k.weight": ("Q8_0", 5, 96), "blk.0.ffn_up.weight": ("IQ4_NL", 4, 64),
             "blk.0.attn_v.weight": ("Q5_0", 2, 32)}
    data = {nm: G.random_blocks(qt, n, k, generator=g) for nm, (qt, n, k) in quant.items()}
    f16 = torch.randn(6, 32, generator=g).half()
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for nm, (qt, n, k) in quant.items():
        w.add_tensor(nm, data[nm].numpy(), raw_dtype=T[qt])
    w.add_tensor("output.weight", f16.numpy())
    w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))               # 1-D: skipped
    w.add_tensor("blk.0.exotic.weight", np.zeros((2, 66), np.uint8), raw_dtype=T.IQ2_XXS)  # unsupported
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    hdr = G.read_gguf_header(path)
    assert list(hdr)[:len(quant)] == list(quant)
    for nm, (qt, n, k) in quant.items():
        assert (hdr[nm].qtype, hdr[nm].shape, hdr[nm].nbytes) == (qt, (n, k), data[nm].numel())
        assert hdr[nm].loadable
    assert (hdr["output.weight"].qtype, hdr["output.weight"].shape) == ("F16", (6, 32))
    assert hdr["output_norm.weight"].shape == (32,) and not hdr["output_norm.weight"].loadable
    assert hdr["blk.0.exotic.weight"].qtype == "IQ2_XXS" and not hdr["blk.0.exotic.weight"].loadable

    got = G.load_gguf_linear_tensors(path)
    assert set(got) == set(quant) | {"output.weight"}, f"seed={seed}"
    for nm, (qt, n, k) in quant.items():
        gq, gshape, graw = got[nm]
        assert (gq, gshape, graw.dtype) == (qt, (n, k), torch.uint8)
        assert torch.equal(graw, data[nm]), f"{nm} seed={seed}"
        assert torch.equal(bits(G.dequantize(graw, gq, gshape)), bits(G.dequantize(data[nm], qt)))
    assert got["output.weight"][0] == "F16" and torch.equal(got["output.weight"][2], f16)
    assert set(G.load_gguf_linear_tensors(path, names=["blk.0.attn_k.weight"])) == {"blk.0.attn_k.weight"}


def _bad_layout(**kw):
    lay = G.to_layout(G.random_blocks("Q4_K", 2, 256), "Q4_K")
    for k, v in kw.items():
        setattr(lay, k, v(lay) if callable(v) else v)
    return lay


q40 = G.random_blocks("Q4_0", 4, 64)   # [4, 36]
BAD = [
    ("unknown type name", lambda: G.dequantize(q40, "Q9_9", name="w.unk"), "w.unk", "supported GGUF type"),
    ("unknown type id", lambda: G.to_layout(q40, 99, name="w.id"), "w.id", "supported GGUF type"),
    ("float type", lambda: G.dequantize(q40, T.F16, name="w.f16"), "w.f16", "supported GGUF type"),
    ("partial block", lambda: G.dequantize(q40[:, :35].contiguous(), "Q4_0", name="w.part"),
     "w.part", "whole Q4_0 blocks"),
    ("K not multiple", lambda: G.dequantize(q40, "Q4_0", shape=(4, 48), name="w.k"), "w.k", "block size 32"),
    ("shape mismatch", lambda: G.dequantize(q40, "Q4_0", shape=(3, 64), name="w.shape"),
     "w.shape", "(3, 36)"),
    ("K-quant K", lambda: G.to_layout(q40, "Q4_K", shape=(4, 128), name="w.kk"), "w.kk", "block size 256"),
    ("wrong dtype", lambda: G.dequantize(q40.to(torch.int8), "Q4_0", name="w.i8"), "w.i8", "uint8"),
    ("float tensor", lambda: G.to_layout(q40.float(), "Q4_0", name="w.f32"), "w.f32", "uint8"),
    ("numpy dtype", lambda: G.dequantize(q40.numpy().view(np.int8), "Q4_0", name="w.np"), "w.np", "uint8"),
    ("non-contiguous", lambda: G.dequantize(q40.view(4, 2, 18)[:, 0], "Q4_0", name="w.nc"),
     "w.nc", "contiguous"),
    ("non-contiguous numpy", lambda: G.dequantize(q40.numpy()[::2], "Q4_0", name="w.ncn"),
     "w.ncn", "contiguous"),
    ("3-D bytes", lambda: G.dequantize(q40.view(2, 2, 36), "Q4_0", name="w.3d"), "w.3d", "2-D"),
    ("not a tensor", lambda: G.dequantize([1, 2], "Q4_0", name="w.list"), "w.list", "torch.Tensor"),
    ("layout qs shape", lambda: G.from_layout(_bad_layout(qs=lambda lay: lay.qs[:, :, :64].contiguous()),
                                              name="L"), "L.qs", "shape"),
    ("layout hdr dtype", lambda: G.dequantize_layout(_bad_layout(hdr=lambda lay: lay.hdr.int()), name="L"),
     "L.hdr", "uint8"),
    ("layout K", lambda: G.from_layout(_bad_layout(k=300), name="L"), "L", "block size 256"),
    ("layout type", lambda: G.from_layout(_bad_layout(qtype="F16"), name="L"), "L.qtype", "supported"),
    ("random K", lambda: G.random_blocks("Q6_K", 2, 100), "k", "block size 256"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_inputs_raise_value_error_naming_the_tensor(case):
    _, call, name, words = case
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value).startswith(f"{name}:") and words in str(e.value), str(e.value)
