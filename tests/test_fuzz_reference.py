"""Hypothesis over the CPU paths (no GPU): the format converters and the torch reference linears
that CPU tensors run and the kernels are tested against, vs float64, with large magnitudes, fp16
subnormals, +-0, NaN and Inf.

* Converters are exact: GPTQ/AWQ checkpoint -> IntLayout -> float64 weights equals the checkpoint
  oracle bit for bit; AWQ -> GPTQ v2 is lossless; the GGUF SoA layout round-trips its bytes; GGUF
  dequantization of arbitrary bytes (every fp16 bit pattern in d/dmin, NaN and Inf included) equals
  gguf-py's, NaN for NaN.
* Reference linears (QuantLinear / GGUFLinear / dense_linear on CPU tensors, float32 compute, fp16
  output), elementwise vs float64 ``ref = x @ W.T``:
      |o - ref| <= 2**-11 * |ref| + 2**-18 * (|x| @ |W|.T) + 2**-24
  (the fp16 rounding of the output, float32 accumulation with room, the fp16 subnormal quantum);
  past fp16's range the output must be inf of ref's sign.
* NaN or +-Inf in one activation makes its whole output row NaN/Inf, in one scale its whole output
  column; every other output stays finite and within the tolerance; nothing raises.
"""
from __future__ import annotations

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from fuzz_common import (BAD, PROFILES, SEEDS, SETTINGS, activations, check,  # noqa: E402
                         check_propagation, nmin, spoil_gguf_scale, spoil_x)
from jitkern.formats import gguf as G  # noqa: E402
from jitkern.formats.awq import awq_to_gptq, awq_to_layout, dequantize_awq, quantize_awq  # noqa: E402
from jitkern.formats.gptq import dequantize_gptq, gptq_to_layout, quantize_gptq  # noqa: E402
from jitkern.formats.intpack import dequantize_layout  # noqa: E402

GGUF_TYPES = list(G.TYPES)


def bound(x: torch.Tensor, w: torch.Tensor, cols=None) -> torch.Tensor:
    """The stated tolerance (module docstring) around ref = x @ w.T."""
    ref = x.double() @ w.t()
    return 2.0 ** -11 * ref.abs() + 2.0 ** -18 * (x.double().abs() @ w.abs().t()) + 2.0 ** -24


def check_linear(out, x, w, what):
    check(out, x.double() @ w.t(), bound(x, w), what)


# ---------------------------------------------------------------------------------------------
# GPTQ / AWQ

