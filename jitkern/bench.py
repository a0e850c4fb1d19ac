"""Benchmark harness: jitkern kernels vs fp16 F.linear (and peers) on LLM layer shapes.

Method (tools/bench.py, `jitkern bench`): every implementation runs inside a CUDA/HIP graph that
walks over enough rotating weight copies that the L2 cannot hold them, replayed many times; time per
call = graph time / calls.  Effective bandwidth = bytes that must move (packed weights + scales +
zeros + activations + outputs) / time.  Every number is reported with the ratio to fp16 F.linear on
the same shape in the same run, and the GPU's name.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = {  # (K = in_features, N = out_features)
    "llama3-8b.qkv": (4096, 6144), "llama3-8b.o": (4096, 4096), "llama3-8b.gate_up": (4096, 28672),
    "llama3-8b.down": (14336, 4096), "llama3-70b.qkv": (8192, 10240), "llama3-70b.o": (8192, 8192),
    "llama3-70b.gate_up": (8192, 57344), "llama3-70b.down": (28672, 8192),
}
LM_HEAD = {"llama3.lm_head": (4096, 128256)}
ROTATE_BYTES = 256 << 20       # > 5x the H100's 50 MB L2; MI50's is 4 MB


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def time_graph(fn_per_copy, copies: int, x: torch.Tensor, iters: int = 20) -> float:
    """Seconds per call of fn_per_copy(i, x), measured by replaying a graph over all copies."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(copies):          # warm up: compile, load, allocate outside capture
            fn_per_copy(i, x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(copies):
            fn_per_copy(i, x)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = math.inf
    for _ in range(3):
        start.record()
        for _ in range(iters):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / (iters * copies))
    del graph
    return best


