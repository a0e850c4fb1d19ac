"""gfx906 code checked where no AMD GPU runs: LLVM folds a computation on constants into its result,
so a kernel that compares a folded computation with known answers compiles to a store of its
mismatch count, which the code object shows.

* jk_perm is CUDA's __byte_perm on NVIDIA and v_perm_b32 on AMD, whose operand order and selector
  differ (a selector byte per result byte, not a nibble).
* The GGUF decode of every type, as the gfx906 dequantizer runs it (gguf_types.h.j2 for the AMD
  target, fp32 y = a * v + c), against the `gguf` package on random blocks: the host (g++) build
  checks the same source with NVIDIA's semantics, this one with gfx906's.  Either check failing on
  gfx906 alone means a vendor mapping of the prelude is wrong."""
from __future__ import annotations

import random
import re

import pytest
import torch

from conftest import requires_hiprtc
from jitkern import cache
from jitkern.formats import gguf as G
from jitkern.inspect import disassemble, objdump
from jitkern.render import context, environment
from jitkern.spec import KernelSpec

ARCH = "gfx906:sramecc+:xnack-"
pytestmark = [requires_hiprtc, pytest.mark.skipif(objdump() is None, reason="llvm-objdump not installed")]


def _compile(spec: KernelSpec, src: str) -> str:
    from jitkern.compiler import hiprtc

    _, options = cache.build_inputs(spec)
    return disassemble(hiprtc.compile(src, ARCH, options), "gfx906")


def _array(name: str, ctype: str, values) -> str:
    body = ", ".join(str(int(v)) for v in values)
    return f"static __device__ const {ctype} {name}[] __attribute__((aligned(16))) = {{{body}}};\n"


def byte_perm(x: int, y: int, sel: int) -> int:
    """CUDA's __byte_perm for selector nibbles 0..7: byte i of the result is byte sel[i] of (y:x)."""
    b = (y << 32 | x).to_bytes(8, "little")
    return int.from_bytes(bytes(b[(sel >> 4 * i) & 7] for i in range(4)), "little")


def test_jk_perm_on_gfx906_is_cudas_byte_perm():
    rng = random.Random()
    # the selectors the templates use, and random ones; words whose results are literals (not
    # gfx906's inline constants 0..64), distinct so that each can be found
    sels = [0x7632, 0x5410, 0x4240, 0x4341] + [rng.getrandbits(16) & 0x7777 for _ in range(4)]
    x, y = rng.getrandbits(32) | 0x80808080, rng.getrandbits(32) | 0x80808080
    spec = KernelSpec("gguf_gemv", "q4_k", m=1, arch=ARCH)
    prelude = environment().get_template("prelude.h.j2").render(**context(spec))
    body = "".join(f"  out[{i}] = jk_perm({x:#x}u, {y:#x}u, {s:#x}u);\n" for i, s in enumerate(sels))
    text = _compile(spec, prelude + 'extern "C" __global__ void jk_perm_probe(unsigned* out) {\n' + body + "}\n")
    assert "v_perm_b32" not in text, "the constant jk_perm calls were not folded: nothing to check"
    literals = {int(v, 16) for v in re.findall(r"v_mov_b32_e32 v\d+, 0x([0-9a-f]+)", text)}
    for s in sels:
        want = byte_perm(x, y, s)
        assert want in literals, (hex(s), hex(want), sorted(map(hex, literals)))


PROBE = r"""
extern "C" __global__ void jk_decode_probe(int* bad) {
  signed char lut[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) lut[i] = jk_lut_entry(i);
  int n = 0;
#pragma unroll
  for (int b = 0; b < NB; ++b)
#pragma unroll
    for (int t = 0; t < JK_SLICES; ++t)
#pragma unroll
      for (int g = 0; g < JK_GROUPS; ++g) {
        jk_slice s;
        jk_load_slice(s, probe_qs, (unsigned)(b * JK_QB), probe_hdr, 0u, NB, b, t);
        unsigned w[4];
        float a, c;
        const int pos = b * JK_BLOCK + jk_group(s, g, t, w, a, c, lut);
#pragma unroll
        for (int e = 0; e < 16; ++e) {
          const float v = (float)(signed char)((w[e >> 2] >> (8 * (e & 3))) & 0xFFu);
          const float y = JK_HAS_MIN ? __fadd_rn(__fmul_rn(a, v), c) : __fmul_rn(a, v);
          n += __float_as_uint(y) != probe_ref[pos + e];
        }
      }
  bad[0] = n;
}
"""


@pytest.mark.parametrize("qtype", list(G.TYPES))
def test_gguf_decode_on_gfx906_equals_gguf_package(qtype, seed):
    gguf = pytest.importorskip("gguf")
    qt = G.gguf_type(qtype)
    nb = 2                                          # two blocks: the header planes' second entries too
    raw = G.random_blocks(qtype, 1, nb * qt.block, generator=torch.Generator().manual_seed(seed))
    lay = G.to_layout(raw, qtype)
    ref = torch.from_numpy(gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType[qtype])).float()
    spec = KernelSpec("gguf_dequant", qtype.lower(), act="f32", arch=ARCH)
    ctx = context(spec)
    env = environment()
    src = (env.get_template("prelude.h.j2").render(**ctx) + env.get_template("gguf_types.h.j2").render(**ctx)
           + f"#define NB {nb}\n#define JK_BLOCK {qt.block}\n#define JK_QB {qt.quant_bytes}\n"
           + _array("probe_qs", "unsigned char", lay.qs.flatten().tolist())
           + _array("probe_hdr", "unsigned char", lay.hdr.flatten().tolist())
           + _array("probe_ref", "unsigned", [v & 0xFFFFFFFF for v in ref.flatten().view(torch.int32).tolist()])
           + PROBE)
    text = _compile(spec, src)
    code = [ln.split("//")[0].strip() for ln in text.splitlines() if ln.startswith(("\t", "  "))]
    assert not [ln for ln in code if re.match(r"(global|flat|buffer)_load", ln)], \
        f"{qtype}: the decode was not folded (loads remain): nothing to check"
    stores = [ln for ln in code if ln.startswith("global_store_dword ")]
    assert len(stores) == 1, (qtype, stores)
    reg = stores[0].split()[2].rstrip(",")
    movs = [ln for ln in code if re.match(rf"v_mov_b32_e32 {reg},", ln)]
    assert movs, (qtype, code)
    mismatches = int(movs[-1].split(",")[1].strip(), 0)
    assert mismatches == 0, f"{qtype} seed={seed}: gfx906's decode differs from gguf's in {mismatches} of {ref.numel()} values"
