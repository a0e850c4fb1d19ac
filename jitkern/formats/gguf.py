"""GGUF (ggml block-quantized) linear weights: type table, bit-exact torch dequantization, GPU layout.

Stored form ("raw")
-------------------
uint8 ``[N, K/B*S]`` exactly as in a .gguf file (and as gguf-py / vLLM hold it): row n = output n,
``nb = K/B`` blocks of ``S`` bytes back to back along K; block b covers elements ``b*B .. b*B+B-1``.

GPU layout (``GGUFLayout``; ``to_layout`` builds it, ``from_layout`` undoes it exactly)
-----------------------------------------------------------------------------------
Same rows and blocks, but each block's bytes are split over two tensors (struct of arrays):

``qs``  uint8 ``[N, nb, QB]``, contiguous.  The quant bytes of block (n, b) start at byte
        ``(n*nb + b) * QB``.  QB is a multiple of 16 for every type and torch allocations are
        >= 16-byte aligned, so every block's quants are whole, aligned 16-byte vectors (QB/16 of them):
        for QB = 16 one lane's uint4 load is exactly one block.  Inside a block the bytes are the stored
        fields listed under "qs bytes", concatenated in that order, each byte-for-byte unchanged.
``hdr`` uint8 ``[N, HR]``, contiguous, ``HR = round_up(nb * HB, 16)`` (HB = header bytes per block,
        padding bytes are 0).  Row n's headers start at ``n*HR`` (16-byte aligned) and are stored as
        *planes*: for each header field F in the listed order, nb entries of size(F) bytes, entry b
        belonging to block b.  Plane F starts at row byte ``nb * (sum of sizes of the fields before F)``.
        Planes go by decreasing alignment, so every entry is naturally aligned (16-byte fields on 16,
        4-byte fields on 4, halves on 2): e.g. d of block b is the half at ``hdr + n*HR + off_d + 2*b``.
        Q4_K and Q5_K keep their adjacent header fields as one 16-byte plane, ``dm_scales`` (a block's
        whole header in one 128-bit load).

Field kinds: ``f16`` one IEEE half; ``f16x2`` two halves ``(d, m)`` / ``(d, dmin)`` = one 32-bit half2
load; ``u32`` / ``u16`` little-endian integers; ``u8[n]`` / ``i8[n]`` byte arrays.

======  ==  ===  ===  ===  ==================================  ===============================================
type    id  B    S    QB   qs bytes (offset inside the QB)     hdr planes, in order (bytes per block)
======  ==  ===  ===  ===  ==================================  ===============================================
Q4_0     2   32   18   16  qs[16] @0                           d f16 (2)
Q4_1     3   32   20   16  qs[16] @0                           dm f16x2 (4)
Q5_0     6   32   22   16  qs[16] @0                           qh u32 (4), d f16 (2)
Q5_1     7   32   24   16  qs[16] @0                           dm f16x2 (4), qh u32 (4)
Q8_0     8   32   34   32  qs i8[32] @0                        d f16 (2)
Q2_K    10  256   84   64  qs[64] @0                           scales u8[16] (16), dm f16x2 (4)
Q3_K    11  256  110   96  hmask[32] @0, qs[64] @32            scales u8[12] (12), d f16 (2)
Q4_K    12  256  144  128  qs[128] @0                          dm_scales: dm f16x2, scales u8[12] (16)
Q5_K    13  256  176  160  qh[32] @0, qs[128] @32              dm_scales: dm f16x2, scales u8[12] (16)
Q6_K    14  256  210  192  ql[128] @0, qh[64] @128             scales i8[16] (16), d f16 (2)
IQ4_NL  20   32   18   16  qs[16] @0                           d f16 (2)
IQ4_XS  23  256  136  128  qs[128] @0                          scales_l u8[4] (4), d f16 (2), scales_h u16 (2)
======  ==  ===  ===  ===  ==================================  ===============================================

The layout holds the stored bytes plus at most 15 pad bytes a row.  Example, Q5_0 row n: ``hdr[n, 0 : 4nb]`` = qh of blocks 0..nb-1, ``hdr[n, 4nb : 6nb]`` = their d.

Element maps (e = element in the block, ``/`` integer division; y in fp32 with exactly this operation
order, which is ggml's; T = ``IQ4_CODEBOOK`` =
{-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}):

* Q4_0 / Q4_1 / IQ4_NL: ``q = qs[e%16] >> 4*(e/16) & 15``; ``y = d*(q-8)`` / ``d*q + m`` / ``d*T[q]``.
* Q5_0 / Q5_1: q as Q4_0 plus ``((qh >> e) & 1) << 4``; ``y = d*(q-16)`` / ``d*q + m``.
* Q8_0: ``y = (float)(int8)qs[e] * d``.
* Q2_K: ``e = 128h+32s+16t+l``: ``q = qs[32h+16t+l] >> 2s & 3``; ``c = scales[e/16]``;
  ``y = (d*(c&15))*q - dmin*(c>>4)``.
* Q3_K: low 2 bits as Q2_K; ``q = low - (hmask[e%32] >> (e/32) & 1 ? 0 : 4)``; 6-bit scale ``j = e/16``:
  ``S = (j<8 ? scales[j]&15 : scales[j-8]>>4) | (scales[8 + j%4] >> 2*(j/4) & 3) << 4``;
  ``y = (d*(S-32))*q``.
* Q4_K / Q5_K: ``e = 64c+32h+l``: ``q = qs[32c+l] >> 4h & 15`` (Q5_K: ``| (qh[e%32] >> (e/32) & 1) << 4``);
  ``j = e/32``; for j < 4 ``sc = s[j]&63, mn = s[j+4]&63``, else ``sc = s[j+4]&15 | (s[j-4]>>6)<<4``,
  ``mn = s[j+4]>>4 | (s[j]>>6)<<4`` (s = scales); ``y = (d*sc)*q - dmin*mn``.
* Q6_K: ``e = 128h+32k+l``: ``q = (ql[64h+32(k%2)+l] >> 4(k/2) & 15) | (qh[32h+l] >> 2k & 3) << 4``;
  ``y = (d*scales[e/16])*(q-32)``.
* IQ4_XS: ``j = e/32``: ``ls = (scales_l[j/2] >> 4(j%2) & 15) | (scales_h >> 2j & 3) << 4``;
  ``q = qs[16j + e%16] >> 4*((e/16)%2) & 15``; ``y = (d*(ls-32))*T[q]``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

import numpy as np
import torch

from .checks import expect, expect_tensor, fail
from .gguf_quants import IQ4_CODEBOOK, QK_K, TYPES, Field, QType  # noqa: F401  (re-exported)
from .layout import settle

__all__ = ["TYPES", "QType", "Field", "IQ4_CODEBOOK", "QK_K", "gguf_type", "dequantize", "random_blocks",
           "GGUFLayout", "to_layout", "from_layout", "dequantize_layout", "GGUFTensorInfo",
           "read_gguf_header", "load_gguf_linear_tensors", "FLOAT_TYPES"]

FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_CHUNK = 1 << 16   # blocks decoded at a time: bounds the int/float temporaries on big matrices


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


# ---------------------------------------------------------------------------------------------
# validation

def gguf_type(qtype, name: str = "qtype") -> QType:
    """Resolve a type given as name ('Q4_K', case-insensitive), ggml id (12) or GGMLQuantizationType."""
    key = qtype
    if hasattr(qtype, "name") and isinstance(qtype, int):          # GGMLQuantizationType (IntEnum)
        key = qtype.name
    elif isinstance(qtype, (int, np.integer)) and not isinstance(qtype, bool):
        key = next((t.name for t in TYPES.values() if t.id == int(qtype)), None)
    elif isinstance(qtype, str):
        key = qtype.upper()
    if not (isinstance(key, str) and key in TYPES):
        fail(name, f"a supported GGUF type ({', '.join(TYPES)}; by name, ggml id or "
                   f"gguf.GGMLQuantizationType)", repr(qtype))
    return TYPES[key]


def _as_uint8(raw, name: str) -> torch.Tensor:
    """uint8 contiguous tensor or numpy array -> torch tensor (numpy memory is shared, not copied)."""
    if isinstance(raw, np.ndarray):
        expect(raw.dtype == np.uint8, name, "dtype uint8 (GGUF block bytes)", raw.dtype)
        expect(raw.flags.c_contiguous, name, "a C-contiguous array", f"strides {raw.strides}")
        with warnings.catch_warnings():      # read-only memmaps: we only ever read them
            warnings.simplefilter("ignore")
            return torch.from_numpy(raw)
    return _expect_bytes(name, raw)


def _expect_bytes(name: str, t) -> torch.Tensor:
    expect_tensor(name, t, dtype=torch.uint8)
    expect(t.is_contiguous(), name, "a contiguous tensor", f"strides {tuple(t.stride())}")
    return t


def _check_raw(raw, qtype, shape, name: str) -> Tuple[torch.Tensor, QType, int, int]:
    """-> (raw as uint8 [N, row_bytes], type, N, K).  ``shape`` = logical (N, K) or None."""
    t, qt = _as_uint8(raw, name), gguf_type(qtype, name)
    if shape is not None:
        n, k = (int(x) for x in shape)
        expect(k % qt.block == 0, name, f"K a multiple of the {qt.name} block size {qt.block}", f"K={k}")
        rb = k // qt.block * qt.nbytes
        if t.dim() == 1 and t.numel() == n * rb:
            t = t.view(n, rb)
        expect(tuple(t.shape) == (n, rb), name, f"bytes of shape ({n}, {rb}) for {qt.name} N={n} K={k}",
               tuple(t.shape))
        return t, qt, n, k
    expect(t.dim() == 2, name, f"2-D bytes (N, K/{qt.block}*{qt.nbytes})", f"shape {tuple(t.shape)}")
    n, rb = t.shape
    expect(rb % qt.nbytes == 0, name, f"rows of whole {qt.name} blocks ({qt.nbytes} bytes each)",
           f"{rb} bytes a row")
    return t, qt, n, rb // qt.nbytes * qt.block


# ---------------------------------------------------------------------------------------------
# dequantization and random data

def _decode(qt: QType, fields: Dict[str, torch.Tensor], n: int, k: int) -> torch.Tensor:
    m = n * (k // qt.block)
    out = torch.empty(m, qt.block, dtype=torch.float32, device=next(iter(fields.values())).device)
    for s in range(0, m, _CHUNK):
        out[s:s + _CHUNK] = qt.decode({f: v[s:s + _CHUNK] for f, v in fields.items()})
    return out.view(n, k)


def dequantize(raw, qtype, shape=None, *, name: str = "raw") -> torch.Tensor:
    """Stored GGUF bytes -> float32 [N, K], bit-identical to ``gguf.quants.dequantize``."""
    t, qt, n, k = _check_raw(raw, qtype, shape, name)
    blocks = t.view(-1, qt.nbytes)
    return _decode(qt, {f.name: blocks[:, f.offset:f.offset + f.size] for f in qt.fields}, n, k)


def random_blocks(qtype, n: int, k: int, generator: Optional[torch.Generator] = None,
                  device: Optional[torch.device] = None) -> torch.Tensor:
    """Random valid stored bytes uint8 [n, k/B*S] for tests and benchmarks, made on `device` (default:
    the generator's, else the CPU; the benchmark's 70B layers take seconds each on the CPU).

    Every fp16 field (d, m, dmin) is finite with |x| log-uniform in [1e-3, 1e-1] and a random sign;
    all other bytes (quants, scales, qh) are uniform random, and no block's quants are all zero.
    """
    qt = gguf_type(qtype)
    expect(k % qt.block == 0, "k", f"a multiple of the {qt.name} block size {qt.block}", k)
    nb = k // qt.block
    if device is None and generator is not None:
        device = generator.device
    raw = torch.randint(0, 256, (n, nb, qt.nbytes), dtype=torch.uint8, generator=generator, device=device)
    for f in qt.fields:
        if f.kind.startswith("f16"):
            cnt = n * nb * f.size // 2
            mag = torch.pow(10.0, torch.rand(cnt, generator=generator, device=device) * 2 - 3)
            sign = torch.randint(0, 2, (cnt,), generator=generator, device=device) * 2 - 1
            raw[..., f.offset:f.offset + f.size] = (mag * sign).half().view(torch.uint8).view(n, nb, f.size)
    quants = [raw[..., f.offset:f.offset + f.size] for f in qt.fields if f.name in qt.quants]
    empty = torch.stack([q.amax(-1) for q in quants]).amax(0) == 0
    quants[0][..., 0][empty] = 1
    return raw.view(n, nb * qt.nbytes)


# ---------------------------------------------------------------------------------------------
# GPU layout

@dataclass
class GGUFLayout:
    """Struct-of-arrays GGUF weight for the GPU kernels; the module docstring specifies it exactly."""

    qtype: str               # canonical type name, e.g. "Q4_K"
    n: int                   # rows (out_features)
    k: int                   # elements per row (in_features)
    qs: torch.Tensor         # uint8 [n, nb, QB]
    hdr: torch.Tensor        # uint8 [n, HR]

    @property
    def type(self) -> QType:
        return gguf_type(self.qtype, "layout.qtype")

    @property
    def blocks_per_row(self) -> int:
        return self.k // self.type.block

    @property
    def quant_bytes(self) -> int:
        return self.type.quant_bytes

    @property
    def header_row_bytes(self) -> int:
        return _round_up(self.blocks_per_row * self.type.header_bytes, 16)

    @property
    def planes(self) -> Tuple[Tuple[Field, int], ...]:
        """(field, byte offset of its plane inside a header row), in plane order."""
        out, off = [], 0
        for f in self.type.header_fields:
            out.append((f, off))
            off += self.blocks_per_row * f.size
        return tuple(out)

    def plane(self, name: str) -> torch.Tensor:
        """Header field ``name`` as a uint8 view [n, nb, size] (of its plane's entries, for a joined
        field)."""
        nb = self.blocks_per_row
        field, at = self.type.plane_of(name)
        f, off = next((f, o) for f, o in self.planes if f == field)
        return self.hdr[:, off:off + nb * f.size].view(self.n, nb, f.size)[..., at:at + self.type.field(name).size]

    def quant(self, name: str) -> torch.Tensor:
        """Quant field ``name`` as a uint8 view [n, nb, size] of ``qs``."""
        off = 0
        for q in self.type.quants:
            f = self.type.field(q)
            if q == name:
                return self.qs[..., off:off + f.size]
            off += f.size
        raise KeyError(name)

    def field(self, name: str) -> torch.Tensor:
        """Any stored field as a uint8 view [n, nb, size], wherever the layout keeps it."""
        return self.quant(name) if name in self.type.quants else self.plane(name)

    def tensors(self):
        return [self.qs, self.hdr]

    def to(self, device) -> "GGUFLayout":
        return GGUFLayout(self.qtype, self.n, self.k, self.qs.to(device), self.hdr.to(device))

    def nbytes(self) -> int:
        """Bytes a kernel reads (header row padding included)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())


