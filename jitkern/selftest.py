"""`jitkern selftest`: check every kernel family on the local GPU against float64 references, time a
short benchmark against fp16 F.linear, and print a report a gfx906 owner can paste into an issue."""
from __future__ import annotations

import argparse
import platform
import sys
from importlib import metadata

import torch

TOL = {"gptq": 1e-3, "dense": 1e-3, "gguf": 2e-3}


def _rel(out, ref) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    return ((out - ref).norm() / ref.norm()).item()


def check_gptq(device, reference=None) -> list[tuple[str, float, bool]]:
    """(case, error, passed) for GPTQ int4/int8 and AWQ over M = 1, 4, 8 and a prefill M."""
    from .formats.awq import dequantize_awq, quantize_awq
    from .formats.gptq import dequantize_gptq, quantize_gptq
    from .nn import QuantLinear

    reference = reference or (lambda x, w: x.double() @ w.T)
    results = []
    g = torch.Generator().manual_seed(int.from_bytes(__import__("os").urandom(4), "little"))
    w = torch.randn(384, 1024, generator=g)
    for bits, sym, act_order in ((4, True, False), (4, False, True), (8, True, False), (3, False, False)):
        ck = quantize_gptq(w, bits, 128, sym=sym, act_order=act_order, generator=g)
        layer = QuantLinear.from_gptq(ck["qweight"], ck["qzeros"], ck["scales"], ck["g_idx"], bits=bits,
                                      group_size=128, sym=sym).to(device)
        dense = dequantize_gptq(ck["qweight"], ck["qzeros"], ck["scales"], ck["g_idx"], bits, 128)
        for m in (1, 4, 8, 33):
            x = torch.randn(m, 1024, generator=g).half()
            err = _rel(layer(x.to(device)), reference(x, dense))
            results.append((f"gptq w{bits} {'sym' if sym else 'asym'}{' act-order' if act_order else ''} m={m}",
                            err, err < TOL["gptq"]))
    ck = quantize_awq(w, 128)
    layer = QuantLinear.from_awq(ck["qweight"], ck["qzeros"], ck["scales"], group_size=128).to(device)
    x = torch.randn(2, 1024, generator=g).half()
    err = _rel(layer(x.to(device)), reference(x, dequantize_awq(ck["qweight"], ck["qzeros"], ck["scales"], 128)))
    results.append(("awq w4 m=2", err, err < TOL["gptq"]))
    return results


def check_dense_and_gguf(device, reference=None) -> list[tuple[str, float, bool]]:
    """(case, error, passed) for the dense fp16 GEMV and every GGUF block type."""
    from .formats.gguf import TYPES, dequantize, random_blocks
    from .nn_dense import dense_linear
    from .nn_gguf import GGUFLinear

    reference = reference or (lambda x, w: x.double() @ w.T)
    results = []
    w = torch.randn(300, 512).half()
    for m in (1, 16):
        x = torch.randn(m, 512).half()
        err = _rel(dense_linear(x.to(device), w.to(device)), reference(x, w.double()))
        results.append((f"dense f16 m={m}", err, err < TOL["dense"]))
    for name in TYPES:
        raw = random_blocks(name, 64, 512)
        layer = GGUFLinear.from_raw(raw.to(device), name)
        for m in (1, 8):
            x = torch.randn(m, 512).half()
            err = _rel(layer(x.to(device)), reference(x, dequantize(raw, name).double()))
            results.append((f"gguf {name.lower()} m={m}", err, err < TOL["gguf"]))
    return results


def quick_bench(device) -> list[str]:
    from .bench import SHAPES, run

    rows = run({"llama3-8b.gate_up": SHAPES["llama3-8b.gate_up"]}, [1, 8], ["fp16", "jitkern-int4-g128"], None, iters=10)
    return [f"{r['impl']} m={r['m']}: {r['gbps']:.0f} GB/s, x{r.get('bw_ratio', 1):.2f} of fp16"
            for r in rows if "gbps" in r]


def environment() -> list[str]:
    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "-"

    from . import __version__
    from .arch import resolve

    lines = [f"jitkern {__version__}, torch {torch.__version__}, python {platform.python_version()}",
             f"hip-python {version('hip-python')}, cuda-bindings {version('cuda-bindings')}",
             f"HIP {torch.version.hip or '-'}, CUDA {torch.version.cuda or '-'}"]
    if torch.cuda.is_available():
        lines.insert(0, f"GPU: {torch.cuda.get_device_name()} ({resolve().arch})")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="jitkern selftest", description=__doc__,
                                epilog="Example: jitkern selftest --no-bench > report.txt")
    p.add_argument("--no-bench", action="store_true", help="skip the short benchmark")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("jitkern selftest: no GPU visible to torch (ROCm or CUDA build of torch needed)", file=sys.stderr)
        return 2
    report = ["## jitkern selftest", *environment(), ""]
    results = check_gptq("cuda") + check_dense_and_gguf("cuda")
    for name, err, ok in results:
        report.append(f"{'PASS' if ok else 'FAIL'}  {name:36s} rel err {err:.2e}")
    if not a.no_bench:
        report += ["", *quick_bench("cuda")]
    failed = sum(not ok for _, _, ok in results)
    report.append(f"\n{len(results) - failed} passed, {failed} failed")
    print("\n".join(report))
    return 1 if failed else 0