@st.composite
def int_cases(draw):
    bits = draw(st.sampled_from([2, 3, 4, 8]))
    return dict(bits=bits, group=draw(st.sampled_from([32, 64, 128, -1])), sym=draw(st.booleans()),
                act_order=draw(st.booleans()), fmt=draw(st.sampled_from(["gptq", "gptq_v2"])),
                n=nmin(bits) * draw(st.integers(1, 128 // nmin(bits))), k=32 * draw(st.integers(1, 16)),
                m=draw(st.integers(1, 12)), w_scale=10.0 ** draw(st.sampled_from([-6, -3, 0, 2])),
                x=draw(PROFILES), seed=draw(SEEDS))


def gptq_checkpoint(c, g):
    w = torch.randn(c["n"], c["k"], generator=g) * c["w_scale"]
    return quantize_gptq(w, c["bits"], c["group"], sym=c["sym"], act_order=c["act_order"],
                         checkpoint_format=c["fmt"], generator=g)


@settings(max_examples=40, **SETTINGS)
@given(c=int_cases())
def test_gptq_layout_is_exact_and_reference_linear_matches_float64(c):
    from jitkern import QuantLinear

    g = torch.Generator().manual_seed(c["seed"])
    ck = gptq_checkpoint(c, g)
    oracle = dequantize_gptq(ck["qweight"], ck["qzeros"], ck["scales"], ck["g_idx"], c["bits"], c["group"], c["fmt"])
    layout = gptq_to_layout(ck["qweight"], ck["qzeros"], ck["scales"], ck["g_idx"], c["bits"], c["group"], c["sym"],
                            checkpoint_format=c["fmt"])
    assert torch.equal(dequantize_layout(layout), oracle), c
    x = activations(c["x"], c["m"], c["k"], g)
    out = QuantLinear(layout)(x)
    assert out.dtype == torch.float16 and out.shape == (c["m"], c["n"])
    check_linear(out, x, oracle, f"{c}")


@settings(max_examples=30, **SETTINGS)
@given(group=st.sampled_from([32, 64, 128, -1]), n=st.integers(1, 32), k=st.integers(1, 16),
       w_exp=st.sampled_from([-6, -3, 0, 2]), seed=SEEDS)
def test_awq_conversions_are_exact(group, n, k, w_exp, seed):
    g = torch.Generator().manual_seed(seed)
    ck = quantize_awq(torch.randn(8 * n, 32 * k, generator=g) * 10.0 ** w_exp, group)
    oracle = dequantize_awq(ck["qweight"], ck["qzeros"], ck["scales"], group)
    assert torch.equal(dequantize_layout(awq_to_layout(ck["qweight"], ck["qzeros"], ck["scales"], group)), oracle)
    v2 = awq_to_gptq(ck["qweight"], ck["qzeros"], ck["scales"], group)
    assert torch.equal(dequantize_gptq(v2["qweight"], v2["qzeros"], v2["scales"], v2["g_idx"], 4, group, "gptq_v2"),
                       oracle)


@settings(max_examples=30, **SETTINGS)
@given(c=int_cases(), bad=BAD, where=st.sampled_from(["x", "scale"]))
def test_gptq_reference_propagates_nan_inf(c, bad, where):
    from jitkern import QuantLinear

    g = torch.Generator().manual_seed(c["seed"])
    ck = gptq_checkpoint({**c, "w_scale": 1.0}, g)
    n0 = None
    if where == "scale":
        n0 = int(torch.randint(0, c["n"], (1,), generator=g))
        ck["scales"][int(torch.randint(0, ck["scales"].shape[0], (1,), generator=g)), n0] = float(bad)
    w = dequantize_gptq(ck["qweight"], ck["qzeros"], ck["scales"], ck["g_idx"], c["bits"], c["group"], c["fmt"])
    layer = QuantLinear.from_gptq(ck["qweight"], ck["qzeros"], ck["scales"], ck["g_idx"], bits=c["bits"],
                                  group_size=c["group"], sym=c["sym"], checkpoint_format=c["fmt"])
    x = activations("normal", c["m"], c["k"], g)
    xs, m0 = spoil_x(x, bad, g) if where == "x" else (x, None)
    check_propagation(layer(xs), x, w, m0, n0, f"{c} {bad} in {where}", bound)


def test_nonfinite_weights_are_refused_by_the_quantizers():
    w = torch.randn(8, 32)
    w[3, 5] = float("nan")
    for quantize in (lambda: quantize_gptq(w, 4, 32), lambda: quantize_awq(w, 32)):
        with pytest.raises(ValueError, match="^W: expected finite values"):
            quantize()


# ---------------------------------------------------------------------------------------------
# GGUF

@st.composite
def gguf_bytes(draw):
    """Arbitrary block bytes: every fp16 field drawn from all 65536 bit patterns (NaN, Inf,
    subnormals, +-0 included) or from small normal values."""
    qtype = draw(st.sampled_from(GGUF_TYPES))
    qt = G.TYPES[qtype]
    n, kb = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(SEEDS))
    raw = torch.randint(0, 256, (n, kb, qt.nbytes), dtype=torch.uint8, generator=g)
    if draw(st.booleans()):        # mostly finite, small d: the realistic case, with +-0 and subnormals
        for f in qt.fields:
            if f.kind.startswith("f16"):
                v = torch.randn(n, kb, f.size // 2, generator=g) * 10.0 ** draw(st.sampled_from([-7, -3, -1]))
                v[torch.rand(v.shape, generator=g) < 0.1] = -0.0
                raw[..., f.offset:f.offset + f.size] = v.half().view(torch.uint8).view(n, kb, f.size)
    return qtype, raw.view(n, kb * qt.nbytes)


@settings(max_examples=60, **SETTINGS)
@given(case=gguf_bytes())
def test_gguf_dequantize_equals_gguf_py_on_arbitrary_bytes(case):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    qtype, raw = case
    with np.errstate(all="ignore"):
        ref = torch.from_numpy(gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType[qtype]))
    out = G.dequantize(raw, qtype)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), qtype
    fin = ~torch.isnan(ref)
    assert torch.equal(out[fin].view(torch.int32), ref[fin].contiguous().view(torch.int32)), qtype
    layout = G.to_layout(raw, qtype)
    assert torch.equal(G.from_layout(layout), raw)
    back = G.dequantize_layout(layout)
    assert torch.equal(torch.isnan(back), torch.isnan(out)) and torch.equal(back[fin], out[fin])


