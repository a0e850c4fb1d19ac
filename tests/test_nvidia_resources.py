"""The NVIDIA GEMV builds keep their data in registers (ptxas -v, on the CPU).

A spill turns a streaming kernel's register pipeline into local-memory traffic, which no correctness
test notices and the benchmark only shows as a slowdown; the step sizes in jitkern/families.py were
chosen at the edge of 128 registers (`unroll`, `tiles`, `pipelined`).  sm_90 and sm_80 take the
tensor-core builds (sm_90 with dependent launch): no spills, no stack.  sm_75 takes the CUDA-core
builds, where ptxas caps a 512-thread GPTQ block at 64 registers (two blocks fill a Turing SM's
1024 threads) and the GGUF integer GEMV indexes its slice with a rolled group loop (gfx906's
register budget): there a few spilled bytes are allowed, not the 196 that one lane holding all 8
rows cost."""
from __future__ import annotations

import pytest

from conftest import requires_nvrtc
from jitkern.formats.gguf_quants import TYPES
from jitkern.inspect import nvidia_resources
from jitkern.spec import KernelSpec

GPTQ_VARIANTS = [(True, False, 128), (False, True, 128), (False, False, 32)]    # sym, act_order, group


def _gptq_specs():
    for arch in ("sm_90", "sm_80", "sm_75"):
        for bits in (2, 3, 4, 8):
            for sym, act, group in GPTQ_VARIANTS:
                for m in (1, 8):
                    yield KernelSpec("gptq_gemv", "gptq", bits=bits, group=group, m=m, arch=arch,
                                     options={"sym": sym, "act_order": act})


def _gguf_specs():
    for fmt in sorted(TYPES):
        for arch, ms in (("sm_90", (1, 3, 8)), ("sm_80", (8,)), ("sm_75", (1, 8))):
            for m in ms:
                yield KernelSpec("gguf_gemv", fmt.lower(), m=m, arch=arch)


def _dense_specs():
    for arch, ms in (("sm_90", (1, 8, 9, 16)), ("sm_75", (1, 8))):
        for m in ms:
            yield KernelSpec("dense_gemv", "f16", m=m, arch=arch)


SPECS = [*_gptq_specs(), *_gguf_specs(), *_dense_specs()]


@requires_nvrtc
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.uri)
def test_gemv_has_no_spills(spec):
    r = nvidia_resources(spec)
    allowed = 16 if spec.target.sm < 80 else 0
    assert r["spill_bytes"] <= allowed and r["stack_bytes"] <= allowed, (spec.uri, r)
    assert 16 <= r["registers"] <= 255, (spec.uri, r)
