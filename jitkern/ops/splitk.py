"""Launch shape of the tensor-core GEMV kernels: warps a block and K splits over blocks.

A GEMV streams each weight byte once, so its speed is how many loads are in flight.  A layer with
fewer 32-column tiles than SMs (N = 1024: 32 tiles on an H100's 132) cannot fill the GPU with one
block a tile; it splits K over several blocks, which leave fp32 partial sums in a workspace that
the last block of each tile adds up (the split-K epilogue of templates/gptq_gemv.hip.j2).
"""
from __future__ import annotations

import torch

MAX_SPLITS = 4

_multiprocessors: dict[int, int] = {}
_plans: dict[tuple, tuple[int, int]] = {}


def multiprocessors(device: torch.device) -> int:
    found = _multiprocessors.get(device.index)
    if found is None:
        found = _multiprocessors[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    return found


def plan(kernel, tiles: int, units: int, device: torch.device) -> tuple[int, int]:
    """(threads a block, splits of K) for a kernel with consts threads (the most) and unroll.

    Threads: the largest block (most warps streaming each tile) whose grid is resident all at once,
    every warp with at least one unrolled step of units; where no block size gives a single wave,
    the smallest (many small blocks even out the tail).  Measured on an H100, int4 M=1: N = 6144
    11.7 -> 9.2 us with 256 threads instead of 512, N = 10240 23.1 -> 21.7 us with 128, N = 57344
    104.5 -> 87.9 us with 128.
    One wave wins even where it fills few of its slots (N = K = 5120, 160 tiles, 256 threads: 61%):
    7.4 us against 9.6 with 512 threads.
    Splits: only where there are fewer tiles than SMs (splitting layers that already give every
    SM a block, e.g. N = 4096, made them slower)."""
    key = (id(kernel), tiles, units)
    found = _plans.get(key)
    if found is not None:
        return found
    sms, step = multiprocessors(device), kernel.consts["unroll"]
    sizes = [t for t in (128, 256, 512) if t <= kernel.consts["threads"] and (t // 32) * step <= max(units, 4)]
    sizes = sizes or [128]
    one_wave = [t for t in sizes if tiles <= sms * kernel.resident_blocks(t)]
    best = max(one_wave) if one_wave else min(sizes)
    splits = max(1, min(MAX_SPLITS, sms // tiles, units // ((best // 32) * step)))
    _plans[key] = found = (best, splits)
    return found


_workspaces: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
_retired: list[tuple[torch.Tensor, torch.Tensor]] = []


def workspace(device: torch.device, sums: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 partial sums (at least `sums` floats) and per-tile counters (zero; the kernels re-arm
    them) shared by the launches on one device.  Launches on one stream never overlap in their use
    of it (a kernel started early by programmatic dependent launch waits for the one before it
    first); concurrent split launches on two streams of one device are not supported.

    Call it when a layer is prepared, outside graph capture: a larger request replaces the buffers
    but keeps the old ones alive, since captured graphs hold their addresses."""
    have = _workspaces.get(device.index)
    if have is None or have[0].numel() < sums or have[1].numel() < tiles:
        if have is not None:
            _retired.append(have)
        n_sums = max(sums, 0 if have is None else have[0].numel())
        n_tiles = max(tiles, 0 if have is None else have[1].numel())
        have = _workspaces[device.index] = (torch.empty(n_sums, dtype=torch.float32, device=device),
                                            torch.zeros(n_tiles, dtype=torch.int32, device=device))
    return have
