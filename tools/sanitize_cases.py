#!/usr/bin/env python3
"""Edge-shape cases over every kernel family, for compute-sanitizer (tools/sanitize.sh runs this).

Every family (gptq_gemv, gptq_dequant, x_gather on NVIDIA act-order cases, dense_gemv, q8_1_quantize,
gguf_gemv, gguf_dequant) runs at its edge shapes: the smallest legal N and K, N not a multiple of the
kernel's tile (32 columns for GPTQ, 8 rows for GGUF and dense), K equal to one group (the
per-column-scale kernels), a short last group, M = 1..8 (1..16 for the dense GEMV) and one prefill
size (also in bounded-workspace strips).  Kernels are launched through the public ops functions, so
the shapes and arguments are the ones a model sends.  Each output is also checked against a float64
reference (error relative to |x| @ |W|^T, which does not blow up where a sum cancels), so a wrong
answer is reported too.

    python3 tools/sanitize_cases.py --list                  # cases and kernels; no GPU needed
    python3 tools/sanitize_cases.py --warm --jobs 16        # compile every kernel used, in parallel
    python3 tools/sanitize_cases.py --run --json OUT.json   # run the cases (under compute-sanitizer)
    python3 tools/sanitize_cases.py --run --only shared      # only cases launching kernels that use
                                                              # shared memory (racecheck)
    python3 tools/sanitize_cases.py --run --device cpu       # the same cases on the CPU reference paths

Run it with PYTORCH_NO_CUDA_MEMORY_CACHING=1 (sanitize.sh does): every tensor is then its own
allocation, so memcheck sees a read one element past a tensor instead of a read inside torch's pool.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

# (bits, group, sym, act_order, checkpoint format): every bit width, every group kind, sym and
# asym, act-order, v1 and v2 zero points.
GPTQ_VARIANTS = [(2, 32, True, False, "gptq"), (2, 64, False, True, "gptq_v2"), (3, 32, False, False, "gptq"),
                 (3, 128, True, True, "gptq"), (4, 128, True, False, "gptq"), (4, 32, False, True, "gptq"),
                 (4, 64, False, False, "gptq_v2"), (4, -1, False, False, "gptq"), (8, 32, False, False, "gptq"),
                 (8, 128, True, True, "gptq_v2")]
GGUF_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")
DENSE_SHAPES = [(1, 8), (13, 72), (77, 520), (8, 64)]      # (N, K): smallest; N % 8 and K % 64 != 0
PREFILL_M = 13
TOL = 2.0 ** -9        # max |out - ref| / (|x| @ |W|^T): fp16 weights/outputs (2^-11 each) + slack


def nmin(bits: int) -> int:
    """Smallest N a GPTQ checkpoint can have (qzeros packs N along int32 words; 3-bit in 32s)."""
    return 32 if bits == 3 else 32 // bits


def gptq_shapes(bits: int, group: int) -> list[tuple[int, int]]:
    """(N, K): smallest legal (K = 32, one group), N off the 32-column tile with several groups and a
    short last group, and K equal to one group of the variant's size."""
    g = 64 if group == -1 else group
    off_tile = 96 if bits == 3 else 32 + nmin(bits)
    shapes = [(nmin(bits), 32), (off_tile, 2 * g + 32 if g > 32 else 3 * g), (nmin(bits), g)]
    return list(dict.fromkeys(shapes))


@dataclass
class Case:
    family: str                  # gptq | awq | dense | gguf
    name: str
    params: dict
    ms: list
    kernels: set = field(default_factory=set)   # family names launched (filled by --run)


