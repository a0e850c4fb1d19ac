"""GGUF kernels compile for gfx906 (hiprtc) with the resources the design promises, and their decode
logic is right: a host (g++) build of templates/gguf_types.h.j2 is checked bit-exactly against
gguf.quants, and its integer-dot GEMV math against a float64 product.  Bad inputs fail before launch."""
from __future__ import annotations

import pytest
import torch

from conftest import rel_err, requires_hiprtc
from jitkern import cache, inspect
from jitkern.families import GGUF_FMTS
from jitkern.formats import gguf as G
from jitkern.ops import gguf as ops
from jitkern.spec import KernelSpec

import gguf_host
from test_dense_compile import _nvrtc_available  # the one NVRTC probe of the compile tests

ARCH = "gfx906"


def _params():
    for fmt in GGUF_FMTS:
        for m in range(1, 9):
            yield pytest.param(fmt, m, id=f"{fmt}-m{m}")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Compile every GGUF kernel once for the module (fresh cache), then inspect."""
    import os

    old = os.environ.get("JITKERN_CACHE_DIR")
    os.environ["JITKERN_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    cache.clear_memory()
    yield {}
    cache.clear_memory()
    if old is None:
        os.environ.pop("JITKERN_CACHE_DIR", None)
    else:
        os.environ["JITKERN_CACHE_DIR"] = old


def _report(built, spec):
    if spec not in built:
        binary = cache.get(spec).binary
        counts = inspect.instruction_counts(binary, "gfx906") if inspect.objdump() else None
        built[spec] = (inspect.amd_kernel_report(binary), counts)
    return built[spec]


@requires_hiprtc
@pytest.mark.parametrize("fmt,m", list(_params()))
def test_gemv_compiles(built, fmt, m):
    report, counts = _report(built, KernelSpec("gguf_gemv", fmt, m=m, arch=ARCH))
    assert report["scratch_bytes"] == 0, report
    assert report["vgprs"] <= 64, report
    if counts is not None:
        assert counts["v_dot4_i32_i8"] > 0 and counts["global_atomic"] == 0, counts
        assert counts["global_load_dwordx4"] > 0, counts


@requires_hiprtc
@pytest.mark.parametrize("fmt", GGUF_FMTS)
def test_dequant_compiles(built, fmt):
    report, _ = _report(built, KernelSpec("gguf_dequant", fmt, act="f16", arch=ARCH))
    assert report["scratch_bytes"] == 0 and report["vgprs"] <= 64, report


@requires_hiprtc
def test_quantizer_compiles(built):
    report, _ = _report(built, KernelSpec("q8_1_quantize", "q8_1", arch=ARCH))
    assert report["scratch_bytes"] == 0, report


def test_kernel_specs():
    specs = ops.kernel_specs("Q4_K", ARCH, max_m=3)
    assert [s.m for s in specs if s.family == "gguf_gemv"] == [1, 2, 3]
    assert {s.family for s in specs} == {"gguf_gemv", "q8_1_quantize", "gguf_dequant"}
    assert all(s.fmt in ("q4_k", "q8_1") for s in specs)
    # sm_80+: tensor cores on fp16 activations, no quantizer; older NVIDIA keeps the integer path.
    assert ops.uses_mma("sm_90") and ops.uses_mma("sm_80") and not ops.uses_mma("sm_75")
    assert not ops.uses_mma(ARCH)
    # sm_90: the prefill GEMM and its packer too, in both token tiles
    hopper = ops.kernel_specs("Q6_K", "sm_90")
    assert {s.family for s in hopper} == {"gguf_gemv", "gguf_dequant", "gguf_gemm", "x_pack"}
    assert sorted(s.m for s in hopper if s.family == "gguf_gemm") == [128, 256]
    assert {s.family for s in ops.kernel_specs("Q4_K", "sm_75")} == {"gguf_gemv", "q8_1_quantize", "gguf_dequant"}


@pytest.mark.skipif(not _nvrtc_available(), reason="NVRTC not installed")
@pytest.mark.parametrize("fmt", GGUF_FMTS)
def test_nvrtc_compiles(fresh_cache, fmt):
    """Every type builds for sm_90 (tensor-core GEMV) and sm_75 (integer GEMV, quantizer)."""
    from jitkern.render import render

    for arch, m in (("sm_90", 1), ("sm_90", 8), ("sm_75", 8)):
        spec = KernelSpec("gguf_gemv", fmt, m=m, arch=arch)
        assert cache.get(spec).binary
        src = render(spec)
        assert ("mma.sync" in src) == (arch == "sm_90") and ("jk_dot4_i8((int)w[0]" in src) == (arch == "sm_75")
    assert cache.get(KernelSpec("gguf_dequant", fmt, act="f16", arch="sm_90")).binary
    if fmt == "q4_0":
        assert cache.get(KernelSpec("q8_1_quantize", "q8_1", arch="sm_75")).binary


# ---------------------------------------------------------------------------------------------
# decode logic on the host

host = pytest.mark.skipif(not gguf_host.available(), reason="g++ not installed")


@host
@pytest.mark.parametrize("qtype", list(G.TYPES))
def test_host_decode_exact_and_gemv(qtype, seed):
    """Both decodes (int8 for the integer GEMV, unsigned + JK_BIAS for the tensor-core GEMV) are
    bit-exact; the integer GEMV's math is within 2e-4 and the fp16 path's within 1e-3 of float64 (its
    budget, jitkern/ops/gguf.py: ~5e-4 with the fp16 output rounding the GPU adds; test bound 2e-3)."""
    gguf = pytest.importorskip("gguf")
    g = torch.Generator().manual_seed(seed)
    n, k = 64, 2 * 256
    raw = G.random_blocks(qtype, n, k, generator=g)
    lay = G.to_layout(raw, qtype)
    ref = torch.from_numpy(gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType[qtype])).float()
    assert torch.equal(gguf_host.dequant(lay), ref)
    assert torch.equal(gguf_host.dequant(lay, unsigned=True), ref)
    x = torch.randn(3, k, generator=g).half()
    want = x.double() @ ref.double().t()
    assert rel_err(gguf_host.gemv(x, lay), want) < 2e-4
    assert rel_err(gguf_host.gemv_f16(x, lay), want) < 1e-3


@host
@pytest.mark.parametrize("qtype", list(G.TYPES))
def test_host_f16_scales_equal_fp32_cast(qtype, seed):
    """The tensor-core kernels' fp16 (a, c) (products in fp16, no fp32) equal the fp32 (a, c) cast to
    fp16, bit for bit, for header scales over the whole finite fp16 range: subnormal products,
    overflow to inf, both signs."""
    g = torch.Generator().manual_seed(seed)
    n, k = 32, 4 * 256
    raw = G.random_blocks(qtype, n, k, generator=g)
    qt = G.gguf_type(qtype)
    blocks = raw.view(n, k // qt.block, qt.nbytes)
    for f in qt.fields:
        if f.kind.startswith("f16"):
            bits = torch.randint(0, 1 << 16, blocks[..., f.offset:f.offset + f.size].shape[:-1] + (f.size // 2,),
                                 generator=g, dtype=torch.int32)
            bits = torch.where((bits & 0x7C00) == 0x7C00, bits & 0x83FF, bits)     # inf/NaN -> subnormal
            blocks[..., f.offset:f.offset + f.size] = bits.to(torch.int16).view(torch.uint8).view(
                blocks[..., f.offset:f.offset + f.size].shape)
    bad, groups = gguf_host.ac_f16_mismatches(G.to_layout(raw, qtype))
    assert groups == n * k // 16
    assert bad == 0


# ---------------------------------------------------------------------------------------------
# bad inputs (CPU): ValueError before any launch

def _bad_cases():
    from jitkern.nn_gguf import GGUFLinear

    good = G.random_blocks("Q4_0", 4, 64)
    layer = GGUFLinear.from_raw(good, "q4_0")
    return {
        "unknown type": lambda: GGUFLinear.from_raw(good, "q9_9"),
        "partial block bytes": lambda: GGUFLinear.from_raw(good[:, :-1].contiguous(), "q4_0"),
        "K not whole blocks": lambda: GGUFLinear.from_raw(good, "q4_0", shape=(4, 48)),
        "raw dtype": lambda: GGUFLinear.from_raw(good.to(torch.int16), "q4_0"),
        "x dtype": lambda: layer(torch.zeros(1, 64, dtype=torch.int32)),
        "x K": lambda: layer(torch.zeros(1, 32)),
        "x device": lambda: layer(torch.zeros(1, 64, device="meta")),
        "bias shape": lambda: GGUFLinear.from_raw(good, "q4_0", bias=torch.zeros(5)),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_inputs(case, monkeypatch):
    from jitkern import runtime

    monkeypatch.setattr(runtime.Kernel, "__call__", lambda *a, **k: pytest.fail("launched"))
    with pytest.raises(ValueError):
        _bad_cases()[case]()


def test_cpu_module_matches_reference():
    from jitkern.nn_gguf import GGUFLinear

    raw = G.random_blocks("Q6_K", 6, 256)
    bias = torch.randn(6)
    layer = GGUFLinear.from_raw(raw, "q6_k", bias=bias)
    x = torch.randn(2, 3, 256)
    y = layer(x)
    ref = x.double() @ G.dequantize(raw, "q6_k").double().t() + bias.half().double()
    assert y.shape == (2, 3, 6) and y.dtype == x.dtype
    assert rel_err(y, ref) < 1e-5
    before = ops.calls["gguf_linear"]
    layer(x)
    assert ops.calls["gguf_linear"] == before + 1
