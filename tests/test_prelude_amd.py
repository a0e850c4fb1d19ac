"""The prelude's AMD mappings compute what the NVIDIA ones do, checked where no AMD GPU runs: LLVM
folds a gfx906 intrinsic applied to constants into the constant the instruction would produce, so
the code object holds the answer.

jk_perm is CUDA's __byte_perm on NVIDIA and v_perm_b32 on AMD, whose operand order and selector
differ (a selector byte per result byte, not a nibble); getting either wrong scrambles the K-quants'
scales on gfx906 only, where the CI cannot execute."""
from __future__ import annotations

import random
import re

import pytest

from conftest import requires_hiprtc
from jitkern import cache
from jitkern.inspect import disassemble, objdump
from jitkern.render import context, environment
from jitkern.spec import KernelSpec

ARCH = "gfx906:sramecc+:xnack-"


def byte_perm(x: int, y: int, sel: int) -> int:
    """CUDA's __byte_perm for selector nibbles 0..7: byte i of the result is byte sel[i] of (y:x)."""
    b = (y << 32 | x).to_bytes(8, "little")
    return int.from_bytes(bytes(b[(sel >> 4 * i) & 7] for i in range(4)), "little")


@requires_hiprtc
@pytest.mark.skipif(objdump() is None, reason="llvm-objdump not installed")
def test_jk_perm_on_gfx906_is_cudas_byte_perm():
    from jitkern.compiler import hiprtc

    rng = random.Random()
    # the selectors the templates use, and random ones; words whose results are literals (not
    # gfx906's inline constants 0..64), distinct so that each can be found
    sels = [0x7632, 0x5410, 0x4240, 0x4341] + [rng.getrandbits(16) & 0x7777 for _ in range(4)]
    x, y = rng.getrandbits(32) | 0x80808080, rng.getrandbits(32) | 0x80808080
    spec = KernelSpec("gguf_gemv", "q4_k", m=1, arch=ARCH)
    prelude = environment().get_template("prelude.h.j2").render(**context(spec))
    body = "".join(f"  out[{i}] = jk_perm({x:#x}u, {y:#x}u, {s:#x}u);\n" for i, s in enumerate(sels))
    src = prelude + 'extern "C" __global__ void jk_perm_probe(unsigned* out) {\n' + body + "}\n"
    _, options = cache.build_inputs(spec)
    text = disassemble(hiprtc.compile(src, ARCH, options), "gfx906")
    assert "v_perm_b32" not in text, "the constant jk_perm calls were not folded: nothing to check"
    literals = {int(v, 16) for v in re.findall(r"v_mov_b32_e32 v\d+, 0x([0-9a-f]+)", text)}
    for s in sels:
        want = byte_perm(x, y, s)
        assert want in literals, (hex(s), hex(want), sorted(map(hex, literals)))
