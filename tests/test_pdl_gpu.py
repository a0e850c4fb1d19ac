"""Programmatic dependent launch (NVIDIA sm_90+): a GEMV may start while the kernel before it finishes,
so each must wait for that kernel before it reads its output.  On the GPU: a chain of GEMVs, each
reading the previous one's output, run eagerly and as a replayed CUDA graph whose intermediate
buffers still hold the previous replay's values, so a kernel that read its input early gives a stale
result (checked: with the wait removed from the prelude this test fails)."""
from __future__ import annotations

import logging
import re
import types

import pytest
import torch

from jitkern import bench, env, runtime
from jitkern.formats.gguf import dequantize_layout as gguf_dequantize, random_blocks, to_layout
from jitkern.formats.intpack import dequantize_layout as int_dequantize
from jitkern.families import get_family
from jitkern.ops import dense, gguf, gptq
from jitkern.render import render
from jitkern.spec import KernelSpec
from tests.conftest import rel_err

K = 4096          # square layers, large enough that the next launch overlaps the previous one's tail


def _chain(gen):
    """Five layers, int4 -> fp16 -> Q4_0 -> int8 -> act-order int4 (gather, then GEMV), and their float64
    weights [N, K]."""
    torch.manual_seed(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen)))
    dev = torch.device("cuda")
    int4 = bench.random_int_layout(K, K, 4, 128, False, dev)
    int8 = bench.random_int_layout(K, K, 8, 128, True, dev)
    w16 = (torch.randn(K, K, generator=gen) * 0.02).half().to(dev)
    q40 = to_layout(random_blocks("q4_0", K, K, generator=gen).to(dev), "q4_0")
    act = bench.random_int_layout(K, K, 4, 128, False, dev, act_order=True)
    layers = [lambda x: gptq.linear(x, int4), lambda x: dense.linear(x, w16),
              lambda x: gguf.linear(x, q40), lambda x: gptq.linear(x, int8), lambda x: gptq.linear(x, act)]
    ref_w = [int_dequantize(int4).cpu(), w16.double().cpu(), gguf_dequantize(q40).double().cpu(),
             int_dequantize(int8).cpu(), int_dequantize(act).cpu()]
    for lay in (int4, int8, act):
        gptq.prepare(lay)
    gguf.prepare(q40)
    dense.prepare(dev)
    return layers, ref_w


def _run(layers, x):
    for f in layers:
        x = f(x)
    return x


def _reference(ref_w, x):
    y = x.double().cpu()
    for w in ref_w:
        y = (y @ w.T).half().double()        # each kernel rounds its output to fp16
    return y


def _set_pdl(on: bool) -> None:
    for k in runtime._loaded.values():
        k.pdl = on and bool(k.consts.get("pdl"))


# family, spec fields, options, the function loading a step before the wait (None: nothing is), and
# whether the kernel lets the next one launch right after those loads (else after its main loop)
GEMVS = [("gptq_gemv", dict(fmt="gptq", bits=4, group=128), {"sym": True}, "gq_step_load_w", True),
         ("gptq_gemv", dict(fmt="gptq", bits=4, group=128, m=8), {"sym": True}, "gq_step_load_w", True),
         ("dense_gemv", dict(fmt="f16"), {}, None, False),
         ("gguf_gemv", dict(fmt="q8_0"), {}, "gg_step_load", True),
         ("gguf_gemv", dict(fmt="q8_0", m=8), {}, "gg_step_load", False),
         ("gguf_gemv", dict(fmt="q4_k"), {}, "gg_step_load", True),  # one step in flight, early at M = 1
         ("gguf_gemv", dict(fmt="q4_k", m=8), {}, None, False)]


def _definition(src: str, name: str) -> str:
    start = src.index(f"JK_DEVICE void {name}(")
    return src[start:src.index("\n}\n", start)]


