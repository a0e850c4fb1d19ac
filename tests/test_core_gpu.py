"""The JIT core end to end on a GPU: the first family (int dequant) vs its torch reference."""
from __future__ import annotations

import pytest
import torch

from jitkern.formats.intpack import dequantize_layout, pack_layout
from jitkern.ops import gptq as ops

pytestmark = pytest.mark.gpu


def random_layout(seed, bits, group, n=136, k=384):
    g = torch.Generator().manual_seed(seed)
    groups = k // group if group > 0 else 1
    q = torch.randint(0, 2 ** bits, (k, n), generator=g)
    scales = (torch.rand(groups, n, generator=g) * 0.02 + 0.001).half()
    zeros = torch.randint(0, 2 ** bits, (groups, n), generator=g)
    return pack_layout(q, scales, zeros, bits, group if group > 0 else k)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [32, 128, -1])
def test_dequant_matches_reference_exactly(fresh_cache, seed, bits, group):
    layout = random_layout(seed, bits, group).to("cuda")
    out = torch.full((layout.k, layout.n), float("nan"), dtype=torch.float16, device="cuda")
    ops.dequantize(layout, out=out)
    ref = dequantize_layout(layout.to("cpu"), torch.float32).half().T.contiguous()
    assert torch.equal(out.cpu(), ref), f"seed={seed}"


def test_dequant_under_graph_capture(fresh_cache, seed):
    layout = random_layout(seed, 4, 128).to("cuda")
    out = torch.empty(layout.k, layout.n, dtype=torch.float16, device="cuda")
    ops.dequantize(layout, out=out)                      # compile + load outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.dequantize(layout, out=out)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    ref = dequantize_layout(layout.to("cpu"), torch.float32).half().T.contiguous()
    assert torch.equal(out.cpu(), ref)
