"""The benchmark's read-only floor kernel (jitkern/bench_floor.py) really reads every word: its
per-program sums add up to the buffer's sum, tail included, in Triton's interpreter on the CPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = r"""
import sys, torch
from jitkern.bench_floor import _read_kernel
triton, read_words = _read_kernel()
g = torch.Generator().manual_seed(int(sys.argv[1]))
words = 3 * 1024 + 77                                  # not a whole number of blocks
src = torch.randint(-2 ** 20, 2 ** 20, (words,), dtype=torch.int32, generator=g)
out = torch.full((triton.cdiv(words, 1024),), -7, dtype=torch.int32)
read_words[(out.numel(),)](src, out, words, BLOCK=1024)
print(int(out.sum()), int(src.sum()), int(src[3 * 1024:].sum()), int(out[-1]))
"""


def test_read_floor_reads_every_word(seed):
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(seed)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got, want, tail_want, tail_got = map(int, run.stdout.split())
    assert got == want and tail_got == tail_want