@pytest.mark.parametrize("family,fields,options,early,trigger", GEMVS)
@pytest.mark.parametrize("arch,launched", [("sm_90", True), ("sm_80", False), ("gfx906", False)])
def test_pdl_only_where_the_kernel_waits(family, fields, options, early, trigger, arch, launched):
    spec = KernelSpec(family, arch=arch, options=options, **{"m": 1, **fields})
    assert bool(get_family(family).consts(spec).get("pdl")) is launched
    assert not get_family("gptq_dequant").consts(KernelSpec("gptq_dequant", "gptq", bits=4, group=128,
                                                             arch=arch)).get("pdl")
    if not launched:
        return
    src = render(spec)
    body = src[src.index(f"void {get_family(family).entry}("):]
    assert "griddepcontrol.wait" in src
    if "jk_two_steps_in_flight<" in body:
        # the helper requests the first step's weights, waits, and only then reads activations
        helper = src[src.index("JK_DEVICE int jk_two_steps_in_flight("):]
        helper = helper[:helper.index("\n}\n")]
        wait = helper.index("jk_wait_prior_grid();")
        assert helper.index("load_w(a, pos)") < wait < helper.index("load_x(a, pos)") < helper.index("compute(a, pos)")
        if trigger:                                    # both first steps' weights, then the next launch
            assert helper.index("load_w(b, pos + stride)") < helper.index("jk_launch_dependents();") < wait
        else:
            assert "jk_launch_dependents" not in helper
        main_loop = body.index("jk_two_steps_in_flight<")
        load_w, load_x, compute = re.findall(r"\[&?\]\([^)]*\)\s*\{[^}]*\}", body[main_loop:])[:3]
        if early is None:                              # nothing before the wait
            assert load_w.startswith("[](")
        else:                                          # weights only: no activation pointer in reach
            assert early + "(" in load_w and not re.search(r"\bxr?\b", _definition(src, early))
    else:                                              # one step in flight
        main_loop = body.index("jk_wait_prior_grid();")
        first_load = body.index("gg_step_load(st, s0")
        if early is None:                              # the kernel waits first
            assert main_loop < first_load
        else:                                          # the first step's weights, the wait, then x
            assert first_load < main_loop < body.index("gg_step_mma(st, s0")
            assert not re.search(r"\bxr?\b", _definition(src, early))
        assert (body.index("jk_launch_dependents();") < main_loop) is trigger
    assert main_loop < re.search(r"out\[|gq_store\(", body).start()   # so does every output store


@pytest.mark.parametrize("arch,launched", [("sm_90", True), ("sm_80", False), ("gfx906", False)])
def test_act_order_gather_lets_the_gemv_start_and_waits_before_reading_x(arch, launched):
    """The act-order gather lets its GEMV launch at once, reads only the (load-time) permutation before
    waiting for the prior grid, and reads x and writes only after it; only NVIDIA GEMVs use it."""
    specs = gptq.kernel_specs(4, 128, False, True, arch)
    assert any(s.family == "x_gather" for s in specs) is (arch != "gfx906")
    spec = KernelSpec("x_gather", "f16", arch=arch)
    assert bool(get_family("x_gather").consts(spec).get("pdl")) is launched
    if not launched:
        return
    body = render(spec)
    body = body[body.index(f"void {get_family('x_gather').entry}("):]
    trigger, wait = body.index("jk_launch_dependents();"), body.index("jk_wait_prior_grid();")
    assert trigger < body.index("perm + k0") < wait < body.index("jk_gather8(x") < body.index("out +")


def test_pdl_setting(monkeypatch):
    for raw, on in (("", True), ("1", True), ("0", False), ("off", False)):
        monkeypatch.setenv("JITKERN_PDL", raw)
        assert env.pdl() is on


