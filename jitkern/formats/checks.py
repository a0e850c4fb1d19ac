"""Input validation shared by the weight-format converters.

Every failure is a ``ValueError`` whose message starts with the offending argument's name and says
what was expected and what was found, e.g. ``"qzeros: expected shape (2, 16), got (2, 8)"``.  Loaders
call these once per layer, so clarity beats speed here.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import torch

INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

DTypes = Union[torch.dtype, Sequence[torch.dtype]]
Device = Union[str, torch.device, torch.Tensor]


def fail(name: str, expected: str, got) -> None:
    raise ValueError(f"{name}: expected {expected}, got {got}")


def expect(ok: bool, name: str, expected: str, got) -> None:
    """Raise unless ``ok``; ``got`` is only formatted on failure."""
    if not ok:
        fail(name, expected, got)


def expect_choice(name: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    # bool is an int subclass: keep bools and ints apart so ``bits=True`` is not 1 and ``sym=1`` not True
    if not any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in choices):
        fail(name, f"one of {choices}", repr(value))


def vector_rows(t: torch.Tensor) -> bool:
    """fp16/bf16 rows the kernels can load 16 bytes at a time: contiguous within a row, every row
    starting 16-byte aligned."""
    return t.stride(-1) == 1 and t.stride(0) % 8 == 0 and t.data_ptr() % 16 == 0


def loadable_rows(t: torch.Tensor) -> torch.Tensor:
    """t, or a contiguous copy where its rows are not vector_rows (e.g. a view at an odd storage
    offset).  Called inside the torch ops, where tensors are real also under torch.compile (tracing
    cannot read an address)."""
    return t if vector_rows(t) else t.clone(memory_format=torch.contiguous_format)


def rows_in_32bit_reach(t: torch.Tensor) -> torch.Tensor:
    """t, or a contiguous copy where the GEMVs' 32-bit offsets into it (row m at m * stride(0)
    elements, in bytes on gfx906) would pass 2^31 elements: only views with a huge row pitch."""
    return t if t.stride(0) * (t.shape[0] - 1) + t.shape[-1] < 2 ** 31 else t.contiguous()


def _same_device(actual: torch.device, wanted: torch.device) -> bool:
    # "cuda" (no index) matches any cuda device; an explicit index must match exactly
    return actual.type == wanted.type and (wanted.index is None or actual.index == wanted.index)


def expect_tensor(name: str, t, *, dtype: Optional[DTypes] = None, ndim: Optional[int] = None,
                  shape: Optional[Sequence[Optional[int]]] = None,
                  device: Optional[Device] = None) -> torch.Tensor:
    """Check a tensor argument and return it.

    ``dtype`` is one dtype or a sequence of accepted dtypes; ``shape`` may hold ``None`` for any size
    (it implies ``ndim``); ``device`` is a device, a string, or a tensor whose device must match.
    """
    if not isinstance(t, torch.Tensor):
        fail(name, "a torch.Tensor", type(t).__name__)
    if dtype is not None:
        allowed = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if t.dtype not in allowed:
            fail(name, f"dtype {allowed[0] if len(allowed) == 1 else 'in ' + str(allowed)}", t.dtype)
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and t.dim() != ndim:
        fail(name, f"{ndim}-D tensor", f"shape {tuple(t.shape)}")
    if shape is not None and any(w is not None and w != s for w, s in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if w is None else str(w) for w in shape) + ")"
        fail(name, f"shape {want}", tuple(t.shape))
    if device is not None:
        wanted = device.device if isinstance(device, torch.Tensor) else torch.device(device)
        if not _same_device(t.device, wanted):
            fail(name, f"device {wanted} (same as the other inputs)", t.device)
    return t


def expect_range(name: str, t: torch.Tensor, lo: int, hi: int) -> None:
    """All values in ``[lo, hi]`` (inclusive).  Empty tensors pass."""
    if t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
        fail(name, f"values in [{lo}, {hi}]", f"range [{int(t.min())}, {int(t.max())}]")