def cases() -> list[Case]:
    out = []
    for bits, group, sym, act, fmt in GPTQ_VARIANTS:
        for n, k in gptq_shapes(bits, group):
            out.append(Case("gptq", f"gptq w{bits} g{group} {'sym' if sym else 'asym'}{' act' if act else ''} "
                                    f"{fmt} N={n} K={k}",
                            dict(bits=bits, group=group, sym=sym, act_order=act, fmt=fmt, n=n, k=k),
                            list(range(1, 9)) + [PREFILL_M]))
    for n, k in ((8, 32), (40, 96)):             # AWQ: 4-bit, zero points, its own repack
        out.append(Case("awq", f"awq w4 g32 N={n} K={k}", dict(group=32, n=n, k=k), list(range(1, 9)) + [PREFILL_M]))
    for n, k in DENSE_SHAPES:
        out.append(Case("dense", f"dense f16 N={n} K={k}", dict(n=n, k=k), list(range(1, 17))))
    from jitkern.formats.gguf_quants import TYPES

    for t in GGUF_TYPES:
        b = TYPES[t].block
        for n, k in ((1, b), (9, b), (13, 3 * b)):
            out.append(Case("gguf", f"gguf {t.lower()} N={n} K={k}", dict(qtype=t, n=n, k=k),
                            list(range(1, 9)) + [PREFILL_M - 2]))
    from jitkern.ops.gguf_gemm import takes_k

    for t in GGUF_TYPES:                         # a K the Hopper GEMM takes (whole windows, aligned planes), even N
        k = next(k for k in (1024, 2048) if takes_k(t, k))
        out.append(Case("gguf", f"gguf {t.lower()} N=14 K={k}", dict(qtype=t, n=14, k=k), [PREFILL_M - 2]))
    # NaN in one activation and Inf in one scale: no crash, no stray access, non-finite exactly
    # in the affected row / column.
    for kind, params in [("gptq", dict(bits=4, group=32, sym=False, act_order=True, fmt="gptq", n=40, k=96)),
                         ("gptq", dict(bits=3, group=64, sym=True, act_order=False, fmt="gptq_v2", n=32, k=128)),
                         ("dense", dict(n=13, k=72))] + \
                        [("gguf", dict(qtype=t, n=9, k=2 * TYPES[t].block)) for t in GGUF_TYPES]:
        out.append(Case("nonfinite", f"nan/inf {kind} {params.get('qtype', '').lower()} N={params['n']} "
                                     f"K={params['k']}".replace("  ", " "),
                        dict(kind=kind, **params), [1, 8, PREFILL_M]))
    return out


def case_specs(c: Case, arch: str) -> list:
    """The kernels a case launches on ``arch`` (as the ops modules resolve them)."""
    from jitkern.ops import dense, gguf, gptq
    from jitkern.spec import KernelSpec

    p = c.params
    if c.family == "nonfinite":
        return case_specs(Case(p["kind"], c.name, p, c.ms), arch)
    if c.family == "dense":
        return dense.kernel_specs(arch)
    if c.family == "gguf":
        return gguf.kernel_specs(p["qtype"], arch) + [KernelSpec("gguf_dequant", p["qtype"].lower(), act="f32", arch=arch)]
    group = p["group"] if 0 < p["group"] < p["k"] else -1          # as ops.gptq.kernel_group
    if c.family == "awq":
        return gptq.kernel_specs(4, group, False, False, arch)
    return gptq.kernel_specs(p["bits"], group, p["sym"], p["act_order"], arch)


def kernel_specs(arch: str) -> list:
    """Every kernel the cases (and tests/test_fuzz_gpu.py's variants) can launch on ``arch``."""
    from jitkern.ops import dense, gguf, gptq
    from jitkern.spec import KernelSpec

    specs = []
    for bits in (2, 3, 4, 8):
        for group in (32, 64, 128, -1):
            for sym in (True, False):
                for act in (True, False):
                    specs += gptq.kernel_specs(bits, group, sym, act, arch)
    specs += dense.kernel_specs(arch)
    for t in GGUF_TYPES:
        specs += gguf.kernel_specs(t, arch)
        specs.append(KernelSpec("gguf_dequant", t.lower(), act="f32", arch=arch))
    return list(dict.fromkeys(specs))


# ---------------------------------------------------------------------------------------------
# running

