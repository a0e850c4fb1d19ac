#!/usr/bin/env python3
"""A few calls of one `tools/bench.py` implementation on one shape, for a profiler to catch
(tools/ncu.sh): the weights and activations the benchmark would use, no graph, no timing.

    python3 tools/ncu_call.py jitkern-gguf-q4_k 8192 57344 1       # IMPL K N M
"""
from __future__ import annotations

import argparse

import torch

from jitkern.bench import IMPLS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("impl", choices=sorted(IMPLS))
    p.add_argument("k", type=int)
    p.add_argument("n", type=int)
    p.add_argument("m", type=int)
    p.add_argument("--calls", type=int, default=4)
    a = p.parse_args(argv)
    dev = torch.device("cuda")
    fn, copies, nbytes = IMPLS[a.impl](a.k, a.n, a.m, dev)
    x = torch.randn(a.m, a.k, device=dev, dtype=torch.float16)
    for i in range(a.calls):
        y = fn(i % copies, x)
    torch.cuda.synchronize()
    print(f"{a.impl} K={a.k} N={a.n} M={a.m}: {a.calls} calls, {nbytes} weight bytes, out {tuple(y.shape)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
