"""The Hopper wgmma GEMM over the GGUF layout (templates/gguf_gemm.hip.j2) on an H100, every block
type against a float64 product of gguf-dequantized weights (run with `pytest -m gpu`; other GPUs
skip: the kernel is sm_90a code).  Error budget as the tensor-core GEMV's (jitkern/ops/gguf.py): a, c
and each weight rounded to fp16 once, fp32 accumulation, fp16 output: a few 1e-4, inside 2e-3."""
from __future__ import annotations

import pytest
import torch

from conftest import rel_err
from jitkern.families import GGUF_GEMM_TOKENS
from jitkern.formats import gguf as G
from jitkern.runtime import get_kernel
from jitkern.spec import KernelSpec
from jitkern.ops import gguf as ops
from jitkern.ops import gguf_gemm

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("hopper")]
gguf = pytest.importorskip("gguf")
DEV = "cuda"


def _gemm_kernels(layout):
    """The GEMM and its packer, both token tiles, for any type (also those the op leaves to dequantize
    + cuBLAS)."""
    found = {}
    for t in GGUF_GEMM_TOKENS:
        found[("gemm", t)] = get_kernel(KernelSpec("gguf_gemm", layout.qtype.lower(), m=t, arch="sm_90"), DEV)
        found[("pack", t)] = get_kernel(KernelSpec("x_pack", "f16", m=t, arch="sm_90"), DEV)
    return found


def _weights(qtype, n, k, g):
    raw = G.random_blocks(qtype, n, k, generator=g)
    ref = torch.from_numpy(gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType[qtype])).double()
    return G.to_layout(raw.to(DEV), qtype), ref


@pytest.mark.parametrize("tokens", GGUF_GEMM_TOKENS)
@pytest.mark.parametrize("qtype", list(G.TYPES))
def test_wgmma_gemm_matches_float64(qtype, tokens, seed):
    """N = 300: a last block of 44 rows (the rest read as zeros); M = 300: a last token tile of 44 or 172;
    K = 2560 (3072, 4096 where the GEMM needs it: gguf_gemm.takes_k): ten or more stages, so the
    header ring wraps (chunks of 1, 4 or 8 stages; Q2_K, Q3_K and Q6_K's last one runs past the row)."""
    g = torch.Generator().manual_seed(seed)
    n, m = 300, 300
    k = next(k for k in (2560, 3072, 4096) if gguf_gemm.takes_k(qtype, k))
    layout, ref = _weights(qtype, n, k, g)
    x = torch.randn(m, k, generator=g).half()
    bias = torch.randn(n, generator=g).half()
    out = torch.full((m, n), float("nan"), dtype=torch.float16, device=DEV)
    gguf_gemm.gemm(_gemm_kernels(layout), x.to(DEV), layout, bias.to(DEV), out=out, tokens=tokens)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    err = rel_err(out, x.double() @ ref.t() + bias.double())
    assert err < 2e-3, f"{qtype} {tokens}: {err} seed={seed}"


def test_prefill_takes_the_wgmma_gemm_where_it_fills_the_gpu(seed, monkeypatch):
    """linear() at M = 256 on a layer of 132 * 128 rows runs the wgmma GEMM (and is right); with K not a
    multiple of 256, an odd N or M = 64, it dequantizes and multiplies with cuBLAS instead."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    calls = []
    real = gguf_gemm.gemm
    monkeypatch.setattr(gguf_gemm, "gemm", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    g = torch.Generator().manual_seed(seed)
    for qtype, n, k, m, used in (("Q4_0", sms * 128, 512, 256, 1), ("Q4_0", sms * 128, 288, 256, 0),
                                 ("Q4_0", sms * 128 - 1, 512, 256, 0),
                                 ("Q6_K", sms * 128, 512, 256, 1), ("Q4_K", sms * 128, 512, 64, 0)):
        layout, ref = _weights(qtype, n, k, g)
        calls.clear()
        x = torch.randn(m, k, generator=g).half()
        out = ops.linear(x.to(DEV), layout)
        assert len(calls) == used, (qtype, n, k, m)
        assert rel_err(out, x.double() @ ref.t()) < 2e-3


def test_prefill_gemm_in_a_graph(seed):
    """A layer loaded outside the capture (GGUFLinear prepares it: kernels and the GEMM's k order for
    a K no other test uses), then its M = 256 prefill captured in a CUDA graph: the GEMM runs there,
    and replays equal the eager result for new activations."""
    from jitkern.nn_gguf import GGUFLinear

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    g = torch.Generator().manual_seed(seed)
    n, k, m = sms * 128, 13 * 256, 256
    layer = GGUFLinear.from_raw(G.random_blocks("Q4_0", n, k, generator=g), "q4_0").to(DEV)
    assert (layer.layout.qtype, k, torch.device(DEV, 0)) in gguf_gemm._orders
    x = torch.randn(m, k, generator=g).half().to(DEV)
    gr = torch.cuda.CUDAGraph()
    with torch.cuda.graph(gr):
        y = layer(x)
    for _ in range(2):
        x.copy_(torch.randn(m, k, generator=g).half())
        y.fill_(float("nan"))
        gr.replay()
        assert torch.equal(y, layer(x))

