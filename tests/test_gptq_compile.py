"""gfx906 code objects of the GPTQ/AWQ kernels, compiled by real hiprtc (CI, no GPU)."""
from __future__ import annotations

import pytest

from conftest import requires_hiprtc
from jitkern import cache
from jitkern.inspect import amd_kernel_report, instruction_counts
from jitkern.ops.gptq import kernel_specs

pytestmark = requires_hiprtc


def report(spec):
    binary = cache.get(spec).binary
    return amd_kernel_report(binary), instruction_counts(binary, "gfx906")


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("sym", [True, False])
def test_gemv_uses_dot2_dwordx4_no_scratch(bits, sym):
    for spec in kernel_specs(bits, 128, sym, False, "gfx906"):
        r, counts = report(spec)
        assert r["scratch_bytes"] == 0 and r["spills"] == 0, spec.uri
        assert counts["global_load_dwordx4"] > 0, spec.uri
        if spec.family == "gptq_gemv":
            assert counts["v_dot2_f32_f16"] > 0, spec.uri
            assert r["vgprs"] <= 64 and r["waves_per_simd"] >= 4, (spec.uri, r)   # 4 waves per SIMD


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("act_order", [False, True])
def test_other_variants_compile_without_scratch(bits, act_order):
    for spec in kernel_specs(bits, 64, False, act_order, "gfx906", max_m=8)[::3]:
        r, _ = report(spec)
        assert r["scratch_bytes"] == 0 and r["vgprs"] <= 64, (spec.uri, r)
