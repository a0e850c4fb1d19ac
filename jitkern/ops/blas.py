"""fp16 GEMMs for the prefill paths, with fp32 sums all the way.

torch lets cuBLAS reduce split-K partial sums in fp16 by default
(`torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction`): a partial sum beyond 65504
turns an in-range output into inf -- the `!!!!` bug again, found by the GPU fuzz tests with large
activations.  Our GEMMs switch it off for their own call and restore it.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def fp32_reductions():
    flags = torch.backends.cuda.matmul
    saved = flags.allow_fp16_reduced_precision_reduction
    flags.allow_fp16_reduced_precision_reduction = False
    try:
        yield
    finally:
        flags.allow_fp16_reduced_precision_reduction = saved


def matmul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b with fp32 accumulation and fp32 split-K reductions (fp16 result)."""
    with fp32_reductions():
        return torch.matmul(a, b, out=out) if out is not None else torch.matmul(a, b)
