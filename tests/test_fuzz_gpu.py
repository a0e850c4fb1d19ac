"""Hypothesis over the real kernels on a GPU (marked gpu) vs float64: GPTQ/AWQ GEMV and prefill,
dense GEMV, GGUF GEMV and prefill at random legal shapes, group sizes, formats and values (large
magnitudes, fp16 subnormals, +-0), and NaN/Inf in scales and activations.

Stated tolerance, elementwise, for an output ``o`` of ``ref = x @ W.T (+ b)`` computed in float64
from the fp16 inputs and the exactly dequantized weights:

    |o - ref| <= TOL * (|x| @ |W|.T + |b|) + 2**-24 * (1 + sum|x|)  [+ GGUF GEMV: Q below]

TOL = 2**-9 covers the fp16 rounding of dequantized weights (prefill) and of the output (2**-11
each) with room for fp32 accumulation; the 2**-24 term is the fp16 subnormal quantum (tiny
weights and outputs).  The GGUF GEMV quantizes activations to within amax32/64516 (amax of the
32-element block, ops/gguf.py), so it adds Q = (amax32(|x|)/64516) @ (|W| + |W(q=0)|).T where
W(q=0) is the weight's offset term (what a block decodes to with its quants zeroed).
Past fp16's range: where |ref| exceeds 65504 by more than the bound the output must be inf of
ref's sign; within the bound of 65504 either is accepted.

NaN or +-Inf put into one activation x[m0, j] must make every output of row m0 NaN/Inf; put into
one scale of output column n0 (GPTQ scales, GGUF block d, a dense weight), every output of column
n0; all other outputs stay finite and within the tolerance.

Kernels compile on first use; tools/gpu_check.sh ``reliability`` warms them all first
(tools/sanitize_cases.py --warm).  Data come from a seed drawn by hypothesis, so its failure
report (print_blob) replays an example exactly.
"""
from __future__ import annotations

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from fuzz_common import (BAD, PROFILES, SEEDS, SETTINGS, F16_MAX, activations, check,  # noqa: E402
                         check_propagation, nmin, spoil_gguf_scale, spoil_x)

pytestmark = pytest.mark.gpu
DEV = "cuda"
TOL = 2.0 ** -9
GGUF_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")
QUANT_FIELDS = ("qs", "qh", "ql", "hmask")


def poison_pool() -> None:
    """Fill the caching allocator's free blocks with NaN, so the output an op allocates next starts
    as NaN: an element a kernel forgets to write cannot pass as a correct value."""
    torch.empty(1 << 21, dtype=torch.float32, device=DEV).fill_(float("nan"))


def bound_for(x: torch.Tensor, w: torch.Tensor, bias=None) -> torch.Tensor:
    """The stated tolerance (module docstring) without the GGUF GEMV term."""
    xa = x.double().abs()
    b = TOL * (xa @ w.abs().t()) + 2.0 ** -24 * (1 + xa.sum(1, keepdim=True))
    return b if bias is None else b + TOL * bias.double().abs()


def reference(x: torch.Tensor, w: torch.Tensor, bias=None) -> torch.Tensor:
    y = x.double() @ w.t()
    return y if bias is None else y + bias.double()


# ---------------------------------------------------------------------------------------------
# GPTQ / AWQ

