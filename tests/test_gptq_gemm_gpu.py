"""The Hopper wgmma prefill GEMM (templates/gptq_gemm.hip.j2) and its activation packer on an H100,
vs float64 references (run with `pytest -m gpu`; other GPUs skip: the kernel is sm_90a code)."""
from __future__ import annotations

import pytest
import torch

from conftest import rel_err
from jitkern.families import GEMM_TOKENS
from jitkern.ops import gptq as ops
from jitkern.ops import xpack
from test_gptq_gpu import make

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("hopper")]
DEV = "cuda"


def kernels(layout):
    found = ops.prepare(layout)
    assert all(("gemm", t) in found and ("pack", t) in found for t in GEMM_TOKENS)
    return found


@pytest.mark.parametrize("tokens", GEMM_TOKENS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [32, 128, -1])
@pytest.mark.parametrize("sym,act_order,fmt", [(True, False, "gptq"), (False, False, "gptq_v2"),
                                               (False, True, "gptq"), (True, True, "gptq_v2")])
def test_wgmma_gemm_matches_float64(seed, bits, group, sym, act_order, fmt, tokens):
    """N = 224 / 200: a last block of 3 tiles, a padded last tile (4/8-bit); K = 544: an odd number of
    32-row units, so the last 64-row step is half past K; M = 300: a second (and third), partial token
    tile."""
    n = 200 if bits in (4, 8) else 224
    layout, ref_w = make(seed, bits, group, sym, act_order, fmt, n=n, k=544)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(300, ref_w.shape[1], generator=g).half()
    bias = torch.randn(n, generator=g).half()
    ref = x.double() @ ref_w.T + bias.double()
    out = torch.full((300, n), float("nan"), dtype=torch.float16, device=DEV)
    ops._wgmma_gemm(kernels(layout), x.to(DEV), layout, bias.to(DEV), out=out, tokens=tokens)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    err = rel_err(out, ref)
    assert err < 1e-3, f"bits={bits} group={group} sym={sym} act_order={act_order} err={err} seed={seed}"


@pytest.mark.parametrize("tokens", GEMM_TOKENS)
@pytest.mark.parametrize("bits,group,sym,act_order,fmt", [(4, 128, False, False, "gptq_v2"), (3, 32, True, True, "gptq"),
                                                          (8, -1, False, True, "gptq")])
def test_wgmma_gemm_split_k_matches_float64(seed, bits, group, sym, act_order, fmt, tokens):
    """K split over a cluster of blocks that reduce through distributed shared memory: K = 544 is 9
    steps, so the two splits run 4 and 5 of them (the last one half past K)."""
    n = 200 if bits in (4, 8) else 224
    layout, ref_w = make(seed, bits, group, sym, act_order, fmt, n=n, k=544)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(300, ref_w.shape[1], generator=g).half()
    bias = torch.randn(n, generator=g).half()
    out = torch.full((300, n), float("nan"), dtype=torch.float16, device=DEV)
    ops._wgmma_gemm(kernels(layout), x.to(DEV), layout, bias.to(DEV), out=out, splits=2, tokens=tokens)
    torch.cuda.synchronize()
    err = rel_err(out, x.double() @ ref_w.T + bias.double())
    assert err < 1e-3, f"bits={bits} group={group} err={err} seed={seed}"


@pytest.mark.parametrize("tokens", GEMM_TOKENS)
def test_x_pack_tiles_are_exact(seed, tokens):
    """Tile (i, s) row r holds token tokens * i + r's activations at layout rows 64 s + mma order, its
    16-byte chunk c at c ^ (r % 8); tokens past M and rows past K are zeros."""
    layout, _ = make(seed, 4, 128, False, True, "gptq", n=64, k=544)
    found = kernels(layout)
    m, k = 300, layout.k
    x = torch.randn(m, layout.k_in + 8, generator=torch.Generator().manual_seed(seed)).half().to(DEV)[:, 8:]
    perm = ops.mma_perm(layout)
    xp = xpack.pack(found[("pack", tokens)], x, perm, tokens).cpu()
    steps, tiles = -(-k // 64), -(-m // tokens)
    want = torch.zeros(tiles * tokens, steps * 64, dtype=torch.float16)
    want[:m, :k] = x.cpu()[:, perm.cpu().long()]
    want = want.view(tiles, tokens, steps, 8, 8).permute(0, 2, 1, 3, 4).clone()     # [tile, step, row, chunk, 8]
    r = torch.arange(tokens)[:, None]
    swizzled = torch.empty_like(want)
    swizzled[:, :, r, torch.arange(8)[None, :] ^ (r % 8)] = want
    assert torch.equal(xp.view_as(swizzled), swizzled)


def test_prefill_takes_the_wgmma_gemm_where_it_fills_the_gpu(seed, monkeypatch):
    """A layer of 132 * 128 columns at M = 256 fills one wave with 256-token tiles: gemm() runs them
    (and is right); at M = 64 it does not use the wgmma GEMM.  One of 16 * 128 columns at M = 1024 has
    64 blocks of 256 tokens: it takes 128 of 128."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    calls = []
    real = ops._wgmma_gemm
    monkeypatch.setattr(ops, "_wgmma_gemm", lambda *a, **kw: calls.append(kw["tokens"]) or real(*a, **kw))
    for n, k, m, used in ((sms * 128, 256, 256, [256]), (sms * 128, 256, 64, []), (16 * 128, 2048, 1024, [128])):
        layout, ref_w = make(seed, 4, 128, True, False, "gptq", n=n, k=k)
        kernels(layout)
        calls.clear()
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + m)).half()
        out = ops.linear(x.to(DEV), layout)
        assert calls == used, (n, k, m)
        assert rel_err(out, x.double() @ ref_w.T) < 1e-3
