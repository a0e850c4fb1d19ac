"""dense_gemv compiles for gfx906 (real hiprtc) into what it was designed to be, and for sm_90 (NVRTC)."""
from __future__ import annotations

import pytest

from jitkern import cache
from jitkern.spec import KernelSpec
from tests.conftest import requires_hiprtc


@requires_hiprtc
@pytest.mark.parametrize("m", [1, 2, 4, 8, 16])
def test_gfx906_dot2_wide_loads_no_scratch(fresh_cache, m):
    from jitkern.inspect import amd_kernel_report, instruction_counts

    entry = cache.get(KernelSpec("dense_gemv", "f16", m=m, arch="gfx906"))
    report = amd_kernel_report(entry.binary)
    assert report["scratch_bytes"] == 0 and report["spills"] == 0, report
    assert report["vgprs"] <= 64, report                  # 4 waves per SIMD
    counts = instruction_counts(entry.binary, "gfx906")
    assert counts["v_dot2_f32_f16"] >= 4 * m, counts
    assert counts["global_load_dwordx4"] > 0, counts
    assert counts["scratch_"] == 0 and counts["global_atomic"] == 0, counts


def test_specs_and_names():
    from jitkern.ops.dense import kernel_specs

    specs = kernel_specs("gfx906")
    assert [s.m for s in specs] == list(range(1, 17))
    assert specs[3].uri == "dense_gemv_m4_f16_gfx906"
    assert [s.m for s in kernel_specs("sm_90", max_m=4)] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="m=17"):
        KernelSpec("dense_gemv", "f16", m=17, arch="gfx906")
    with pytest.raises(ValueError, match="act"):
        KernelSpec("dense_gemv", "f16", m=1, act="bf16", arch="gfx906")


def _nvrtc_available() -> bool:
    try:
        from jitkern.compiler import nvrtc

        nvrtc.fingerprint()
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _nvrtc_available(), reason="NVRTC not installed")
@pytest.mark.parametrize("arch,m", [("sm_90", 1), ("sm_90", 8), ("sm_90", 9), ("sm_90", 16), ("sm_75", 4)])
def test_nvrtc_compiles(fresh_cache, arch, m):
    from jitkern.render import render

    spec = KernelSpec("dense_gemv", "f16", m=m, arch=arch)
    assert cache.get(spec).binary
    assert ("mma.sync" in render(spec)) == (arch == "sm_90")   # tensor cores on sm_80+, jk_dot2 below