@st.composite
def gguf_linear_cases(draw):
    qtype = draw(st.sampled_from(GGUF_TYPES))
    return dict(qtype=qtype, n=draw(st.integers(1, 40)), k=G.TYPES[qtype].block * draw(st.integers(1, 4)),
                m=draw(st.integers(1, 12)), x=draw(PROFILES), seed=draw(SEEDS))


@settings(max_examples=50, **SETTINGS)
@given(c=gguf_linear_cases(), bad=st.one_of(st.none(), BAD), where=st.sampled_from(["x", "scale"]))
def test_gguf_reference_linear_matches_float64_and_propagates_nan_inf(c, bad, where):
    from jitkern.nn_gguf import GGUFLinear

    g = torch.Generator().manual_seed(c["seed"])
    raw = G.random_blocks(c["qtype"], c["n"], c["k"], generator=g)
    n0 = spoil_gguf_scale(raw, c["qtype"], bad, g) if bad and where == "scale" else None
    w = G.dequantize(raw, c["qtype"]).double()
    x = activations(c["x"] if not bad else "normal", c["m"], c["k"], g)
    xs, m0 = spoil_x(x, bad, g) if bad and where == "x" else (x, None)
    out = GGUFLinear.from_raw(raw, c["qtype"])(xs)
    assert out.dtype == torch.float16 and out.shape == (c["m"], c["n"])
    if bad:
        check_propagation(out, x, w, m0, n0, f"{c} {bad} in {where}", bound)
    else:
        check_linear(out, x, w, f"{c}")


# ---------------------------------------------------------------------------------------------
# dense

@settings(max_examples=40, **SETTINGS)
@given(n=st.integers(1, 64), k=st.integers(1, 64), m=st.integers(1, 20), bad=st.one_of(st.none(), BAD),
       where=st.sampled_from(["x", "weight"]), profile=PROFILES, seed=SEEDS)
def test_dense_reference_matches_float64_and_propagates_nan_inf(n, k, m, bad, where, profile, seed):
    from jitkern.nn_dense import dense_linear

    g = torch.Generator().manual_seed(seed)
    k *= 8
    w = torch.randn(n, k, generator=g).half()
    x = activations(profile if not bad else "normal", m, k, g)
    ws, n0 = spoil_x(w, bad, g) if bad and where == "weight" else (w, None)    # a weight of column n0
    xs, m0 = spoil_x(x, bad, g) if bad and where == "x" else (x, None)
    out = dense_linear(xs, ws)
    if bad:
        check_propagation(out, x, w.double(), m0, n0, f"{bad} in {where}", bound)
    else:
        check_linear(out, x, w.double(), profile)