def random_int_layout(k: int, n: int, bits: int, group: int, sym: bool, device, act_order: bool = False):
    """A random but valid int layout built directly on the GPU (quantizing 470M weights on a CPU would
    dominate the run; the kernels' speed does not depend on the values).  act_order: rows in a random
    order (x is gathered through it), groups contiguous as load-time conversion leaves them."""
    from .formats.layout import TILE_N, IntLayout, round_up, settle

    n_pad = round_up(n, TILE_N)
    groups = k // group if group > 0 else 1
    qweight = torch.randint(-2 ** 31, 2 ** 31 - 1, (n_pad // TILE_N, k * bits // 32, TILE_N),
                            dtype=torch.int32, device=device)
    scales = (torch.rand(groups, n_pad, device=device) * 0.01).half()
    zeros = None if sym else torch.randint(0, 2 ** bits, (groups, n_pad), dtype=torch.uint8, device=device)
    perm = unit_group = None
    if act_order:
        perm = torch.randperm(k, device=device).int()
        unit_group = (torch.arange(k // 32, device=device) * 32 // (group if group > 0 else k)).int()
    layout = IntLayout(bits, group if group > 0 else k, k, k, n, qweight, scales, zeros, perm, unit_group)
    settle(layout.tensors())
    return layout


def impl_fp16(k, n, m, device):
    copies = max(2, ROTATE_BYTES // (k * n * 2) + 1)
    ws = [torch.randn(n, k, device=device, dtype=torch.float16) * 0.02 for _ in range(copies)]
    return (lambda i, x: F.linear(x, ws[i])), copies, nbytes(ws[0])


def impl_jitkern_int(bits, group, sym=True, act_order=False):
    def make(k, n, m, device):
        from .ops import gptq

        one = random_int_layout(k, n, bits, group, sym, device, act_order)
        copies = max(2, ROTATE_BYTES // one.nbytes() + 1)
        layouts = [one] + [random_int_layout(k, n, bits, group, sym, device, act_order) for _ in range(copies - 1)]
        gptq.prepare(one)
        return (lambda i, x: gptq.linear(x, layouts[i])), copies, one.nbytes()
    return make


def impl_tinygemm(k, n, m, device, group=128):
    """torch's int4 tinygemm (bf16 activations), where this torch build has it."""
    w = torch.randint(0, 16, (n, k // 2), dtype=torch.uint8, device=device)
    packed = torch.ops.aten._convert_weight_to_int4pack(w, 8)
    copies = max(2, ROTATE_BYTES // (packed.numel() * packed.element_size()) + 1)
    packs = [packed] + [torch.ops.aten._convert_weight_to_int4pack(
        torch.randint(0, 16, (n, k // 2), dtype=torch.uint8, device=device), 8) for _ in range(copies - 1)]
    sz = torch.rand(k // group, n, 2, device=device).to(torch.bfloat16)
    fn = lambda i, x: torch.ops.aten._weight_int4pack_mm(x.bfloat16(), packs[i], group, sz)  # noqa: E731
    return fn, copies, nbytes(packed, sz)


def impl_dense(k, n, m, device):
    from .ops import dense

    copies = max(2, ROTATE_BYTES // (k * n * 2) + 1)
    ws = [torch.randn(n, k, device=device, dtype=torch.float16) * 0.02 for _ in range(copies)]
    dense.prepare(device)
    return (lambda i, x: dense.linear(x, ws[i])), copies, nbytes(ws[0])


def impl_gguf(qtype):
    def make(k, n, m, device):
        from .formats.gguf import random_blocks, to_layout
        from .ops import gguf

        one = to_layout(random_blocks(qtype, n, k, device=device), qtype)
        copies = max(2, ROTATE_BYTES // one.nbytes() + 1)
        # copies share one random matrix's bytes, shifted by a row so each is a distinct buffer
        layouts = [one] + [to_layout(torch.roll(one_raw, 1, 0), qtype) for one_raw in
                           [random_blocks(qtype, n, k, device=device)] * (copies - 1)]
        gguf.prepare(one)
        return (lambda i, x: gguf.linear(x, layouts[i])), copies, one.nbytes()
    return make


IMPLS = {
    "fp16": impl_fp16,
    "jitkern-dense-f16": impl_dense,
    **{f"jitkern-gguf-{t}": impl_gguf(t) for t in ("q4_0", "q4_1", "q4_k", "q6_k", "q8_0")},
    "jitkern-int3-g128": impl_jitkern_int(3, 128),
    "jitkern-int4-g128": impl_jitkern_int(4, 128),
    "jitkern-int4-g128-actorder": impl_jitkern_int(4, 128, act_order=True),
    "jitkern-int8-g128": impl_jitkern_int(8, 128),
    "tinygemm-int4-g128": impl_tinygemm,
}


def extra_impls() -> dict:
    """Families that register their own benchmark entries (GGUF, dense GEMV) when present."""
    found = {}
    for mod in ("jitkern.ops.gguf", "jitkern.ops.dense", "jitkern.bench_floor"):
        try:
            module = __import__(mod, fromlist=["BENCH_IMPLS"])
            found.update(getattr(module, "BENCH_IMPLS", {}))
        except ImportError:
            pass
    return found


def run(shapes, ms, impls, out_dir: Path | None, iters: int = 20) -> list[dict]:
    device = torch.device("cuda")
    gpu = torch.cuda.get_device_name(device)
    rows = []
    for shape, (k, n) in shapes.items():
        for m in ms:
            x = torch.randn(m, k, device=device, dtype=torch.float16)
            base = None
            for name in impls:
                make = IMPLS.get(name) or extra_impls()[name]
                try:
                    fn, copies, wbytes = make(k, n, m, device)
                    seconds = time_graph(fn, copies, x, iters)
                except Exception as e:  # a peer missing from this torch build is reported, not fatal
                    rows.append(dict(gpu=gpu, shape=shape, k=k, n=n, m=m, impl=name, error=f"{type(e).__name__}: {e}"[:200]))
                    print(f"{shape:20s} m={m:<4d} {name:22s} n/a ({type(e).__name__})", flush=True)
                    continue
                finally:
                    fn = None
                    torch.cuda.empty_cache()
                moved = wbytes + m * k * 2 + m * n * 2
                row = dict(gpu=gpu, shape=shape, k=k, n=n, m=m, impl=name, us=seconds * 1e6,
                           gbps=moved / seconds / 1e9, tflops=2 * m * k * n / seconds / 1e12)
                if name == "fp16":
                    base = row
                if base is not None:
                    row["bw_ratio"] = row["gbps"] / base["gbps"]
                    row["speed_ratio"] = base["us"] / row["us"]
                rows.append(row)
                print(f"{shape:20s} m={m:<4d} {name:22s} {row['us']:9.1f} us {row['gbps']:8.0f} GB/s "
                      f"bw x{row.get('bw_ratio', float('nan')):.3f} time x{row.get('speed_ratio', float('nan')):.3f}",
                      flush=True)
    summary = summarize(rows)
    print(format_summary(summary, gpu))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench.json").write_text(json.dumps({"gpu": gpu, "torch": torch.__version__,
                                                        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                        "rows": rows, "summary": summary}, indent=1))
        plot(rows, out_dir / "bench.png", gpu)
    return rows


def summarize(rows) -> list[dict]:
    """Geometric mean over shapes of the ratio to fp16, per (impl, m)."""
    out = []
    for impl in dict.fromkeys(r["impl"] for r in rows):
        for m in dict.fromkeys(r["m"] for r in rows):
            sel = [r for r in rows if r["impl"] == impl and r["m"] == m and "bw_ratio" in r]
            if not sel or impl == "fp16":
                continue
            key = "speed_ratio" if m > 16 else "bw_ratio"
            vals = [r[key] for r in sel]
            out.append(dict(impl=impl, m=m, metric=key, geomean=math.exp(sum(map(math.log, vals)) / len(vals)),
                            worst=min(vals), shapes=len(vals)))
    return out


def format_summary(summary, gpu) -> str:
    lines = [f"\nsummary on {gpu}: geometric mean over shapes of the ratio to fp16 F.linear "
             f"(bandwidth for M<=16, throughput above)"]
    lines += [f"  {s['impl']:22s} m={s['m']:<4d} {s['metric']:11s} geomean {s['geomean']:.3f}  worst {s['worst']:.3f}"
              for s in summary]
    return "\n".join(lines)


def plot(rows, path: Path, gpu: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    impls = [i for i in dict.fromkeys(r["impl"] for r in rows) if i != "fp16"]
    ms = sorted({r["m"] for r in rows})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for impl in impls:
        ys = []
        for m in ms:
            sel = [r.get("bw_ratio" if m <= 16 else "speed_ratio") for r in rows if r["impl"] == impl and r["m"] == m]
            sel = [v for v in sel if v]
            ys.append(math.exp(sum(map(math.log, sel)) / len(sel)) if sel else float("nan"))
        ax.plot(range(len(ms)), ys, marker="o", label=impl)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(range(len(ms)), [str(m) for m in ms])
    ax.set_xlabel("M (tokens)")
    ax.set_ylabel("ratio to fp16 F.linear (geomean over shapes)")
    ax.set_title(f"jitkern vs fp16 F.linear on {gpu}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="jitkern bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Example: jitkern bench --out results --ms 1,8,512 --impls fp16,jitkern-int4-g128")
    p.add_argument("--out", type=Path, help="directory for bench.json and bench.png")
    p.add_argument("--ms", default="1,2,4,8,16,512", help="comma-separated batch sizes")
    p.add_argument("--impls", default="fp16,jitkern-int4-g128,jitkern-int8-g128,tinygemm-int4-g128", help=f"comma-separated, from {list(IMPLS)} (+ GGUF/dense when present)")
    p.add_argument("--shapes", default="all", help=f"comma-separated from {list(SHAPES) + list(LM_HEAD)}, or 'all'")
    p.add_argument("--iters", type=int, default=20)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("no GPU visible to torch: the benchmark needs one")
    table = {**SHAPES, **LM_HEAD}
    shapes = SHAPES if a.shapes == "all" else {s: table[s] for s in a.shapes.split(",")}
    impls = a.impls.split(",")
    if "fp16" not in impls:
        impls.insert(0, "fp16")
    run(shapes, [int(v) for v in a.ms.split(",")], impls, a.out, a.iters)
    return 0