class _FakeDriver:
    """Enough of cuda.bindings.driver to launch: cuLaunchKernelEx answers `ex_error`."""

    class CUlaunchConfig:
        pass

    class CUlaunchAttribute:
        def __init__(self):
            self.value = types.SimpleNamespace()

    CUlaunchAttributeID = types.SimpleNamespace(CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION=6)

    def __init__(self, ex_error):
        self.ex_error, self.calls = ex_error, []

    def cuLaunchKernelEx(self, config, function, params, extra):
        self.calls.append(("ex", config.numAttrs))
        return (self.ex_error,)

    def cuLaunchKernel(self, function, *args):
        self.calls.append(("plain",))
        return (_Result("CUDA_SUCCESS", 0),)


class _Result(int):
    def __new__(cls, name, code):
        r = super().__new__(cls, code)
        r.name = name
        return r


@pytest.mark.parametrize("error,falls_back", [(_Result("CUDA_ERROR_NOT_SUPPORTED", 801), True),
                                              (_Result("CUDA_ERROR_ILLEGAL_ADDRESS", 700), False)])
def test_refused_dependent_launch_falls_back_once(monkeypatch, caplog, error, falls_back):
    import ctypes

    from jitkern.runtime import cuda

    fake = _FakeDriver(error)
    monkeypatch.setattr(cuda, "_driver", lambda: fake)
    monkeypatch.setattr(cuda, "_pdl_failed", [])
    cuda._pdl_attribute.cache_clear()
    args = (object(), (4, 1, 1), (128, 1, 1), [ctypes.c_int(3)], 0, 0)
    if not falls_back:         # a real fault is reported, not hidden behind a plain launch
        with pytest.raises(RuntimeError, match="cuLaunchKernelEx"):
            cuda.launch(*args, pdl=True)
        assert fake.calls == [("ex", 1)] and not cuda._pdl_failed
    else:
        with caplog.at_level(logging.WARNING, logger="jitkern"):     # other tests may lower the level
            cuda.launch(*args, pdl=True)
            cuda.launch(*args, pdl=True)
        assert fake.calls == [("ex", 1), ("plain",), ("plain",)]
        assert sum("programmatic dependent launch refused" in r.message for r in caplog.records) == 1
    cuda._pdl_attribute.cache_clear()


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 8])
def test_dependent_chain(gen, m):
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("programmatic dependent launch needs sm_90+")
    layers, ref_w = _chain(gen)
    xs = [torch.randn(m, K, generator=gen).half().cuda() for _ in range(4)]
    _run(layers, xs[0])                                      # load every kernel
    assert any(k.pdl for k in runtime._loaded.values()), "no kernel launched with PDL on this GPU"

    _set_pdl(False)
    plain = [_run(layers, x) for x in xs]
    _set_pdl(True)
    eager = [_run(layers, x) for x in xs]
    for x, p, e in zip(xs, plain, eager):
        assert torch.equal(p, e), "same kernels and data: PDL must not change a bit"
        assert torch.isfinite(e).all() and rel_err(e, _reference(ref_w, x)) < 8e-3

    static_x = torch.full_like(xs[0], float("nan"))
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _run(layers, static_x)
        with torch.cuda.graph(graph, stream=stream):
            static_y = _run(layers, static_x)
    torch.cuda.current_stream().wait_stream(stream)
    for _ in range(3):
        for x, p in zip(xs, plain):                          # each replay's input differs from the last
            static_x.copy_(x)
            graph.replay()
            assert torch.equal(static_y, p), "a GEMV read its input before the kernel writing it finished"


class _FakeStream:
    def __init__(self, log):
        self.log = log

    def synchronize(self):
        self.log.append("sync")


@pytest.mark.parametrize("where,capturing,synced", [("cuda", False, True), ("cuda", True, False), ("cpu", False, False)])
def test_converted_weights_settle_before_early_reads(monkeypatch, where, capturing, synced):
    """The GEMVs read packed weights before waiting for the previous kernel, so conversion must leave
    them complete: one stream synchronization on a GPU, none on a CPU or inside graph capture."""
    from jitkern.formats import layout

    log = []
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _FakeStream(log))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing)
    tensors = [None, types.SimpleNamespace(is_cuda=where == "cuda", device=where)] * 2
    layout.settle(tensors)
    assert log == (["sync"] if synced else [])