@st.composite
def gptq_cases(draw):
    awq = draw(st.booleans())
    bits = 4 if awq else draw(st.sampled_from([2, 3, 4, 8]))
    return dict(awq=awq, bits=bits, group=draw(st.sampled_from([32, 64, 128, -1])), sym=draw(st.booleans()),
                act_order=not awq and draw(st.booleans()), fmt=draw(st.sampled_from(["gptq", "gptq_v2"])),
                n=nmin(bits) * draw(st.integers(1, 256 // nmin(bits))), k=32 * draw(st.integers(1, 24)),
                m=draw(st.one_of(st.integers(1, 8), st.integers(9, 40))),
                w_scale=10.0 ** draw(st.sampled_from([-6, -3, 0, 2])),     # 1e-6: subnormal fp16 scales
                x=draw(PROFILES), bias=draw(st.booleans()), seed=draw(SEEDS))


def gptq_layer(c: dict, g: torch.Generator, bad_scale=None):
    """(QuantLinear on the GPU, float64 W [N, K] it must equal, column with a bad scale or None)."""
    from jitkern import QuantLinear
    from jitkern.formats.awq import dequantize_awq, quantize_awq
    from jitkern.formats.gptq import dequantize_gptq, quantize_gptq

    w = torch.randn(c["n"], c["k"], generator=g) * c["w_scale"]
    n0 = int(torch.randint(0, c["n"], (1,), generator=g)) if bad_scale else None
    if c["awq"]:
        ck = quantize_awq(w, c["group"])
        if bad_scale:
            ck["scales"][int(torch.randint(0, ck["scales"].shape[0], (1,), generator=g)), n0] = float(bad_scale)
        ref_w = dequantize_awq(ck["qweight"], ck["qzeros"], ck["scales"], c["group"])
        layer = QuantLinear.from_awq(ck["qweight"], ck["qzeros"], ck["scales"], group_size=c["group"])
    else:
        ck = quantize_gptq(w, c["bits"], c["group"], sym=c["sym"], act_order=c["act_order"],
                           checkpoint_format=c["fmt"], generator=g)
        if bad_scale:
            ck["scales"][int(torch.randint(0, ck["scales"].shape[0], (1,), generator=g)), n0] = float(bad_scale)
        ref_w = dequantize_gptq(ck["qweight"], ck["qzeros"], ck["scales"], ck["g_idx"], c["bits"], c["group"],
                                c["fmt"])
        layer = QuantLinear.from_gptq(ck["qweight"], ck["qzeros"], ck["scales"], ck["g_idx"], bits=c["bits"],
                                      group_size=c["group"], sym=c["sym"], checkpoint_format=c["fmt"])
    return layer.to(DEV), ref_w, n0


@settings(max_examples=100, **SETTINGS)
@given(c=gptq_cases())
def test_gptq_awq_random_legal_cases_match_float64(c):
    g = torch.Generator().manual_seed(c["seed"])
    layer, ref_w, _ = gptq_layer(c, g)
    x = activations(c["x"], c["m"], c["k"], g)
    bias = torch.randn(c["n"], generator=g).half() if c["bias"] else None
    if bias is not None:
        layer.bias = bias.to(DEV)
    poison_pool()
    out = layer(x.to(DEV))
    check(out, reference(x, ref_w, bias), bound_for(x, ref_w, bias), f"{c}")


# ---------------------------------------------------------------------------------------------
# dense

@st.composite
def dense_cases(draw):
    return dict(n=draw(st.integers(1, 300)), k=8 * draw(st.integers(1, 160)), m=draw(st.integers(1, 16)),
                w_scale=10.0 ** draw(st.sampled_from([-6, -2, 0, 2])),
                x=draw(PROFILES), bias=draw(st.booleans()), seed=draw(SEEDS))


@settings(max_examples=60, **SETTINGS)
@given(c=dense_cases())
def test_dense_gemv_random_legal_cases_match_float64(c):
    from jitkern.nn_dense import dense_linear

    g = torch.Generator().manual_seed(c["seed"])
    w = (torch.randn(c["n"], c["k"], generator=g) * c["w_scale"]).clamp(-F16_MAX, F16_MAX).half()
    x = activations(c["x"], c["m"], c["k"], g)
    bias = torch.randn(c["n"], generator=g).half() if c["bias"] else None
    poison_pool()
    out = dense_linear(x.to(DEV), w.to(DEV), None if bias is None else bias.to(DEV))
    check(out, reference(x, w.double(), bias), bound_for(x, w.double(), bias), f"{c}")


# ---------------------------------------------------------------------------------------------
# GGUF

def gguf_blocks(qtype: str, n: int, k: int, scale_exp: int, g: torch.Generator) -> torch.Tensor:
    """Random stored blocks whose fp16 fields (d, dmin, m) are rescaled by 2**scale_exp
    (scale_exp <= -14 gives subnormal d) with some +-0 among them."""
    from jitkern.formats import gguf as G

    raw = G.random_blocks(qtype, n, k, generator=g)
    qt = G.gguf_type(qtype)
    blocks = raw.view(n, k // qt.block, qt.nbytes)
    for f in qt.fields:
        if f.kind.startswith("f16"):
            h = blocks[..., f.offset:f.offset + f.size].contiguous().view(torch.float16).float()
            h = h * 2.0 ** scale_exp
            h[torch.rand(h.shape, generator=g) < 0.05] = 0.0
            blocks[..., f.offset:f.offset + f.size] = h.half().view(torch.uint8)
    return raw


def gguf_reference_weights(qtype: str, raw: torch.Tensor):
    """(W, W with the quants zeroed = each weight's offset term), float64 [N, K]."""
    from jitkern.formats import gguf as G

    qt = G.gguf_type(qtype)
    w = G.dequantize(raw, qtype).double()
    zeroed = raw.clone()
    blocks = zeroed.view(raw.shape[0], -1, qt.nbytes)
    for f in qt.fields:
        if f.name in QUANT_FIELDS:
            blocks[..., f.offset:f.offset + f.size] = 0
    return w, G.dequantize(zeroed, qtype).double()


def gguf_gemv_bound(x, w, w0, bias=None):
    """The tolerance plus the GEMV's activation quantization: |x~ - x| <= amax32/64516 multiplies
    the non-offset part of each weight, |W - W(q=0)| <= |W| + |W(q=0)|."""
    amax = x.double().abs().view(x.shape[0], -1, 32).amax(-1).repeat_interleave(32, 1)
    return bound_for(x, w, bias) + 1.01 * (amax / 64516) @ (w.abs() + w0.abs()).t()


@st.composite
def gguf_cases(draw):
    from jitkern.formats.gguf_quants import TYPES

    qtype = draw(st.sampled_from(GGUF_TYPES))
    return dict(qtype=qtype, n=draw(st.integers(1, 100)), k=TYPES[qtype].block * draw(st.integers(1, 6)),
                m=draw(st.one_of(st.integers(1, 8), st.integers(9, 24))),
                scale_exp=draw(st.sampled_from([-20, -8, 0, 4])),
                x=draw(PROFILES), bias=draw(st.booleans()), seed=draw(SEEDS))


@settings(max_examples=100, **SETTINGS)
@given(c=gguf_cases())
def test_gguf_random_legal_cases_match_float64(c):
    from jitkern.nn_gguf import GGUFLinear
    from jitkern.ops import gguf as ops

    g = torch.Generator().manual_seed(c["seed"])
    raw = gguf_blocks(c["qtype"], c["n"], c["k"], c["scale_exp"], g)
    w, w0 = gguf_reference_weights(c["qtype"], raw)
    bias = torch.randn(c["n"], generator=g).half() if c["bias"] else None
    layer = GGUFLinear.from_raw(raw, c["qtype"], bias=bias).to(DEV)
    x = activations(c["x"], c["m"], c["k"], g)
    if c["m"] <= ops.MAX_GEMV_M:
        bound = gguf_gemv_bound(x, w, w0, bias)
        out = torch.full((c["m"], c["n"]), float("nan"), dtype=torch.float16, device=DEV)   # poisoned
        ops.gemv(x.to(DEV), layer.layout, layer.bias, out=out)
    else:
        bound = bound_for(x, w, bias)
        poison_pool()
        out = layer(x.to(DEV))
    check(out, reference(x, w, bias), bound, f"{c}")


# ---------------------------------------------------------------------------------------------
# NaN / Inf

@settings(max_examples=60, **SETTINGS)
@given(c=gptq_cases(), bad=BAD, where=st.sampled_from(["x", "scale"]))
def test_gptq_awq_nan_inf_propagate(c, bad, where):
    g = torch.Generator().manual_seed(c["seed"])
    c = {**c, "x": "normal", "w_scale": 1.0}
    layer, ref_w, n0 = gptq_layer(c, g, bad if where == "scale" else None)
    x = activations("normal", c["m"], c["k"], g)
    xs, m0 = spoil_x(x, bad, g) if where == "x" else (x, None)
    check_propagation(layer(xs.to(DEV)), x, ref_w, m0, n0, f"{c} {bad} in {where}",
                      lambda xr, wc, cols: bound_for(xr, wc))


@settings(max_examples=40, **SETTINGS)
@given(c=dense_cases(), bad=BAD, where=st.sampled_from(["x", "weight"]))
def test_dense_nan_inf_propagate(c, bad, where):
    from jitkern.nn_dense import dense_linear

    g = torch.Generator().manual_seed(c["seed"])
    w = torch.randn(c["n"], c["k"], generator=g).half()
    x = activations("normal", c["m"], c["k"], g)
    ws, n0 = spoil_x(w, bad, g) if where == "weight" else (w, None)     # a weight of output column n0
    xs, m0 = spoil_x(x, bad, g) if where == "x" else (x, None)
    check_propagation(dense_linear(xs.to(DEV), ws.to(DEV)), x, w.double(), m0, n0, f"{c} {bad} in {where}",
                      lambda xr, wc, cols: bound_for(xr, wc))


@settings(max_examples=80, **SETTINGS)
@given(c=gguf_cases(), bad=BAD, where=st.sampled_from(["x", "scale"]))
def test_gguf_nan_inf_propagate(c, bad, where):
    from jitkern.formats import gguf as G
    from jitkern.nn_gguf import GGUFLinear

    g = torch.Generator().manual_seed(c["seed"])
    raw = G.random_blocks(c["qtype"], c["n"], c["k"], generator=g)
    w, w0 = gguf_reference_weights(c["qtype"], raw)
    n0 = spoil_gguf_scale(raw, c["qtype"], bad, g) if where == "scale" else None
    layer = GGUFLinear.from_raw(raw, c["qtype"]).to(DEV)
    x = activations("normal", c["m"], c["k"], g)
    xs, m0 = spoil_x(x, bad, g) if where == "x" else (x, None)
    gemv = c["m"] <= 8
    bound = (lambda xr, wc, cols: gguf_gemv_bound(xr, wc, w0[cols])) if gemv else (lambda xr, wc, cols: bound_for(xr, wc))
    check_propagation(layer(xs.to(DEV)), x, w, m0, n0, f"{c} {bad} in {where} ({'GEMV' if gemv else 'prefill'})",
                      bound)
