"""Reference points for the benchmark that are not products: how long a kernel that only *reads* a
layer's bytes takes in the same harness (graph replay, rotating copies).  A GEMV cannot beat it, so
`jitkern time / read time` says how much of a gap is the kernel's and how much is the harness's
fixed per-launch cost (launch gap, memory latency ramp, tail), which small int4 layers feel most."""
from __future__ import annotations

import torch


def _read_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def read_words(src, out, n_words, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        words = tl.load(src + offs, mask=offs < n_words, other=0)
        tl.store(out + tl.program_id(0), tl.sum(words, axis=0))

    return triton, read_words


def impl_read(bits: int, group: int):
    """Reads exactly the bytes of a random `bits`/`group` jitkern int layer (weights and scales)."""
    def make(k, n, m, device):
        from .bench import ROTATE_BYTES, random_int_layout

        triton, read_words = _read_kernel()
        one = random_int_layout(k, n, bits, group, True, device)
        words = one.nbytes() // 4
        copies = max(2, ROTATE_BYTES // one.nbytes() + 1)
        bufs = [torch.randint(-2 ** 31, 2 ** 31 - 1, (words,), dtype=torch.int32, device=device) for _ in range(copies)]
        block = 8192                    # 32 words a thread: 8 loads of 16 bytes in flight
        grid = (triton.cdiv(words, block),)
        out = torch.empty(grid[0], dtype=torch.int32, device=device)

        def fn(i, x):
            read_words[grid](bufs[i], out, words, BLOCK=block, num_warps=8)
            return out
        return fn, copies, one.nbytes()
    return make


BENCH_IMPLS = {"read-int4-g128": impl_read(4, 128), "read-int8-g128": impl_read(8, 128)}
