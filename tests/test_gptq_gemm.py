"""The wgmma prefill GEMM's host side, on the CPU: its k order, its targets and its kernel list."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import requires_nvrtc
from jitkern.families import GEMM_TOKENS
from jitkern.ops import gptq
from jitkern.render import render
from jitkern.spec import KernelSpec


def test_mma_order_follows_the_octet_pairs():
    """Lane t of an MMA holds octet t (rows 8t..8t+7) of a unit; pair p of it feeds k-slots
    {2t, 2t+1} of k16 step p // 2 when p is even, {2t+8, 2t+9} when odd."""
    expected = [None] * 32
    for t in range(4):
        for p in range(4):
            base = 16 * (p // 2) + 2 * t + 8 * (p % 2)
            expected[base], expected[base + 1] = 8 * t + 2 * p, 8 * t + 2 * p + 1
    assert gptq._UNIT_ORDER.tolist() == expected


def test_wgmma_gemm_is_built_for_sm_90_only():
    for arch, built in (("sm_90", True), ("sm_80", False), ("sm_100", False), ("gfx906", False)):
        families = {s.family for s in gptq.kernel_specs(4, 128, False, False, arch)}
        assert {"gptq_gemm", "x_pack"} <= families if built else not families & {"gptq_gemm", "x_pack"}
    with pytest.raises(ValueError, match="arch='gfx906'.*sm_90"):
        KernelSpec("gptq_gemm", "gptq", bits=4, group=128, m=GEMM_TOKENS[0], arch="gfx906")


def test_wgmma_source_uses_the_tensor_memory_path():
    src = render(KernelSpec("gptq_gemm", "gptq", bits=4, group=128, m=GEMM_TOKENS[0], arch="sm_90"))
    for needle in ("wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16", "cp.async.bulk.shared::cluster",
                   "mbarrier.try_wait.parity", "wgmma.wait_group.sync.aligned 1"):
        assert needle in src, needle


@requires_nvrtc
def test_wgmma_gemm_compiles_for_sm_90a():
    """wgmma exists on sm_90a only: the family's arch suffix reaches NVRTC (where it is installed)."""
    from jitkern import cache

    for bits in (3, 4, 8):
        entry = cache.get(KernelSpec("gptq_gemm", "gptq", bits=bits, group=128, m=GEMM_TOKENS[0], arch="sm_90",
                                     options={"act_order": True}))
        assert "--gpu-architecture=sm_90a" in entry.options and len(entry.binary) > 0


@requires_nvrtc
def test_wgmma_mmas_of_consecutive_steps_overlap():
    """ptxas serializes every wgmma (each waits for the one before: 0.57 of fp16's speed instead of 0.67
    on an H100) when the accumulators are touched between them or two steps' A registers do not fit;
    it says so in its log (C7510-C7520, "Potential Performance Loss").  Every variant must compile
    without that note and without spills."""
    from jitkern.compiler import nvrtc

    for bits, group, sym, act_order in ((2, 32, False, False), (3, 128, True, True), (4, 128, False, False),
                                        (4, -1, True, False), (8, 64, False, True)):
        spec = KernelSpec("gptq_gemm", "gptq", bits=bits, group=group, m=GEMM_TOKENS[0], arch="sm_90",
                          options={"sym": sym, "act_order": act_order})
        log: list = []
        nvrtc.compile(render(spec), "sm_90a", nvrtc.default_options("sm_90a") + ["--ptxas-options=-v"], log=log)
        assert "Used" in log[0], log[0]                  # ptxas did report
        assert "Performance Loss" not in log[0] and " 0 bytes spill stores" in log[0], (spec, log[0])


class _Layout:
    def __init__(self, n, k):
        self.n_pad, self.k = -(-n // 32) * 32, k


@pytest.mark.parametrize("shape,plan", [
    ((6144, 4096), 256),             # Llama-3-8B qkv: 96 blocks of 256 tokens, one wave
    ((4096, 4096), 128),             # 8B o: 64 blocks of 256 tokens; 128 of 128 fill the wave
    ((28672, 4096), 256),            # 8B gate_up
    ((4096, 14336), 128),            # 8B down
    ((10240, 8192), 128),            # 70B qkv: 160 blocks of 256 tokens leave the second wave 21% full
    ((8192, 8192), 256), ((57344, 8192), 256), ((8192, 28672), 256),
    ((1024, 4096), None),            # 16 blocks of 256 tokens, 32 of 128: dequantize + cuBLAS
])
def test_wgmma_plan_on_an_h100(monkeypatch, shape, plan):
    """The op's token tile at M = 512 on 132 SMs, the best of each layer as measured
    (jitkern/ops/gptq.py, _wgmma_plan); below a 256-token tile, dequantize + cuBLAS."""
    monkeypatch.setattr(gptq.splitk, "multiprocessors", lambda device: 132)
    kernels = {("gemm", t): SimpleNamespace(consts={"tokens": t, "columns": 128}) for t in GEMM_TOKENS}
    assert gptq._wgmma_plan(kernels, _Layout(*shape), 512, None) == plan
    assert gptq._wgmma_plan(kernels, _Layout(*shape), 255, None) is None


@requires_nvrtc
@pytest.mark.parametrize("bits,group,sym,act_order,per_step", [
    (4, 128, True, False, 2),     # x, and the scales the step's two units share
    (4, -1, False, False, 3),     # x, scales, zero points
    (3, 32, True, False, 3),      # x, a scale copy per unit (two groups)
    (8, 128, False, True, 5),     # x, scales and zero points per unit (act-order: any groups)
])
def test_wgmma_producer_issues_few_copies_a_step(bits, group, sym, act_order, per_step):
    """The number of copies a step bounds the GEMM (H100, int4, M = 512: seven a step instead of
    three took 13-20% longer), so a step's weights are one tensor copy and the scales and zero points
    one bulk copy each per distinct group.  However the compiler unrolls the producer's loop, every
    step has exactly one tensor copy, so the bulk copies per tensor copy are the bulk copies a step."""
    from jitkern.compiler import nvrtc

    spec = KernelSpec("gptq_gemm", "gptq", bits=bits, group=group, m=GEMM_TOKENS[0], arch="sm_90",
                      options={"sym": sym, "act_order": act_order})
    ptx = nvrtc.ptx(render(spec), "compute_90a")
    tensor = ptx.count("cp.async.bulk.tensor.4d.shared::cluster.global")
    bulk = ptx.count("cp.async.bulk.shared::cluster.global")
    assert tensor > 0 and bulk == per_step * tensor, (tensor, bulk)


def test_weight_map_refuses_words_a_tensor_map_cannot_describe():
    """The TMA map needs contiguous, 16-byte aligned words: anything else is a ValueError naming the
    tensor, before the driver is asked."""
    import torch

    words = torch.zeros(4 * 8 * 64 + 4, dtype=torch.int32)
    strided = words[: 4 * 8 * 64].view(4, 8, 64)[:, :, :32]
    misaligned = words[1: 1 + 4 * 8 * 32].view(4, 8, 32)          # contiguous, 4 bytes past alignment
    for q in (strided, misaligned):
        with pytest.raises(ValueError, match="layout.qweight"):
            gptq._weight_map(SimpleNamespace(qweight=q, bits=4), {"columns": 128})
