"""The wgmma prefill GEMM's host side, on the CPU: its k order, its targets and its kernel list."""
from __future__ import annotations

import pytest

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


def test_wgmma_gemm_compiles_for_sm_90a():
    """wgmma exists on sm_90a only: the family's arch suffix reaches NVRTC (where it is installed)."""
    from jitkern import cache
    from jitkern.compiler import nvrtc

    try:
        nvrtc.fingerprint(), nvrtc.include_dir()
    except Exception as e:                           # BackendMissing, or no libnvrtc
        pytest.skip(f"NVRTC not usable here: {e}")
    for bits in (3, 4, 8):
        entry = cache.get(KernelSpec("gptq_gemm", "gptq", bits=bits, group=128, m=GEMM_TOKENS[0], arch="sm_90",
                                     options={"act_order": True}))
        assert "--gpu-architecture=sm_90a" in entry.options and len(entry.binary) > 0
