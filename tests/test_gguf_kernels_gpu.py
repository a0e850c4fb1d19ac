"""GGUF kernels on a GPU: bit-exact dequantization, GEMV for M = 1..8 (and a GEMM M) against a
float64 product of gguf-dequantized weights, graph capture.  Fresh random data each run.

Error budget (jitkern/ops/gguf.py): the tensor-core GEMV (NVIDIA sm_80+) rounds a, c and the weights
to fp16 (~4e-4 relative, host-checked in test_gguf_kernels_compile.py), the integer GEMV is ~2e-5,
the prefill's fp16 weights and fp16 GEMM a few 1e-4; every path must stay within 2e-3."""
from __future__ import annotations

import pytest
import torch

from conftest import rel_err
from jitkern.formats import gguf as G
from jitkern.ops import gguf as ops

pytestmark = pytest.mark.gpu
gguf = pytest.importorskip("gguf")
TYPES = list(G.TYPES)


def _weights(qtype, n, k, g):
    raw = G.random_blocks(qtype, n, k, generator=g)
    ref = torch.from_numpy(gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType[qtype])).float()
    return raw, G.to_layout(raw.cuda(), qtype), ref


@pytest.mark.parametrize("qtype", TYPES)
def test_dequant_exact(qtype, seed):
    g = torch.Generator().manual_seed(seed)
    raw, lay, ref = _weights(qtype, 40, 3 * 256, g)
    out = torch.full((lay.n, lay.k), float("nan"), device="cuda")
    assert torch.equal(ops.dequantize(lay, out=out, dtype=torch.float32).cpu(), ref)
    half = torch.full((lay.n, lay.k), float("nan"), device="cuda", dtype=torch.float16)
    assert torch.equal(ops.dequantize(lay, out=half).cpu(), ref.half())
    part = ops.dequantize(lay, 7, 9, dtype=torch.float32)      # a row strip (the GEMM workspace path)
    assert torch.equal(part.cpu(), ref[7:16])


@pytest.mark.parametrize("m", [1, 8, 19])
def test_layer_takes_an_activation_view_off_a_16_byte_boundary(seed, m):
    from jitkern.nn_gguf import GGUFLinear

    g = torch.Generator().manual_seed(seed)
    raw, _, ref = _weights("Q4_K", 64, 2 * 256, g)
    layer = GGUFLinear.from_raw(raw, "Q4_K", shape=(64, 2 * 256)).cuda()
    flat = torch.randn(m * 512 + 3, generator=g).half().cuda()
    x = flat[3:].view(m, 512)
    assert x.is_contiguous() and x.data_ptr() % 16 == 6
    out = layer(x)
    torch.cuda.synchronize()
    assert rel_err(out, x.cpu().double() @ ref.double().t()) < 2e-3


@pytest.mark.parametrize("qtype", TYPES)
def test_gemv_and_gemm(qtype, seed):
    g = torch.Generator().manual_seed(seed)
    # N not a multiple of the 8 (integer) or 16 (tensor-core) rows a block covers; K = 768 leaves a
    # partial last step of the tensor-core GEMV (whole blocks, some lanes past the row's end).
    for n, k, ms in ((300, 4 * 256, list(range(1, 9)) + [19]), (37, 3 * 256, [1, 3, 8, 9])):
        raw, lay, ref = _weights(qtype, n, k, g)
        bias = torch.randn(n, generator=g).half()
        for m in ms:
            x = torch.randn(m, k, generator=g).half()
            want = x.double() @ ref.double().t() + bias.double()
            xd = x.cuda()
            if m <= 8:
                out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.float16)
                got = ops.gemv(xd, lay, bias.cuda(), out=out)
            else:
                got = ops.linear(xd, lay, bias.cuda())
            assert torch.isfinite(got).all(), (qtype, n, k, m)
            assert rel_err(got, want) < 2e-3, (qtype, n, k, m, rel_err(got, want))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_K", "Q6_K", "Q8_0"])
def test_gemv_strided_x_and_large_n(qtype, seed):
    """Rows of x with a leading dimension > K, and N large enough for 1..8-warp blocks to be picked."""
    g = torch.Generator().manual_seed(seed)
    raw, lay, ref = _weights(qtype, 9605, 512, g)
    wide = torch.randn(5, 512 + 64, generator=g).half()
    x = wide.cuda()[:, 32:32 + 512]
    got = ops.linear(x, lay)
    assert rel_err(got, wide[:, 32:32 + 512].double() @ ref.double().t()) < 2e-3


def test_gemv_kernels_do_not_spill():
    """What the driver reports for the loaded GEMV kernels: no local memory (register spills)."""
    for qtype in TYPES:
        lay = G.to_layout(G.random_blocks(qtype, 16, 256).cuda(), qtype)
        for key, kernel in ops.prepare(lay).items():
            assert kernel.attributes()["local_bytes"] == 0, (qtype, key, kernel.attributes())


def test_gemm_small_workspace(monkeypatch, seed):
    g = torch.Generator().manual_seed(seed)
    raw, lay, ref = _weights("Q4_K", 100, 512, g)
    monkeypatch.setenv("JITKERN_WORKSPACE_MB", "0")      # forces 64-row strips
    x = torch.randn(12, 512, generator=g).half()
    assert rel_err(ops.gemm(x.cuda(), lay), x.double() @ ref.double().t()) < 2e-3


def test_module_and_graph_capture(seed):
    from jitkern.nn_gguf import GGUFLinear

    g = torch.Generator().manual_seed(seed)
    raw = G.random_blocks("Q6_K", 64, 512, generator=g)
    ref = G.dequantize(raw, "q6_k").double()
    layer = GGUFLinear.from_raw(raw, "q6_k").cuda()
    x = torch.randn(2, 512, generator=g).half().cuda()
    layer(x)                                   # warm up outside the capture
    graph = torch.cuda.graph if hasattr(torch.cuda, "graph") else None
    gr = torch.cuda.CUDAGraph()
    with graph(gr):
        y = layer(x)
    for _ in range(2):
        new = torch.randn(2, 512, generator=g).half()
        x.copy_(new.cuda())
        y.fill_(float("nan"))
        gr.replay()
        torch.cuda.synchronize()
        assert rel_err(y, new.double() @ ref.t()) < 2e-3
    yb = layer(x.bfloat16())
    assert yb.dtype == torch.bfloat16


def test_bad_device_before_launch():
    from jitkern.nn_gguf import GGUFLinear

    layer = GGUFLinear.from_raw(G.random_blocks("Q4_0", 8, 64), "q4_0").cuda()
    with pytest.raises(ValueError, match="x"):
        layer(torch.zeros(1, 64, dtype=torch.float16))          # CPU x, GPU weights
