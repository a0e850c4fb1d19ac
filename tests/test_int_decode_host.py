"""The int4 and int8 decodes of templates/int_unit.h.j2, built on the host (g++) and checked bit for
bit on random words and every zero point against the (q - z) pairs the layout holds: for int4 the
plain shift-mask-OR-subtract jk_octet_qz, the byte-permute jk_octet_qz4 and jk_octet_qz_fma (OR under
0x6400, or 4 bits up and one fp16 FMA by 1/16), which every tensor-core and CUDA-core int4 GEMV
uses; for int8 the byte-permute jk_octet_qz."""
from __future__ import annotations

import ctypes
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
import torch

import gguf_host
from jitkern.render import environment

HOST_EXTRA = r"""
JK_DEVICE unsigned jk_bits_half2(__half2 h) { unsigned b; memcpy(&b, &h, 4); return b; }
template <unsigned MASK> JK_DEVICE unsigned jk_and_or(unsigned a, unsigned b) { return (a & MASK) | b; }
// One rounding, as the GPU's fp16 FMA: the double result of fp16 operands is exact here.
JK_DEVICE __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
  return {(_Float16)((double)a.x * (double)b.x + (double)c.x), (_Float16)((double)a.y * (double)b.y + (double)c.y)};
}
"""

DRIVER = {4: r"""
// out[3 n + v][c][k]: pair k of column c of word row n by decode v (0: jk_octet_qz, 1: jk_octet_qz4,
// 2: jk_octet_qz_fma), column c having zero point zeros[4 n + c].
extern "C" void decode(const unsigned* words, const unsigned* zeros, unsigned* out, int n) {
  for (int r = 0; r < n; ++r) {
    const jk_u32x4 ow[1] = {{words[4 * r], words[4 * r + 1], words[4 * r + 2], words[4 * r + 3]}};
    for (int c = 0; c < 4; ++c) {
      const unsigned z = zeros[4 * r + c];
      __half2 plain[4], perm[4];
      jk_octet_qz4(ow, c, 0, jk_zero_bias(z), perm);
      for (int k = 0; k < 4; ++k) {
        plain[k] = jk_octet_qz(ow, c, 0, k, jk_zero_bias(z));
        const __half2 fma = jk_octet_qz_fma(ow, c, k, jk_zero_bias(z), jk_zero_bias16(z), 0x64006400u,
                                            jk_half2_bits(0x2C002C00u));
        unsigned* o = out + ((3 * r) * 4 + c) * 4 + k;
        o[0] = jk_bits_half2(plain[k]);
        o[16] = jk_bits_half2(perm[k]);
        o[32] = jk_bits_half2(fma);
      }
    }
  }
}
""", 8: r"""
// out[n][c][k]: pair k of column c of word-row pair n (words[n][0][c], words[n][1][c]), zero zeros[n][c].
extern "C" void decode(const unsigned* words, const unsigned* zeros, unsigned* out, int n) {
  for (int r = 0; r < n; ++r) {
    const unsigned* w = words + 8 * r;
    const jk_u32x4 ow[2] = {{w[0], w[1], w[2], w[3]}, {w[4], w[5], w[6], w[7]}};
    for (int c = 0; c < 4; ++c)
      for (int k = 0; k < 4; ++k)
        out[(4 * r + c) * 4 + k] = jk_bits_half2(jk_octet_qz(ow, c, 0, k, jk_zero_bias(zeros[4 * r + c])));
  }
}
"""}


@lru_cache(maxsize=None)
def _library(bits: int):
    """The decode functions of one bit width, built with the GGUF host prelude (tests/gguf_host.py)."""
    body = environment().get_template("int_unit.h.j2").render(bits=bits, vendor="host")
    src = gguf_host.PRELUDE % {"unsigned": 0} + HOST_EXTRA + body + DRIVER[bits]
    d = Path(tempfile.mkdtemp(prefix="jk-int-host-"))
    (d / "k.cpp").write_text(src)
    subprocess.run(["g++", "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-o", str(d / "k.so"), str(d / "k.cpp")],
                   check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(d / "k.so"))


@pytest.mark.skipif(not gguf_host.available(), reason="g++ not installed")
def test_int4_decodes_agree_bit_for_bit():
    n = 4096
    words = torch.randint(0, 2 ** 32, (n, 4), dtype=torch.int64).to(torch.uint32)
    zeros = torch.arange(4 * n, dtype=torch.int64).remainder(16).reshape(n, 4)
    zeros = zeros[torch.randperm(n)].to(torch.uint32).contiguous()     # every zero point, in random rows
    out = torch.full((n, 3, 4, 4), 0xFFFF_FFFF, dtype=torch.int64).to(torch.uint32)   # poisoned
    _library(4).decode(ctypes.c_void_p(words.data_ptr()), ctypes.c_void_p(zeros.data_ptr()),
                      ctypes.c_void_p(out.data_ptr()), n)
    # The expected values from first principles: pair k of column c holds nibbles k and k + 4 of the
    # word, as q - z in fp16.
    w = words.to(torch.int64)
    nib = torch.stack([(w >> (4 * j)) & 0xF for j in range(8)], dim=-1)        # [n, 4 columns, 8 nibbles]
    qz = nib - zeros.to(torch.int64)[:, :, None]
    want = _half2_bits(qz[..., :4], qz[..., 4:])
    got = out.to(torch.int64)
    for v, name in enumerate(("jk_octet_qz", "jk_octet_qz4", "jk_octet_qz_fma")):
        assert torch.equal(got[:, v], want), name


def _half2_bits(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Integers (exact in fp16) as the int64 bits of fp16 pairs (lo in the low half)."""
    return torch.stack([lo, hi], dim=-1).to(torch.float16).view(torch.int32).squeeze(-1).to(torch.int64) & 0xFFFF_FFFF


@pytest.mark.skipif(not gguf_host.available(), reason="g++ not installed")
def test_int8_decode_bit_for_bit():
    n = 4096
    words = torch.randint(0, 2 ** 32, (n, 2, 4), dtype=torch.int64).to(torch.uint32)
    zeros = torch.arange(4 * n, dtype=torch.int64).remainder(256).reshape(n, 4)
    zeros = zeros[torch.randperm(n)].to(torch.uint32).contiguous()     # every zero point, in random rows
    out = torch.full((n, 4, 4), 0xFFFF_FFFF, dtype=torch.int64).to(torch.uint32)      # poisoned
    _library(8).decode(ctypes.c_void_p(words.data_ptr()), ctypes.c_void_p(zeros.data_ptr()),
                       ctypes.c_void_p(out.data_ptr()), n)
    # Pair k of column c: bytes k % 2 and k % 2 + 2 of word k // 2, as q - z.
    w = words.to(torch.int64).transpose(1, 2)                                  # [n, 4 columns, 2 words]
    z = zeros.to(torch.int64)[:, :, None]
    k = torch.arange(4)
    word = w[:, :, k // 2]                                                     # [n, 4, 4 pairs]
    lo = ((word >> (8 * (k % 2))) & 0xFF) - z
    hi = ((word >> (16 + 8 * (k % 2))) & 0xFF) - z
    assert torch.equal(out.to(torch.int64), _half2_bits(lo, hi))

