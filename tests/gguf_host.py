"""Host (g++) build of templates/gguf_types.h.j2: runs the kernels' per-type decode, the integer-dot
GEMV math and the fp16 (tensor-core path) GEMV math on the CPU, so the bit logic and the error
budgets are checked where there is no GPU.  Used by the CPU tests.  ``unsigned=True`` builds the
decode the tensor-core GEMV uses (JK_UNSIGNED: bytes v + JK_BIAS)."""
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
#define JK_UNSIGNED %(unsigned)d
JK_DEVICE jk_u32x4 jk_load_stream(const jk_u32x4* p) { jk_u32x4 v; memcpy(&v, p, 16); return v; }
JK_DEVICE jk_u32x4 jk_load_u32x4(const jk_u32x4* p) { return jk_load_stream(p); }
JK_DEVICE jk_u32x2 jk_load_u32x2(const jk_u32x2* p) { jk_u32x2 v; memcpy(&v, p, 8); return v; }
JK_DEVICE __half2 jk_half2_bits(unsigned b) { __half2 h; memcpy(&h, &b, 4); return h; }
JK_DEVICE unsigned jk_word(const jk_u32x4 v, const int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }
JK_DEVICE float __low2float(__half2 h) { return (float)h.x; }
JK_DEVICE float __high2float(__half2 h) { return (float)h.y; }
JK_DEVICE float __half2float(__half h) { return (float)h; }
JK_DEVICE float __fmul_rn(float a, float b) { return a * b; }
JK_DEVICE float __fadd_rn(float a, float b) { return a + b; }
// fp16 ops of the tensor-core decode (jk_group_ac_f16): _Float16 arithmetic rounds the float result,
// which is exact here (a product of two fp16 values, a difference of two integers below 2048).
JK_DEVICE __half __low2half(__half2 h) { return h.x; }
JK_DEVICE __half __high2half(__half2 h) { return h.y; }
JK_DEVICE __half2 __half2half2(__half h) { return {h, h}; }
JK_DEVICE __half __hneg(__half h) { return -h; }
JK_DEVICE __half2 __low2half2(__half2 h) { return {h.x, h.x}; }
JK_DEVICE __half2 __high2half2(__half2 h) { return {h.y, h.y}; }
JK_DEVICE __half2 __hmul2(__half2 a, __half2 b) { return {(_Float16)((float)a.x * (float)b.x), (_Float16)((float)a.y * (float)b.y)}; }
JK_DEVICE __half2 __hsub2(__half2 a, __half2 b) { return {(_Float16)((float)a.x - (float)b.x), (_Float16)((float)a.y - (float)b.y)}; }
JK_DEVICE unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long b = (unsigned long long)y << 32 | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= (unsigned)((b >> (8 * ((s >> (4 * i)) & 7))) & 0xFFu) << (8 * i);
  return r;
}
JK_DEVICE unsigned jk_perm(unsigned x, unsigned y, unsigned s) { return __byte_perm(x, y, s); }
JK_DEVICE int jk_dot4_i8(int a, int b, int c) {
  for (int j = 0; j < 4; ++j) c += (int)(signed char)(a >> 8 * j) * (int)(signed char)(b >> 8 * j);
  return c;
}
"""

DRIVER = r"""
#define JK_BLOCK %(block)d
#define JK_QB %(qb)d
static signed char lut_[16];
// Element e of a decoded group: int8 v, or u - JK_BIAS for the unsigned decode.
static int jk_value(const unsigned (&w)[4], const int e) {
  const unsigned b = (w[e >> 2] >> (8 * (e & 3))) & 0xFFu;
  return JK_UNSIGNED ? (int)b - JK_BIAS : (int)(signed char)b;
}
// f(s, g, t, b): group g of slice t of block b, for every 16-element group of one row, in the kernels'
// slice order.
template <class F> static void each_slice_group(const unsigned char* qs, const unsigned char* hdr, int row, int K,
                                                int hr, F f) {
  for (int q = 0; q < 16; ++q) lut_[q] = jk_lut_entry(q);
  const int nb = K / JK_BLOCK;
  for (int it = 0; it < nb * JK_SLICES; ++it) {
    const int b = it / JK_SLICES, t = it %% JK_SLICES;
    jk_slice s;
    jk_load_slice(s, qs, (unsigned)(row * nb * JK_QB + b * JK_QB), hdr, (unsigned)(row * hr), nb, b, t);
    for (int g = 0; g < JK_GROUPS; ++g) f(s, g, t, b);
  }
}
// f(pos, w, a, c) for every group of one row, as jk_group decodes it.
template <class F> static void each_group(const unsigned char* qs, const unsigned char* hdr, int row, int K, int hr, F f) {
  each_slice_group(qs, hdr, row, K, hr, [&](const jk_slice& s, int g, int t, int b) {
    unsigned w[4]; float a, c;
    const int pos = b * JK_BLOCK + jk_group(s, g, t, w, a, c, lut_);
    f(pos, w, a, c);
  });
}
#if JK_UNSIGNED
// Groups whose fp16 (a, c) from jk_group_ac_f16 differ in any bit from the fp32 (a, c) cast to fp16
// (both halves); *groups counts the groups compared.
extern "C" int ac_f16_mismatches(const unsigned char* qs, const unsigned char* hdr, int N, int K, int hr, int* groups) {
  int bad = 0;
  *groups = 0;
  for (int row = 0; row < N; ++row)
    each_slice_group(qs, hdr, row, K, hr, [&](const jk_slice& s, int g, int t, int) {
      float a, c;
      __half2 a2, c2;
      jk_group_ac(s, g, t, a, c);
      jk_group_ac_f16(s, g, t, a2, c2);
      const _Float16 want[4] = {(_Float16)a, (_Float16)a, (_Float16)c, (_Float16)c};
      const _Float16 got[4] = {a2.x, a2.y, c2.x, c2.y};
      bad += memcmp(want, got, sizeof want) != 0;
      ++*groups;
    });
  return bad;
}
#endif
extern "C" void dequant(const unsigned char* qs, const unsigned char* hdr, float* out, int N, int K, int hr) {
  for (int row = 0; row < N; ++row)
    each_group(qs, hdr, row, K, hr, [&](int pos, const unsigned (&w)[4], float a, float c) {
      for (int e = 0; e < 16; ++e) {
        const float v = (float)jk_value(w, e);
        out[(long)row * K + pos + e] = JK_HAS_MIN ? __fadd_rn(__fmul_rn(a, v), c) : __fmul_rn(a, v);
      }
    });
}
extern "C" void gemv(const unsigned char* qs, const unsigned char* hdr, const signed char* xq, const float* xm,
                     float* out, int M, int N, int K, int hr) {
  for (int row = 0; row < N; ++row) {
    float acc[8] = {0};
    each_group(qs, hdr, row, K, hr, [&](int pos, const unsigned (&w)[4], float a, float c) {
      for (int i = 0; i < M; ++i) {
        const signed char* xr = xq + ((long)(pos / 16) * M + i) * 32;    // [K/16][M][hi 16, lo 16]
        int hi[4], lo[4];
        memcpy(hi, xr, 16); memcpy(lo, xr + 16, 16);
        const float* meta = xm + 2 * ((long)(pos / 16) * M + i);
        int ih = 0;
        for (int q = 0; q < 4; ++q) ih = jk_dot4_i8((int)w[q], hi[q], ih);
        int il = ih * 254;
        for (int q = 0; q < 4; ++q) il = jk_dot4_i8((int)w[q], lo[q], il);
        acc[i] += a * meta[0] * (float)il;
        if (JK_HAS_MIN) acc[i] += c * meta[1];
      }
    });
    for (int i = 0; i < M; ++i) out[(long)i * N + row] = acc[i];
  }
}
// The tensor-core GEMV's numbers: a, c and y = a*v + c rounded to fp16 (y once, as one fp16 FMA),
// products with fp16 x accumulated exactly enough (double).
extern "C" void gemv_f16(const unsigned char* qs, const unsigned char* hdr, const _Float16* x, float* out,
                         int M, int N, int K, int hr) {
  for (int row = 0; row < N; ++row) {
    double acc[8] = {0};
    each_group(qs, hdr, row, K, hr, [&](int pos, const unsigned (&w)[4], float a, float c) {
      const double a16 = (double)(_Float16)a, c16 = JK_HAS_MIN ? (double)(_Float16)c : 0.0;
      for (int e = 0; e < 16; ++e) {
        const double y = (double)(_Float16)(jk_value(w, e) * a16 + c16);
        for (int i = 0; i < M; ++i) acc[i] += y * (double)x[(long)i * K + pos + e];
      }
    });
    for (int i = 0; i < M; ++i) out[(long)i * N + row] = (float)acc[i];
  }
}
"""


def available() -> bool:
    return shutil.which("g++") is not None


@lru_cache(maxsize=None)
def library(fmt: str, unsigned: bool = False):
    """The host build of one type's decode (ctypes CDLL with dequant, gemv and gemv_f16)."""
    consts = _gguf_consts(KernelSpec("gguf_dequant", fmt, arch="sm_90"))
    # f16_scales: the host build checks the fp16 scale math of every type, used by the GEMV or not
    body = environment().get_template("gguf_types.h.j2").render(fmt=fmt, **{**consts, "f16_scales": True})
    src = PRELUDE % {"unsigned": int(unsigned)} + body + DRIVER % consts
    d = Path(tempfile.mkdtemp(prefix="jk-gguf-host-"))
    (d / "k.cpp").write_text(src)
    subprocess.run(["g++", "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-o", str(d / "k.so"), str(d / "k.cpp")],
                   check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(d / "k.so"))