def to_layout(raw, qtype, shape=None, *, name: str = "raw") -> GGUFLayout:
    """Stored bytes -> GGUFLayout (same device as ``raw``; fresh contiguous tensors)."""
    t, qt, n, k = _check_raw(raw, qtype, shape, name)
    nb = k // qt.block
    blocks = t.view(n, nb, qt.nbytes)
    qs = torch.cat([blocks[..., f.offset:f.offset + f.size] for f in map(qt.field, qt.quants)], -1)
    hdr = torch.zeros(n, _round_up(nb * qt.header_bytes, 16), dtype=torch.uint8, device=t.device)
    off = 0
    for f in qt.header_fields:
        hdr[:, off:off + nb * f.size] = blocks[..., f.offset:f.offset + f.size].reshape(n, nb * f.size)
        off += nb * f.size
    layout = GGUFLayout(qt.name, n, k, qs.contiguous(), hdr)
    settle(layout.tensors())
    return layout


def _check_layout(layout, name: str) -> QType:
    expect(isinstance(layout, GGUFLayout), name, "a GGUFLayout", type(layout).__name__)
    qt = gguf_type(layout.qtype, f"{name}.qtype")
    expect(layout.k % qt.block == 0, name, f"K a multiple of the {qt.name} block size {qt.block}",
           f"K={layout.k}")
    want = {"qs": (layout.n, layout.blocks_per_row, qt.quant_bytes),
            "hdr": (layout.n, layout.header_row_bytes)}
    for part, shape in want.items():
        t = getattr(layout, part)
        _expect_bytes(f"{name}.{part}", t)
        expect(tuple(t.shape) == shape, f"{name}.{part}", f"shape {shape} for {qt.name} N={layout.n} "
               f"K={layout.k}", tuple(t.shape))
    expect_tensor(f"{name}.hdr", layout.hdr, device=layout.qs)
    return qt