def _check(out, ref, x, w, what: str, failures: list, bias=None) -> None:
    """Elementwise |out - ref| <= TOL * (|x| @ |W|^T + |bias|) + tiny (NaN anywhere fails)."""
    out = out.detach().double().cpu()
    scale = x.double().abs() @ w.double().abs().t() + (0 if bias is None else bias.double().abs())
    err = (out - ref).abs()
    bad = ~(err <= TOL * scale + 2.0 ** -24)
    if bad.any():
        i = bad.nonzero()[0].tolist()
        failures.append(f"{what}: {int(bad.sum())} of {bad.numel()} outputs off, e.g. {tuple(i)}: "
                        f"got {out[tuple(i)].item():.6g}, want {ref[tuple(i)].item():.6g}")


class _Counter:
    """Counts launches per kernel family (wraps runtime.Kernel.__call__)."""

    def __init__(self):
        from jitkern import runtime

        self.counts: dict[str, int] = {}
        self.current: set = set()
        orig = runtime.Kernel.__call__

        def call(kernel, *a, **k):
            self.counts[kernel.spec.family] = self.counts.get(kernel.spec.family, 0) + 1
            self.current.add(kernel.spec.uri)
            return orig(kernel, *a, **k)

        runtime.Kernel.__call__ = call


def _gptq_layer(c: Case, g: torch.Generator):
    from jitkern.formats.gptq import dequantize_gptq, gptq_to_layout, quantize_gptq

    p = c.params
    w = torch.randn(p["n"], p["k"], generator=g)
    ck = quantize_gptq(w, p["bits"], p["group"], sym=p["sym"], act_order=p["act_order"],
                       checkpoint_format=p["fmt"], generator=g)
    ref_w = dequantize_gptq(ck["qweight"], ck["qzeros"], ck["scales"], ck["g_idx"], p["bits"], p["group"], p["fmt"])
    layout = gptq_to_layout(ck["qweight"], ck["qzeros"], ck["scales"], ck["g_idx"], p["bits"], p["group"],
                            p["sym"], checkpoint_format=p["fmt"])
    return layout, ref_w


def _awq_layer(c: Case, g: torch.Generator):
    from jitkern.formats.awq import awq_to_layout, dequantize_awq, quantize_awq

    p = c.params
    ck = quantize_awq(torch.randn(p["n"], p["k"], generator=g), p["group"])
    ref_w = dequantize_awq(ck["qweight"], ck["qzeros"], ck["scales"], p["group"])
    return awq_to_layout(ck["qweight"], ck["qzeros"], ck["scales"], p["group"]), ref_w