def _p(t: torch.Tensor):
    return ctypes.c_void_p(t.data_ptr())


def dequant(layout, unsigned: bool = False) -> torch.Tensor:
    out = torch.empty(layout.n, layout.k, dtype=torch.float32)
    library(layout.qtype.lower(), unsigned).dequant(_p(layout.qs), _p(layout.hdr), _p(out), layout.n,
                                                    layout.k, layout.header_row_bytes)
    return out


def ac_f16_mismatches(layout) -> tuple[int, int]:
    """(groups whose fp16 (a, c) of the tensor-core decode differ from the fp32 ones cast, groups)."""
    groups = ctypes.c_int()
    bad = library(layout.qtype.lower(), True).ac_f16_mismatches(
        _p(layout.qs), _p(layout.hdr), layout.n, layout.k, layout.header_row_bytes, ctypes.byref(groups))
    return bad, groups.value


def quantize(x: torch.Tensor):
    """Mirror of q8_1_quantize.hip.j2 (fp32 math): -> (xq int8 [K/16, M, 32], xm float32 [K/16, M, 2])."""
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
    planes = torch.stack([hi.reshape(m, k // 16, 16), lo.reshape(m, k // 16, 16)], 2)    # [M, K/16, 2, 16]
    xq = planes.reshape(m, k // 16, 32).transpose(0, 1).to(torch.int8).contiguous()
    s = v.view(m, k // 16, 16).sum(-1)
    xm = torch.stack([dlo.expand(m, k // 32, 2).reshape(m, k // 16), s], -1).transpose(0, 1).contiguous()
    return xq, xm


def gemv(x: torch.Tensor, layout) -> torch.Tensor:
    xq, xm = quantize(x)
    out = torch.empty(x.shape[0], layout.n, dtype=torch.float32)
    library(layout.qtype.lower()).gemv(_p(layout.qs), _p(layout.hdr), _p(xq), _p(xm), _p(out), x.shape[0],
                                       layout.n, layout.k, layout.header_row_bytes)
    return out


def gemv_f16(x: torch.Tensor, layout) -> torch.Tensor:
    """The tensor-core GEMV's arithmetic (fp16 weights y, fp16 x, exact accumulation) on the host."""
    xh = x.half().contiguous()
    out = torch.empty(x.shape[0], layout.n, dtype=torch.float32)
    library(layout.qtype.lower(), True).gemv_f16(_p(layout.qs), _p(layout.hdr), _p(xh), _p(out), x.shape[0],
                                                 layout.n, layout.k, layout.header_row_bytes)
    return out
