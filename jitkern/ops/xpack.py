"""The wgmma GEMMs' activation packer (templates/x_pack.hip.j2), shared by the GPTQ and GGUF GEMMs."""
from __future__ import annotations

import ctypes

import torch


def pack(kernel, x: torch.Tensor, perm: torch.Tensor, tokens: int) -> torch.Tensor:
    """x[:, perm] in the GEMM's [M tiles, K steps, tokens, 64] swizzled tiles, zero-padded."""
    m, k = x.shape[0], perm.numel()
    xp = torch.empty(-(-m // tokens) * -(-k // 64) * tokens * 64, dtype=torch.float16, device=x.device)
    chunks, threads = xp.numel() // 8, kernel.consts["threads"]
    kernel((-(-chunks // threads),), (threads,), x, perm, xp, m, k, x.stride(0), ctypes.c_longlong(chunks))
    return xp
