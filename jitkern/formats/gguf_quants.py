"""GGUF block types: byte maps of one block and torch decoders (kernel-spec.md §1.3.2-1.3.3).

Each type is described by its *fields* (name, byte offset in the stored block, size, kind).  The
decoders take those fields, not raw blocks, so one decoder serves both the stored GGUF bytes and the
repacked GPU layout (``gguf.py``): a bug in either byte map shows up as a mismatch in the tests.

Every decoder repeats the fp32 operation order of ggml's reference (and of ``gguf.quants``): the
per-sub-block factor ``d * scale`` is rounded first, then multiplied by the quant, then the
``dmin * min`` / ``m`` term is subtracted / added.  That order is what makes the result bit-exact.
Only little-endian hosts and files are supported (fp16 / u16 / u32 fields are read in host order).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch

QK_K = 256
# IQ4_NL / IQ4_XS non-linear 4-bit codebook (int8 values).
IQ4_CODEBOOK = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)

Fields = Dict[str, torch.Tensor]   # field name -> uint8 [M, size] (M blocks)


@dataclass(frozen=True)
class Field:
    name: str
    offset: int      # byte offset inside the stored block
    size: int        # bytes per block
    kind: str        # f16 | f16x2 | u8 | i8 | u16 | u32 (how a kernel reads it)

    @property
    def align(self) -> int:
        """Natural alignment of the field inside a plane: largest power of two dividing size (<= 16)."""
        return min(16, self.size & -self.size)


@dataclass(frozen=True)
class QType:
    name: str
    id: int
    block: int                      # elements per block
    nbytes: int                     # bytes per stored block
    fields: Tuple[Field, ...]       # in stored order
    quants: Tuple[str, ...]         # fields that go to the 16-byte aligned quant tensor, in that order
    decode: Callable[[Fields], torch.Tensor]
    joined: Tuple[str, ...] = ()     # adjacent header fields kept as one plane, named "a_b"

    @property
    def quant_bytes(self) -> int:
        return sum(f.size for f in self.fields if f.name in self.quants)

    @property
    def header_fields(self) -> Tuple[Field, ...]:
        """Header planes in layout order: decreasing alignment, ties in stored order.  Joined fields
        are one plane (a Field of kind "joined"): Q4_K's and Q5_K's (d, dmin) and 12 bytes of scales
        make 16, which a kernel reads with one 128-bit load."""
        hdr = [f for f in self.fields if f.name not in self.quants and f.name not in self.joined]
        if self.joined:
            parts = [self.field(n) for n in self.joined]
            assert all(a.offset + a.size == b.offset for a, b in zip(parts, parts[1:])), self.name
            hdr.append(Field("_".join(self.joined), parts[0].offset, sum(f.size for f in parts), "joined"))
        return tuple(sorted(hdr, key=lambda f: (-f.align, f.offset)))

    def plane_of(self, name: str) -> Tuple[Field, int]:
        """The header plane holding field ``name`` and the field's byte offset inside its entries."""
        f = self.field(name)
        plane = next(p for p in self.header_fields if p.offset <= f.offset < p.offset + p.size)
        return plane, f.offset - plane.offset

    @property
    def header_bytes(self) -> int:
        return sum(f.size for f in self.header_fields)

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)


# ---------------------------------------------------------------------------------------------
# helpers

def _f16(b: torch.Tensor) -> torch.Tensor:
    """uint8 [M, 2j] -> float32 [M, j] (fp16 -> fp32 is exact)."""
    return b.contiguous().view(torch.float16).float()


def _take(field: torch.Tensor, byte: torch.Tensor, shift: torch.Tensor, mask: int) -> torch.Tensor:
    """Per element e: (field[:, byte[e]] >> shift[e]) & mask, as uint8 [M, len(byte)]."""
    dev = field.device
    return (field[:, byte.to(dev)] >> shift.to(dev)) & mask


def _u8(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.uint8)


