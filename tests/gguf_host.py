"""Host (g++) build of templates/gguf_types.h.j2: runs the kernels' per-type decode and integer-dot
math on the CPU, so the bit logic is checked where there is no GPU.  Used by the CPU tests."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from jitkern.families import _gguf_consts
from jitkern.render import environment
from jitkern.spec import KernelSpec

PRELUDE = r"""
#include <cstring>
#include <cstdint>
#define JK_DEVICE static inline
struct jk_u32x4 { unsigned x, y, z, w; };
struct jk_u32x2 { unsigned x, y; };
typedef _Float16 __half;
struct __half2 { _Float16 x, y; };
JK_DEVICE jk_u32x4 jk_load_stream(const jk_u32x4* p) { jk_u32x4 v; memcpy(&v, p, 16); return v; }
JK_DEVICE jk_u32x2 jk_load_u32x2(const jk_u32x2* p) { jk_u32x2 v; memcpy(&v, p, 8); return v; }
JK_DEVICE __half2 jk_half2_bits(unsigned b) { __half2 h; memcpy(&h, &b, 4); return h; }
JK_DEVICE float __low2float(__half2 h) { return (float)h.x; }
JK_DEVICE float __high2float(__half2 h) { return (float)h.y; }
JK_DEVICE float __half2float(__half h) { return (float)h; }
JK_DEVICE float __fmul_rn(float a, float b) { return a * b; }
JK_DEVICE float __fadd_rn(float a, float b) { return a + b; }
JK_DEVICE int jk_dot4_i8(int a, int b, int c) {
  for (int j = 0; j < 4; ++j) c += (int)(signed char)(a >> 8 * j) * (int)(signed char)(b >> 8 * j);
  return c;
}
"""

DRIVER = r"""
#define JK_BLOCK %(block)d
#define JK_QB %(qb)d
static signed char lut_[16];
extern "C" void dequant(const unsigned char* qs, const unsigned char* hdr, float* out, int N, int K, int hr) {
  for (int q = 0; q < 16; ++q) lut_[q] = jk_iq4_value(q);
  const int nb = K / JK_BLOCK;
  for (int row = 0; row < N; ++row)
    for (int it = 0; it < nb * JK_SLICES; ++it) {
      const int b = it / JK_SLICES, t = it %% JK_SLICES;
      jk_slice s;
      jk_load_slice(s, qs + (long)row * nb * JK_QB, b * JK_QB, hdr + (long)row * hr, 0u, nb, b, t);
      for (int g = 0; g < JK_GROUPS; ++g) {
        unsigned w[4]; float a, c;
        const int pos = b * JK_BLOCK + jk_group(s, g, t, w, a, c, lut_);
        for (int e = 0; e < 16; ++e) {
          const float v = (float)(signed char)((w[e >> 2] >> (8 * (e & 3))) & 0xFFu);
          out[(long)row * K + pos + e] = JK_HAS_MIN ? __fadd_rn(__fmul_rn(a, v), c) : __fmul_rn(a, v);
        }
      }
    }
}
extern "C" void gemv(const unsigned char* qs, const unsigned char* hdr, const signed char* xq, const float* xm,
                     float* out, int M, int N, int K, int hr) {
  for (int q = 0; q < 16; ++q) lut_[q] = jk_iq4_value(q);
  const int nb = K / JK_BLOCK;
  for (int row = 0; row < N; ++row) {
    float acc[8] = {0};
    for (int it = 0; it < nb * JK_SLICES; ++it) {
      const int b = it / JK_SLICES, t = it %% JK_SLICES;
      jk_slice s;
      jk_load_slice(s, qs, (unsigned)(row * nb * JK_QB + b * JK_QB), hdr, (unsigned)(row * hr), nb, b, t);
      for (int g = 0; g < JK_GROUPS; ++g) {
        unsigned w[4]; float a, c;
        const int pos = b * JK_BLOCK + jk_group(s, g, t, w, a, c, lut_);
        for (int i = 0; i < M; ++i) {
          const signed char* xr = xq + (long)2 * i * K + pos;
          int hi[4], lo[4];
          memcpy(hi, xr, 16); memcpy(lo, xr + K, 16);
          const float* meta = xm + 2 * ((long)i * (K / 16) + pos / 16);
          int ih = 0;
          for (int q = 0; q < 4; ++q) ih = jk_dot4_i8((int)w[q], hi[q], ih);
          int il = ih * 254;
          for (int q = 0; q < 4; ++q) il = jk_dot4_i8((int)w[q], lo[q], il);
          acc[i] += a * meta[0] * (float)il;
          if (JK_HAS_MIN) acc[i] += c * meta[1];
        }
      }
    }
    for (int i = 0; i < M; ++i) out[(long)i * N + row] = acc[i];
  }
}
"""


def available() -> bool:
    return shutil.which("g++") is not None


@lru_cache(maxsize=None)
def library(fmt: str):
    """The host build of one type's decode (ctypes CDLL with dequant and gemv)."""
    consts = _gguf_consts(KernelSpec("gguf_dequant", fmt, arch="sm_90"))
    body = environment().get_template("gguf_types.h.j2").render(fmt=fmt, **consts)
    src = PRELUDE + body + DRIVER % consts
    d = Path(tempfile.mkdtemp(prefix="jk-gguf-host-"))
    (d / "k.cpp").write_text(src)
    subprocess.run(["g++", "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-o", str(d / "k.so"), str(d / "k.cpp")],
                   check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(d / "k.so"))


def _p(t: torch.Tensor):
    return ctypes.c_void_p(t.data_ptr())


def dequant(layout) -> torch.Tensor:
    out = torch.empty(layout.n, layout.k, dtype=torch.float32)
    library(layout.qtype.lower()).dequant(_p(layout.qs), _p(layout.hdr), _p(out), layout.n, layout.k,
                                          layout.header_row_bytes)
    return out


def quantize(x: torch.Tensor):
    """Mirror of q8_1_quantize.hip.j2 (fp32 math): -> (xq int8 [M, 2, K], xm float32 [M, K/16, 2])."""
    m, k = x.shape
    v = x.float().view(m, k // 32, 32)
    amax = v.abs().amax(-1, keepdim=True)
    d = amax / 127.0
    dlo = d / 254.0
    safe = torch.where(amax > 0, d, torch.ones_like(d))
    hi = torch.where(amax > 0, torch.round(v / safe).clamp(-127, 127), torch.zeros_like(v))
    res = v - d * hi
    lo = torch.where(amax > 0, torch.round(res / torch.where(amax > 0, dlo, torch.ones_like(dlo))).clamp(-127, 127),
                     torch.zeros_like(v))
    xq = torch.stack([hi.reshape(m, k), lo.reshape(m, k)], 1).to(torch.int8).contiguous()
    s = v.view(m, k // 16, 16).sum(-1)
    xm = torch.stack([dlo.expand(m, k // 32, 2).reshape(m, k // 16), s], -1).contiguous()
    return xq, xm


def gemv(x: torch.Tensor, layout) -> torch.Tensor:
    xq, xm = quantize(x)
    out = torch.empty(x.shape[0], layout.n, dtype=torch.float32)
    library(layout.qtype.lower()).gemv(_p(layout.qs), _p(layout.hdr), _p(xq), _p(xm), _p(out), x.shape[0],
                                       layout.n, layout.k, layout.header_row_bytes)
    return out
