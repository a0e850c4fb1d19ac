"""GGUF kernels on a GPU: bit-exact dequantization, GEMV for M = 1..8 (and a GEMM M) against a
float64 product of gguf-dequantized weights, graph capture.  Fresh random data each run."""
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


@pytest.mark.parametrize("qtype", TYPES)
def test_gemv_and_gemm(qtype, seed):
    g = torch.Generator().manual_seed(seed)
    n, k = 300, 4 * 256                  # N not a multiple of the 8 rows a block covers
    raw, lay, ref = _weights(qtype, n, k, g)
    bias = torch.randn(n, generator=g).half()
    for m in list(range(1, 9)) + [19]:
        x = torch.randn(m, k, generator=g).half()
        want = x.double() @ ref.double().t() + bias.double()
        xd = x.cuda()
        if m <= 8:
            out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.float16)
            got = ops.gemv(xd, lay, bias.cuda(), out=out)
        else:
            got = ops.linear(xd, lay, bias.cuda())
        assert torch.isfinite(got).all(), (qtype, m)
        assert rel_err(got, want) < 2e-3, (qtype, m, rel_err(got, want))


def test_gemm_small_workspace(monkeypatch, seed):
    g = torch.Generator().manual_seed(seed)
    raw, lay, ref = _weights("Q4_K", 100, 512, g)
    monkeypatch.setenv("JITKERN_WORKSPACE_MB", "0")      # forces 8-row strips
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