def run_int(c: Case, dev: str, g: torch.Generator, failures: list) -> None:
    from jitkern.formats.intpack import layout_row_groups, unpack_layout
    from jitkern.nn import quant_linear

    layout, ref_w = (_gptq_layer if c.family == "gptq" else _awq_layer)(c, g)
    layout = layout.to(dev)
    bias = torch.randn(layout.n, generator=g).half()
    for m in c.ms:
        x = torch.randn(m, layout.k_in, generator=g).half()
        for b in (None, bias) if m in (1, PREFILL_M) else (None,):
            ref = x.double() @ ref_w.t() + (0 if b is None else b.double())
            out = quant_linear(x.to(dev), layout, None if b is None else b.to(dev))
            _check(out, ref, x, ref_w, f"{c.name} M={m}{' bias' if b is not None else ''}", failures, b)
    if dev == "cpu":
        return
    from jitkern.families import GEMM_TOKENS
    from jitkern.formats.layout import TILE_N
    from jitkern.ops import gptq as ops

    x = torch.randn(PREFILL_M, layout.k_in, generator=g).half()
    os.environ["JITKERN_WORKSPACE_MB"] = "0"          # prefill in one-tile strips (tile0 > 0)
    try:
        out = ops.linear(x.to(dev), layout)
    finally:
        del os.environ["JITKERN_WORKSPACE_MB"]
    _check(out, x.double() @ ref_w.t(), x, ref_w, f"{c.name} prefill in strips", failures)
    found = ops.prepare(layout)
    for tokens in GEMM_TOKENS:                         # the Hopper wgmma GEMM, whatever the layer's size
        if ("gemm", tokens) not in found:
            continue
        for splits in sorted({1, min(2, -(-layout.k // 64))}):    # and K split over a cluster
            out = ops._wgmma_gemm(found, x.to(dev), layout, None, splits=splits, tokens=tokens)
            _check(out, x.double() @ ref_w.t(), x, ref_w, f"{c.name} wgmma prefill, {tokens} tokens, {splits} "
                   f"split(s)", failures)
    tiles = layout.n_pad // TILE_N
    cpu = layout.to("cpu")
    q, z = unpack_layout(cpu)
    rg = layout_row_groups(cpu)
    ref_t = (cpu.scales[:, :cpu.n].float()[rg] * (q - z[rg]).float()).half()   # [K, N], layout row order
    got = ops.dequantize(layout, tiles - 1, 1)                                  # the last, partial tile
    if not torch.equal(got.cpu(), ref_t[:, (tiles - 1) * TILE_N:]):
        failures.append(f"{c.name} dequantize last tile: not bit-exact")


def run_dense(c: Case, dev: str, g: torch.Generator, failures: list) -> None:
    from jitkern.nn_dense import dense_linear

    n, k = c.params["n"], c.params["k"]
    w = (torch.randn(n, k, generator=g) / k ** 0.5).half()
    bias = torch.randn(n, generator=g).half()
    wd, bd = w.to(dev), bias.to(dev)
    for m in c.ms:
        x = torch.randn(m, k, generator=g).half()
        b = bias if m % 4 == 1 else None
        ref = x.double() @ w.double().t() + (0 if b is None else b.double())
        out = dense_linear(x.to(dev), wd, None if b is None else bd)
        _check(out, ref, x, w.double(), f"{c.name} M={m}{' bias' if b is not None else ''}", failures, b)
    if dev != "cpu":
        from jitkern.ops import dense as ops

        wide = torch.randn(3, k + 64, generator=g).half()           # rows ldx = k + 64 apart
        out = ops.gemv(wide.to(dev)[:, :k], wd)
        _check(out, wide[:, :k].double() @ w.double().t(), wide[:, :k], w.double(), f"{c.name} strided x", failures)


def run_gguf(c: Case, dev: str, g: torch.Generator, failures: list) -> None:
    from jitkern.formats import gguf as G
    from jitkern.nn_gguf import GGUFLinear

    p = c.params
    raw = G.random_blocks(p["qtype"], p["n"], p["k"], generator=g)
    ref_w = G.dequantize(raw, p["qtype"]).double()
    bias = torch.randn(p["n"], generator=g).half()
    layer = GGUFLinear.from_raw(raw.to(dev), p["qtype"], bias=bias.to(dev))
    plain = GGUFLinear.from_raw(raw.to(dev), p["qtype"])
    for m in c.ms:
        x = torch.randn(m, p["k"], generator=g).half()
        use_bias = m % 2 == 1
        ref = x.double() @ ref_w.t() + (bias.double() if use_bias else 0)
        out = (layer if use_bias else plain)(x.to(dev))
        _check(out, ref, x, ref_w, f"{c.name} M={m}{' bias' if use_bias else ''}", failures,
               bias if use_bias else None)
    if dev == "cpu":
        return
    from jitkern.ops import gguf as ops

    lay = plain.layout
    rows = min(2, lay.n)
    row0 = lay.n - rows
    got = ops.dequantize(lay, row0, rows, dtype=torch.float32)                 # the last rows, fp32
    if not torch.equal(got.cpu(), ref_w[row0:].float()):
        failures.append(f"{c.name} dequantize rows {row0}..{lay.n}: not bit-exact")
    x = torch.randn(PREFILL_M, p["k"], generator=g).half()
    os.environ["JITKERN_WORKSPACE_MB"] = "0"          # prefill in 8-row strips
    try:
        out = ops.gemm(x.to(dev), lay)
    finally:
        del os.environ["JITKERN_WORKSPACE_MB"]
    _check(out, x.double() @ ref_w.t(), x, ref_w, f"{c.name} prefill in strips", failures)
    from jitkern.families import GGUF_GEMM_TOKENS
    from jitkern.ops import gguf_gemm

    found = ops.prepare(lay)
    hopper = ("gemm", GGUF_GEMM_TOKENS[0]) in found                  # the Hopper wgmma GEMM
    if hopper and gguf_gemm.takes_k(p["qtype"], p["k"]) and p["n"] % 2 == 0:
        for tokens in GGUF_GEMM_TOKENS:
            out = gguf_gemm.gemm(found, x.to(dev), lay, tokens=tokens)
            _check(out, x.double() @ ref_w.t(), x, ref_w, f"{c.name} wgmma prefill, {tokens}-token tiles", failures)


F16_BITS = {"nan": 0x7E00, "inf": 0x7C00, "-inf": 0xFC00}


def nonfinite_weights(c: Case, g: torch.Generator, n0: int, bad: str, dev: str):
    """(run(x) -> out, dense float64 reference weight W [N, K] with the bad scale applied)."""
    from jitkern.formats import gguf as G
    from jitkern.formats.gptq import dequantize_gptq, quantize_gptq
    from jitkern.nn import QuantLinear
    from jitkern.nn_dense import DenseLinear
    from jitkern.nn_gguf import GGUFLinear

    p = c.params
    if p["kind"] == "gptq":
        ck = quantize_gptq(torch.randn(p["n"], p["k"], generator=g), p["bits"], p["group"], sym=p["sym"],
                           act_order=p["act_order"], checkpoint_format=p["fmt"], generator=g)
        grp = int(torch.randint(0, ck["scales"].shape[0], (1,), generator=g))
        ck["scales"][grp, n0] = float(bad)
        w = dequantize_gptq(ck["qweight"], ck["qzeros"], ck["scales"], ck["g_idx"], p["bits"], p["group"], p["fmt"])
        layer = QuantLinear.from_gptq(ck["qweight"], ck["qzeros"], ck["scales"], ck["g_idx"], bits=p["bits"],
                                      group_size=p["group"], sym=p["sym"], checkpoint_format=p["fmt"])
    elif p["kind"] == "dense":
        wh = (torch.randn(p["n"], p["k"], generator=g) / p["k"] ** 0.5).half()
        wh[n0, int(torch.randint(0, p["k"], (1,), generator=g))] = float(bad)
        w, layer = wh.double(), DenseLinear(wh)
    else:
        qt = G.gguf_type(p["qtype"])
        raw = G.random_blocks(p["qtype"], p["n"], p["k"], generator=g)
        scale = next(f for f in qt.fields if f.kind.startswith("f16"))          # d (first half of dm)
        blk = int(torch.randint(0, p["k"] // qt.block, (1,), generator=g))
        at = blk * qt.nbytes + scale.offset
        raw[n0, at:at + 2] = torch.tensor([F16_BITS[bad] & 0xFF, F16_BITS[bad] >> 8], dtype=torch.uint8)
        w, layer = G.dequantize(raw, p["qtype"]).double(), GGUFLinear.from_raw(raw, p["qtype"])
    return layer.to(dev), w


def run_nonfinite(c: Case, dev: str, g: torch.Generator, failures: list) -> None:
    n, k = c.params["n"], c.params["k"]
    for bad_x, bad_w in (("nan", "inf"), ("inf", "nan"), ("-inf", "-inf")):
        n0 = int(torch.randint(0, n, (1,), generator=g))
        layer, w = nonfinite_weights(c, g, n0, bad_w, dev)
        if bool(torch.isfinite(w[n0]).all()):
            failures.append(f"{c.name}: test setup: the {bad_w} scale left row {n0} finite")
        for m in c.ms:
            x = torch.randn(m, k, generator=g).half()
            m0, j0 = int(torch.randint(0, m, (1,), generator=g)), int(torch.randint(0, k, (1,), generator=g))
            clean = x.clone()
            x[m0, j0] = float(bad_x)
            out = layer(x.to(dev)).double().cpu()
            what = f"{c.name} M={m} x[{m0},{j0}]={bad_x} scale of column {n0}={bad_w}"
            if torch.isfinite(out[m0]).any():
                failures.append(f"{what}: {int(torch.isfinite(out[m0]).sum())} finite outputs in row {m0}")
            if torch.isfinite(out[:, n0]).any():
                failures.append(f"{what}: {int(torch.isfinite(out[:, n0]).sum())} finite outputs in column {n0}")
            keep_r = [i for i in range(m) if i != m0]
            keep_c = [j for j in range(n) if j != n0]
            if keep_r and keep_c:
                wc = w[keep_c]
                _check(out[keep_r][:, keep_c], clean[keep_r].double() @ wc.t(), clean[keep_r], wc,
                       f"{what}: unaffected outputs", failures)


RUNNERS = {"gptq": run_int, "awq": run_int, "dense": run_dense, "gguf": run_gguf, "nonfinite": run_nonfinite}


def shared_memory_kernels(arch: str) -> set:
    """uris of the kernels (of kernel_specs) whose source declares __shared__ memory."""
    from jitkern.render import render

    return {s.uri for s in kernel_specs(arch) if "__shared__" in render(s)}


def run(selected: list[Case], dev: str, seed: int, only_shared: bool) -> dict:
    counter = _Counter() if dev != "cpu" else None
    shared = None
    if only_shared:
        from jitkern.arch import resolve

        shared = shared_memory_kernels(resolve(None, dev).arch)
    failures: list[str] = []
    done = []
    t0 = time.time()
    for i, c in enumerate(selected):
        g = torch.Generator().manual_seed(seed + i)
        if counter is not None:
            counter.current = set()
        try:
            RUNNERS[c.family](c, dev, g, failures)
        except Exception as e:                                   # reported, and the run goes on
            failures.append(f"{c.name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        if dev != "cpu":
            torch.cuda.synchronize()
        done.append({"case": c.name, "kernels": sorted(counter.current) if counter else []})
    summary = {"device": torch.cuda.get_device_name() if dev != "cpu" else "cpu", "seed": seed,
               "cases": len(done), "failures": failures, "seconds": round(time.time() - t0, 1),
               "launches": dict(sorted(counter.counts.items())) if counter else {},
               "kernels_launched": len({k for d in done for k in d["kernels"]}),
               "shared_memory_kernels": sorted(shared) if shared is not None else None}
    if shared is not None:
        summary["cases_with_shared_kernels"] = sum(bool(set(d["kernels"]) & shared) for d in done)
    return summary


def warm(arch: str, jobs: int) -> dict:
    from jitkern.warmup import build_all

    specs = kernel_specs(arch)
    t0 = time.time()
    results = build_all(specs, jobs, progress=False)
    failed = [(s.uri, r[3]) for s, r in zip(specs, results) if r[3] is not None]
    return {"arch": arch, "kernels": len(specs), "compiled": sum(bool(r[2]) for r in results),
            "failed": failed, "seconds": round(time.time() - t0, 1)}


CONTROLS = {
    # one float read past the end of a 100-float tensor (400 bytes: not a multiple of any
    # allocation granule), so memcheck must flag it if every tensor is its own allocation
    "oob": """extern "C" __global__ void jk_control_oob(const float* p, float* out, int n) {
  if (threadIdx.x == 0) out[0] = p[n];
}""",
    # two warps exchange shared-memory values with no barrier: a read-after-write hazard
    "race": """extern "C" __global__ void jk_control_race(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = (float)threadIdx.x;
  out[threadIdx.x] = s[(threadIdx.x + 32) % 64];
}""",
}


def control(kind: str) -> dict:
    """Launch a deliberately faulty kernel through jitkern's compiler and runtime: the sanitizer
    must report it, or the clean runs prove nothing."""
    import ctypes

    from jitkern.arch import resolve
    from jitkern.compiler import nvrtc
    from jitkern.runtime import cuda

    arch = resolve(None, "cuda").arch
    binary = nvrtc.compile(CONTROLS[kind], arch, nvrtc.default_options(arch), name=f"control_{kind}.cu")
    _, fn = cuda.load(binary, f"jk_control_{kind}")
    stream = torch.cuda.current_stream().cuda_stream
    out = torch.zeros(64, device="cuda")
    if kind == "oob":
        p = torch.ones(100, device="cuda")
        args = [ctypes.c_void_p(p.data_ptr()), ctypes.c_void_p(out.data_ptr()), ctypes.c_int(100)]
        cuda.launch(fn, (1, 1, 1), (32, 1, 1), args, 0, stream)
    else:
        cuda.launch(fn, (1, 1, 1), (64, 1, 1), [ctypes.c_void_p(out.data_ptr())], 0, stream)
    try:
        torch.cuda.synchronize()
    except Exception as e:                         # memcheck may fail the launch: that is the point
        return {"control": kind, "launch": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    return {"control": kind, "launch": "ok"}


def _records(text: str) -> list[str]:
    """compute-sanitizer log -> one string per reported problem (header line + its indented lines)."""
    recs: list[str] = []
    for line in text.splitlines():
        body = line[len("========= "):] if line.startswith("========= ") else None
        if body is None or not body.strip():
            continue
        if body[0] != " ":
            recs.append(body)
        elif recs:
            recs[-1] += "\n" + body
    return recs


def _tool_result(log: Path) -> dict:
    """Counts from a compute-sanitizer log.  errors: the tool's 'ERROR SUMMARY: N errors' (None
    when missing); memory_errors: every reported problem except the known benign one, cuda-bindings
    probing driver entry points with cuGetProcAddress inside cuInit (jitkern/runtime/cuda.py
    _driver), which the tool counts as API errors; racecheck adds hazards/warnings."""
    import re

    text = log.read_text(errors="replace") if log.exists() else ""
    out = {"log": log.name, "errors": None}
    m = re.search(r"ERROR SUMMARY: (\d+) error", text)
    if m:
        out["errors"] = int(m.group(1))
    r = re.search(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", text)
    if r:
        out.update(hazards=int(r.group(1)), errors=int(r.group(2)), warnings=int(r.group(3)))
    recs = [x for x in _records(text) if not x.startswith(("COMPUTE-SANITIZER", "ERROR SUMMARY", "RACECHECK SUMMARY"))]
    benign = [x for x in recs if "API call to cuGetProcAddress" in x and "_driver in cuda.py" in x]
    problems = [x for x in recs if x not in benign]
    out["benign_api_probes"] = len(benign)
    out["memory_errors"] = None if out["errors"] is None else max(out["errors"] - len(benign), len(problems))
    out["first_problems"] = [x.splitlines()[0] for x in problems[:10]]
    return out


def summarize(out_dir: Path) -> dict:
    """sanitize_summary.json from the files tools/sanitize.sh wrote.  ok: no memory error, hazard
    or wrong result in the cases, and both controls were caught."""
    def load(name):
        f = out_dir / name
        return json.loads(f.read_text()) if f.exists() else None

    def rc(name):
        f = out_dir / f"{name}.rc"
        return int(f.read_text()) if f.exists() else None

    s = {"warm": load("warm.json")}
    for tool in ("memcheck", "racecheck"):
        cases = load(f"{tool}_cases.json") or {}
        s[tool] = {**_tool_result(out_dir / f"{tool}.log"), "exit_status": rc(tool),
                   **{k: cases.get(k) for k in ("device", "seed", "cases", "launches", "kernels_launched",
                                                "seconds", "failures")}}
        s[tool]["wrong_results"] = None if cases.get("failures") is None else len(cases["failures"])
        s[f"{tool}_control"] = {**_tool_result(out_dir / f"{tool}_control.log"),
                                "exit_status": rc(f"{tool}_control")}
    mc, rcc = s["memcheck_control"], s["racecheck_control"]
    s["controls_caught"] = bool((mc["memory_errors"] or 0) >= 1 and (rcc.get("hazards") or 0) >= 1)
    s["ok"] = s["controls_caught"] and all(
        s[t]["memory_errors"] == 0 and s[t]["wrong_results"] == 0 and s[t]["cases"] for t in ("memcheck", "racecheck")) \
        and s["racecheck"].get("hazards") == 0
    return s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true", help="print the cases and the kernels they use")
    what.add_argument("--warm", action="store_true", help="compile every kernel the cases can launch")
    what.add_argument("--run", action="store_true", help="run the cases")
    what.add_argument("--summary", metavar="OUT_DIR", help="summarize tools/sanitize.sh's output directory")
    what.add_argument("--control", choices=sorted(CONTROLS), help="launch a deliberately faulty kernel")
    p.add_argument("--only", choices=["shared"], help="shared: cases whose kernels use shared memory")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (reference paths only)")
    p.add_argument("--arch", help="for --list/--warm without a GPU, e.g. sm_90")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(3), "little"))
    p.add_argument("--json", help="write the summary here as JSON")
    a = p.parse_args(argv)
    from jitkern.arch import resolve

    if a.summary:
        s = summarize(Path(a.summary))
        text = json.dumps(s, indent=1)
        Path(a.summary, "sanitize_summary.json").write_text(text + "\n")
        for tool in ("memcheck", "racecheck"):
            t = s[tool]
            race = f", {t.get('hazards')} hazards ({t.get('warnings')} warnings)" if tool == "racecheck" else ""
            benign = (f" (+{t['benign_api_probes']} cuGetProcAddress probes by cuda-bindings at cuInit, reported "
                      f"as API errors)" if t["benign_api_probes"] else "")
            launches = sum((t["launches"] or {}).values())
            print(f"{tool}: {t['memory_errors']} errors{race}{benign}; {t['cases']} cases, {launches} jitkern "
                  f"launches of {t['kernels_launched']} kernels, {t['wrong_results']} wrong results, {t['seconds']} s")
            for f in t["first_problems"] + (t["failures"] or [])[:20]:
                print(f"  {f}")
            c = s[f"{tool}_control"]
            print(f"{tool} control (a faulty kernel): {c['memory_errors'] if tool == 'memcheck' else c.get('hazards')}"
                  f" {'errors' if tool == 'memcheck' else 'hazards'} reported (must be >= 1)")
        print("sanitize:", "OK" if s["ok"] else "FAILED")
        return 0 if s["ok"] else 1
    if a.list:
        arch = resolve(a.arch).arch
        cs = cases()
        shared = shared_memory_kernels(arch)
        for c in cs:
            uses = {s.uri for s in case_specs(c, arch)}
            print(f"{c.family:6s} {c.name}  M={c.ms}  kernels={len(uses)}{'  (shared memory)' if uses & shared else ''}")
        specs = kernel_specs(arch)
        print(f"{len(cs)} cases; {len(specs)} kernels for {arch}, {len(shared)} using shared memory: "
              f"{sorted({s.family for s in specs if s.uri in shared})}")
        return 0
    if a.control:
        print(json.dumps(control(a.control)))
        return 0
    if a.warm:
        s = warm(resolve(a.arch).arch, a.jobs)
    else:
        selected = cases()
        if a.only == "shared":
            arch = resolve(None, a.device).arch if a.device != "cpu" else resolve(a.arch).arch
            shared = shared_memory_kernels(arch)
            selected = [c for c in selected if {s.uri for s in case_specs(c, arch)} & shared]
        s = run(selected, a.device, a.seed, a.only == "shared")
        if a.only == "shared":
            s["note"] = "racecheck: every case runs; only kernels with __shared__ can have shared-memory hazards"
    text = json.dumps(s, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    bad = s.get("failures") or s.get("failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