def from_layout(layout: GGUFLayout, *, name: str = "layout") -> torch.Tensor:
    """Exact inverse of ``to_layout``: GGUFLayout -> stored bytes uint8 [N, K/B*S]."""
    qt = _check_layout(layout, name)
    n, nb = layout.n, layout.blocks_per_row
    raw = torch.empty(n, nb, qt.nbytes, dtype=torch.uint8, device=layout.qs.device)
    for f in qt.fields:
        raw[..., f.offset:f.offset + f.size] = layout.field(f.name)
    return raw.view(n, nb * qt.nbytes)


def dequantize_layout(layout: GGUFLayout, *, name: str = "layout") -> torch.Tensor:
    """Reference dequantization read straight from the layout's planes -> float32 [N, K]."""
    qt = _check_layout(layout, name)
    m = layout.n * layout.blocks_per_row
    fields = {f.name: layout.field(f.name).reshape(m, f.size) for f in qt.fields}
    return _decode(qt, fields, layout.n, layout.k)


# ---------------------------------------------------------------------------------------------
# .gguf files

@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    qtype: str              # ggml type name: "Q4_K", "F16", "IQ2_XXS", ...
    shape: Tuple[int, ...]  # torch order (ggml ne reversed): (N, K) for a linear weight
    nbytes: int
    offset: int             # absolute byte offset of the data in the file

    @property
    def loadable(self) -> bool:
        """A 2-D tensor that load_gguf_linear_tensors returns."""
        return len(self.shape) == 2 and (self.qtype in TYPES or self.qtype in FLOAT_TYPES)