# Element -> (byte, shift) maps, built once with tensor arithmetic.  e = element inside the block.
_E32 = torch.arange(32)
_E256 = torch.arange(QK_K)
# 32-element types: byte j holds element j (low nibble) and j + 16 (high nibble).
_NIB32 = (_E32 % 16, _u8(4 * (_E32 // 16)))
# bit e of a little-endian 32-bit qh, read byte-wise so the host order never matters.
_BIT32 = (_E32 // 8, _u8(_E32 % 8))
# Q2_K / Q3_K low 2 bits: e = 128h + 32s + 16t + l  ->  qs[32h + 16t + l] >> 2s.
_Q2 = (32 * (_E256 // 128) + 16 * ((_E256 // 16) % 2) + _E256 % 16, _u8(2 * ((_E256 // 32) % 4)))
# Q3_K hmask / Q5_K qh: bit (e // 32) of byte (e % 32).
_HBIT = (_E256 % 32, _u8(_E256 // 32))
# Q4_K / Q5_K nibbles: e = 64c + 32h + l  ->  qs[32c + l] >> 4h.
_Q4K = (32 * (_E256 // 64) + _E256 % 32, _u8(4 * ((_E256 // 32) % 2)))
# Q6_K: e = 128h + 32k + l  ->  ql[64h + 32(k%2) + l] >> 4(k//2),  qh[32h + l] >> 2k.
_K6 = (_E256 // 32) % 4
_Q6L = (64 * (_E256 // 128) + 32 * (_K6 % 2) + _E256 % 32, _u8(4 * (_K6 // 2)))
_Q6H = (32 * (_E256 // 128) + _E256 % 32, _u8(2 * _K6))
# IQ4_XS: sub-block ib = e // 32 uses qs[16 ib + j] (j < 16 low nibble, else high).
_IQ4XS = (16 * (_E256 // 32) + _E256 % 16, _u8(4 * ((_E256 // 16) % 2)))
_SUB16 = _E256 // 16
_SUB32 = _E256 // 32
_CODEBOOK = torch.tensor(IQ4_CODEBOOK, dtype=torch.float32)


def _sub(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Broadcast per-sub-block values [M, S] to per-element [M, len(idx)]."""
    return x[:, idx.to(x.device)]


def _scale_min_k4(sc: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Q4_K / Q5_K: 8 six-bit scales and mins packed in 12 bytes -> two uint8 [M, 8]."""
    a, b, c = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    scale = torch.cat([a & 63, (c & 15) | ((a >> 6) << 4)], dim=1)
    mins = torch.cat([b & 63, (c >> 4) | ((b >> 6) << 4)], dim=1)
    return scale, mins


def _scales_q3k(sc: torch.Tensor) -> torch.Tensor:
    """Q3_K: 16 six-bit scales from 12 bytes -> int [M, 16] already offset by -32."""
    lo8 = sc[:, 0:8]
    low = torch.cat([lo8 & 15, lo8 >> 4], dim=1)
    hi4 = sc[:, 8:12]
    high = torch.cat([(hi4 >> (2 * s)) & 3 for s in range(4)], dim=1)
    return (low | (high << 4)).to(torch.int16) - 32


# ---------------------------------------------------------------------------------------------
# decoders: Fields -> float32 [M, block]

def _q4_0(f: Fields) -> torch.Tensor:
    q = _take(f["qs"], *_NIB32, 15).to(torch.int16) - 8
    return _f16(f["d"]) * q.float()


def _q4_1(f: Fields) -> torch.Tensor:
    dm = _f16(f["dm"])
    q = _take(f["qs"], *_NIB32, 15).float()
    return dm[:, 0:1] * q + dm[:, 1:2]


def _q5(f: Fields) -> torch.Tensor:
    return _take(f["qs"], *_NIB32, 15) | (_take(f["qh"], *_BIT32, 1) << 4)


def _q5_0(f: Fields) -> torch.Tensor:
    return _f16(f["d"]) * (_q5(f).to(torch.int16) - 16).float()


def _q5_1(f: Fields) -> torch.Tensor:
    dm = _f16(f["dm"])
    return dm[:, 0:1] * _q5(f).float() + dm[:, 1:2]


def _q8_0(f: Fields) -> torch.Tensor:
    return f["qs"].contiguous().view(torch.int8).float() * _f16(f["d"])


def _q2_k(f: Fields) -> torch.Tensor:
    dm, sc = _f16(f["dm"]), f["scales"]
    dl = dm[:, 0:1] * (sc & 15).float()
    ml = dm[:, 1:2] * (sc >> 4).float()
    q = _take(f["qs"], *_Q2, 3).float()
    return _sub(dl, _SUB16) * q - _sub(ml, _SUB16)


def _q3_k(f: Fields) -> torch.Tensor:
    dl = _f16(f["d"]) * _scales_q3k(f["scales"]).float()
    low = _take(f["qs"], *_Q2, 3).to(torch.int16)
    hbit = _take(f["hmask"], *_HBIT, 1).to(torch.int16)
    q = low - 4 * (1 - hbit)   # a clear hmask bit means "subtract 4"
    return _sub(dl, _SUB16) * q.float()


def _k4_k5(f: Fields, q: torch.Tensor) -> torch.Tensor:
    dm = _f16(f["dm"])
    sc, mn = _scale_min_k4(f["scales"])
    dl = dm[:, 0:1] * sc.float()
    ml = dm[:, 1:2] * mn.float()
    return _sub(dl, _SUB32) * q.float() - _sub(ml, _SUB32)


def _q4_k(f: Fields) -> torch.Tensor:
    return _k4_k5(f, _take(f["qs"], *_Q4K, 15))


def _q5_k(f: Fields) -> torch.Tensor:
    return _k4_k5(f, _take(f["qs"], *_Q4K, 15) | (_take(f["qh"], *_HBIT, 1) << 4))


def _q6_k(f: Fields) -> torch.Tensor:
    dl = _f16(f["d"]) * f["scales"].contiguous().view(torch.int8).float()
    q = _take(f["ql"], *_Q6L, 15) | (_take(f["qh"], *_Q6H, 3) << 4)
    return _sub(dl, _SUB16) * (q.to(torch.int16) - 32).float()


def _codebook(idx: torch.Tensor) -> torch.Tensor:
    return _CODEBOOK.to(idx.device)[idx.long()]


def _iq4_nl(f: Fields) -> torch.Tensor:
    return _f16(f["d"]) * _codebook(_take(f["qs"], *_NIB32, 15))


def _iq4_xs(f: Fields) -> torch.Tensor:
    ib = torch.arange(8)
    low = _take(f["scales_l"], ib // 2, _u8(4 * (ib % 2)), 15)
    high = _take(f["scales_h"], ib // 4, _u8(2 * (ib % 4)), 3)   # u16 LE, read byte-wise
    dl = _f16(f["d"]) * ((low | (high << 4)).to(torch.int16) - 32).float()
    return _sub(dl, _SUB32) * _codebook(_take(f["qs"], *_IQ4XS, 15))


# ---------------------------------------------------------------------------------------------
# the table (ids and sizes match gguf.GGML_QUANT_SIZES; the test checks it)

def _t(name, gid, block, nbytes, fields, quants, decode, joined=()) -> QType:
    fs = tuple(Field(*x) for x in fields)
    assert sum(f.size for f in fs) == nbytes, name
    return QType(name, gid, block, nbytes, fs, quants, decode, joined)


_D = ("d", None, 2, "f16")


def _fields(*spec):
    """Fill in offsets from sizes (fields are given in stored order)."""
    out, off = [], 0
    for name, _, size, kind in spec:
        out.append((name, off, size, kind))
        off += size
    return out


TYPES: Dict[str, QType] = {t.name: t for t in (
    _t("Q4_0", 2, 32, 18, _fields(_D, ("qs", 0, 16, "u8")), ("qs",), _q4_0),
    _t("Q4_1", 3, 32, 20, _fields(("dm", 0, 4, "f16x2"), ("qs", 0, 16, "u8")), ("qs",), _q4_1),
    _t("Q5_0", 6, 32, 22, _fields(_D, ("qh", 0, 4, "u32"), ("qs", 0, 16, "u8")), ("qs",), _q5_0),
    _t("Q5_1", 7, 32, 24, _fields(("dm", 0, 4, "f16x2"), ("qh", 0, 4, "u32"), ("qs", 0, 16, "u8")),
       ("qs",), _q5_1),
    _t("Q8_0", 8, 32, 34, _fields(_D, ("qs", 0, 32, "i8")), ("qs",), _q8_0),
    _t("Q2_K", 10, QK_K, 84, _fields(("scales", 0, 16, "u8"), ("qs", 0, 64, "u8"),
                                     ("dm", 0, 4, "f16x2")), ("qs",), _q2_k),
    _t("Q3_K", 11, QK_K, 110, _fields(("hmask", 0, 32, "u8"), ("qs", 0, 64, "u8"),
                                      ("scales", 0, 12, "u8"), _D), ("hmask", "qs"), _q3_k),
    _t("Q4_K", 12, QK_K, 144, _fields(("dm", 0, 4, "f16x2"), ("scales", 0, 12, "u8"),
                                      ("qs", 0, 128, "u8")), ("qs",), _q4_k, ("dm", "scales")),
    _t("Q5_K", 13, QK_K, 176, _fields(("dm", 0, 4, "f16x2"), ("scales", 0, 12, "u8"),
                                      ("qh", 0, 32, "u8"), ("qs", 0, 128, "u8")), ("qh", "qs"), _q5_k,
       ("dm", "scales")),
    _t("Q6_K", 14, QK_K, 210, _fields(("ql", 0, 128, "u8"), ("qh", 0, 64, "u8"),
                                      ("scales", 0, 16, "i8"), _D), ("ql", "qh"), _q6_k),
    _t("IQ4_NL", 20, 32, 18, _fields(_D, ("qs", 0, 16, "u8")), ("qs",), _iq4_nl),
    _t("IQ4_XS", 23, QK_K, 136, _fields(_D, ("scales_h", 0, 2, "u16"), ("scales_l", 0, 4, "u8"),
                                        ("qs", 0, 128, "u8")), ("qs",), _iq4_xs),
)}

# Every quant segment is a whole number of 16-byte vectors: the layout relies on it.
assert all(t.quant_bytes % 16 == 0 for t in TYPES.values())
