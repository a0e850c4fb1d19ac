"""Launch planning of the tensor-core GEMVs (GPTQ: jitkern/ops/splitk.py; GGUF: ops/gguf.py mma_warps),
on the CPU with a stand-in kernel."""
from __future__ import annotations

import pytest
import torch

from jitkern.ops import gguf, splitk


class FakeKernel:
    """What plan() reads of a loaded kernel: its consts and how many blocks an SM keeps resident."""

    def __init__(self, registers: int, threads: int = 512, unroll: int = 4, **consts):
        self.consts = {"threads": threads, "unroll": unroll, "max_threads": threads, **consts}
        self.registers = registers

    def resident_blocks(self, threads: int) -> int:
        return min(65536 // (self.registers * threads), 2048 // threads)


@pytest.fixture
def h100(monkeypatch):
    monkeypatch.setattr(splitk, "multiprocessors", lambda device: 132)
    monkeypatch.setattr(splitk, "_plans", {})
    monkeypatch.setattr(gguf, "_warps", {})


@pytest.mark.parametrize("tiles,units,expect", [
    (128, 128, (512, 1)),     # N = K = 4096: a block a tile already fills 128 of 132 SMs
    (896, 128, (128, 1)),     # N = 28672: no block size fits in one wave; the smallest
    (192, 128, (256, 1)),     # N = 6144: 256-thread blocks are all resident at once, 512 are not
    (320, 256, (128, 1)),     # N = 10240: only 128-thread blocks fit in one wave
    (160, 160, (256, 1)),     # N = K = 5120: one wave at 61% of its slots beats 1.2 waves of 512
    (32, 448, (512, 4)),      # N = 1024, K = 14336: 32 tiles on 132 SMs split K four ways
    (64, 256, (512, 2)),      # N = 2048, K = 8192
    (32, 8, (128, 1)),        # K = 256: too little K for more warps or any split
])
def test_plan(h100, tiles, units, expect):
    got = splitk.plan(FakeKernel(registers=116), tiles, units, torch.device("cpu"))
    assert got == expect
    threads, splits = got
    assert (threads // 32) * splits * 4 <= max(units, 4 * 4), "every warp streams at least one step"


@pytest.mark.parametrize("blocks,pipelined,expect", [
    (1792, False, 4),     # 70B gate_up, 32-row blocks: one wave needs 1-warp blocks; a lone warp is too slow
    (1792, True, 1),      # ... unless it keeps two steps in flight
    (3584, False, 16),    # no block size gives one wave: the largest
    (448, False, 4),      # 4-warp blocks fit in one wave
    (100, False, 16),
])
def test_gguf_mma_warps(h100, blocks, pipelined, expect):
    kernel = FakeKernel(registers=128, threads=512, pipelined=pipelined)
    assert gguf.mma_warps(kernel, blocks, torch.device("cpu")) == expect


def test_workspace_grows_and_keeps_old_buffers(monkeypatch):
    monkeypatch.setattr(splitk, "_workspaces", {})
    monkeypatch.setattr(splitk, "_retired", [])
    dev = torch.device("cpu")
    sums, done = splitk.workspace(dev, 100, 8)
    assert sums.numel() >= 100 and done.numel() >= 8 and not done.any()
    assert splitk.workspace(dev, 50, 4)[0] is sums                 # big enough: the same buffers
    bigger, done2 = splitk.workspace(dev, 1000, 16)
    assert bigger.numel() >= 1000 and done2.numel() >= 16 and not done2.any()
    assert any(old[0] is sums for old in splitk._retired), "captured graphs may still point at the old ones"