def _infos(reader) -> Dict[str, GGUFTensorInfo]:
    # ggml lists dims innermost first (ne0 = K); torch order reverses them
    return {t.name: GGUFTensorInfo(t.name, t.tensor_type.name, tuple(int(x) for x in t.shape.tolist()[::-1]),
                                   int(t.n_bytes), int(t.data_offset)) for t in reader.tensors}


def read_gguf_header(path) -> Dict[str, GGUFTensorInfo]:
    """Tensor names, types and shapes of a .gguf file, in file order; no tensor data is read
    (gguf.GGUFReader memory-maps the file and only touches the header pages)."""
    from gguf import GGUFReader
    return _infos(GGUFReader(path))


def load_gguf_linear_tensors(path, names: Optional[Iterable[str]] = None
                             ) -> Dict[str, Tuple[str, Tuple[int, int], torch.Tensor]]:
    """2-D tensors of a supported block type or F32/F16/BF16 -> {name: (qtype name, (N, K), tensor)}.

    Block types give the stored bytes uint8 [N, K/B*S] (feed to ``to_layout`` / ``dequantize``); float
    types give the float tensor [N, K].  Tensors are copied out of the memory map.  ``names`` restricts
    the result to those tensors; other tensors (1-D norms, unsupported types) are skipped.
    """
    from gguf import GGUFReader
    reader = GGUFReader(path)
    wanted = None if names is None else set(names)
    out = {}
    for t, info in zip(reader.tensors, _infos(reader).values()):
        if not info.loadable or (wanted is not None and info.name not in wanted):
            continue
        data = torch.from_numpy(np.array(t.data))            # copy: the memmap is read-only
        if info.qtype in FLOAT_TYPES:
            data = data.view(torch.uint8).view(FLOAT_TYPES[info.qtype]).view(info.shape)
        else:
            data = _check_raw(data, info.qtype, info.shape, info.name)[0]
        out[info.name] = (info.qtype, info.shape, data)
    return out
