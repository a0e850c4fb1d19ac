"""The kernels' CUDA-core builds on an NVIDIA card: the same templates without tensor cores, the code
paths closest to gfx906's (the GGUF integer GEMV on Q8_1 activations, the GPTQ GEMV of fp32 dot2s
gathering act-order activations itself, the dense GEMV of dot2s), compiled as compute_75 PTX that the
driver compiles for whatever GPU is present.  On the GPU, `jitkern selftest` runs every family under
JITKERN_ARCH=compute_75 against float64 (fresh random data each run)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import requires_nvrtc
from jitkern import cache
from jitkern.arch import parse
from jitkern.families import get_family
from jitkern.ops import gguf
from jitkern.spec import KernelSpec

PORTABLE = "compute_75"


def test_virtual_nvidia_target_parses_and_picks_the_cuda_core_builds():
    t = parse(PORTABLE)
    assert (t.vendor, t.sm, t.wave, t.short) == ("nvidia", 75, 32, "compute75")
    assert not gguf.uses_mma(PORTABLE) and gguf.uses_mma("compute_80")
    gemv = KernelSpec("gptq_gemv", "gptq", bits=4, group=128, m=4, arch=PORTABLE,
                      options={"sym": False, "act_order": True})
    consts = get_family("gptq_gemv").consts(gemv)
    assert not consts["mma"] and consts["gathers_x"] and not consts.get("pdl")
    assert not get_family("gptq_gemm").supports(PORTABLE)
    with pytest.raises(ValueError, match="compute_75"):
        parse("compute_x")


@pytest.mark.parametrize("arch", ["gfx906", "gfx1030", PORTABLE])
def test_cuda_core_gptq_slots_tile_a_wave(arch):
    """Lanes sharing a weight load (msplit) split the M rows; a slot of 8 * msplit lanes must fit in a
    wave (wave32 RDNA once got 64-lane slots at M > 4).  On compute_75 the selftest's M = 4 and 8 cases
    so run the shared-load reduction gfx906 uses."""
    family = get_family("gptq_gemv")
    for bits in (2, 3, 4, 8):
        for act_order in (False, True):
            for m in range(1, 9):
                spec = KernelSpec("gptq_gemv", "gptq", bits=bits, group=128, m=m, arch=arch,
                                  options={"sym": False, "act_order": act_order})
                c = family.consts(spec)
                assert 8 * c["msplit"] <= spec.wave and c["msplit"] * c["mpl"] >= m, (spec.uri, c)
                assert c["mpl"] <= 2 and c["threads"] % spec.wave == 0, (spec.uri, c)
    spec = KernelSpec("gptq_gemv", "gptq", bits=4, group=128, m=8, arch=arch, options={"sym": True})
    assert family.consts(spec)["msplit"] == 4


@requires_nvrtc
def test_virtual_target_compiles_to_loadable_ptx(fresh_cache):
    entry = cache.get(KernelSpec("gguf_gemv", "q4_k", m=8, arch=PORTABLE))
    text = entry.binary
    assert text.endswith(b"\0"), "the driver reads PTX as a NUL-terminated string"
    assert b".target sm_75" in text and b"dp4a" in text     # the integer path, for the driver to finish
    assert b"mma.sync" not in text
    again = cache.get(KernelSpec("gguf_gemv", "q4_k", m=8, arch=PORTABLE))
    assert again.binary == text


@pytest.mark.gpu
def test_cuda_core_builds_pass_selftest(tmp_path):
    if torch.version.hip:
        pytest.skip("PTX targets are NVIDIA's")
    env = {**os.environ, "JITKERN_ARCH": PORTABLE, "JITKERN_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "jitkern", "selftest", "--no-bench"], env=env,
                         capture_output=True, text=True, timeout=1200)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert f"({PORTABLE})" in report, report                       # the override held
    for case in ("gptq w4 asym act-order m=8", "gptq w8 sym m=1", "dense f16 m=16", "gguf q4_k m=8",
                 "gguf iq4_xs m=1"):
        assert f"PASS  {case}" in report, report
    assert " 0 failed" in report, report
