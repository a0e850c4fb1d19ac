"""The `jitkern` command, run as a subprocess the way users and CI run it (CPU only; needs hiprtc)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import requires_hiprtc, requires_nvrtc

ROOT = Path(__file__).resolve().parents[1]
ARCH = "gfx906"


def cli(*args: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run `python -m jitkern.cli ARGS` with the test's JITKERN_CACHE_DIR; returns (result, seconds)."""
    e = {k: v for k, v in os.environ.items() if k not in ("JITKERN_ARCH", "JITKERN_NO_COMPILE", "JITKERN_GEMV_MAX_M")}
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    e.update(env)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "jitkern.cli", *args], env=e, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    return p, time.perf_counter() - t0


def ok(*args: str, **env: str) -> str:
    p, _ = cli(*args, **env)
    assert p.returncode == 0, f"jitkern {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def warm(*extra: str) -> tuple[dict, float]:
    p, secs = cli("warmup", "--preset", "llama-3-8b", "--arch", ARCH, "--json", *extra)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout), secs


def bins(cache_dir: Path) -> dict[str, Path]:
    return {b.parent.name: b for b in (cache_dir / "v1").glob("*/*.bin")}


@pytest.mark.parametrize("cmd", ["", "warmup", "cache", "cache list", "cache verify", "cache clear", "cache prune",
                                 "info", "inspect", "selftest", "bench"])
def test_help_has_examples(cmd):
    out = ok(*cmd.split(), "--help")
    assert "Example" in out, out


@requires_hiprtc
def test_warmup_cold_then_warm_then_no_compile(fresh_cache, monkeypatch):
    from jitkern import cache
    from jitkern.ops import dense, gptq

    cold, secs = warm()
    print(f"cold warmup: {secs:.1f} s, {cold['compiled']} compiled")
    expected = gptq.kernel_specs(4, 128, True, False, ARCH, 8) + dense.kernel_specs(ARCH, 8)
    assert set(cold["kernels"]) == {s.uri for s in expected}
    assert cold["compiled"] == len(cold["kernels"]) and cold["failed"] == [] and cold["cached"] == 0
    assert secs <= 60

    again, secs = warm()                                  # a second process: nothing to compile
    print(f"warm warmup: {secs:.2f} s")
    assert again["compiled"] == 0 and again["cached"] == len(cold["kernels"]) and secs <= 2
    for manifest in (fresh_cache / "warmup").glob("*.json"):
        manifest.unlink()                                 # force the full in-process lookup
    full, _ = warm()
    assert full["compiled"] == 0 and not full["fast_path"] and full["cached"] == len(cold["kernels"])

    monkeypatch.setenv("JITKERN_NO_COMPILE", "1")         # what a layer builds must all be on disk
    cache.clear_memory()
    compiles = cache.stats.compiles
    for spec in expected:
        assert cache.get(spec).binary
    assert cache.stats.compiles == compiles
    with pytest.raises(cache.CacheMissError):
        cache.get(gptq.kernel_specs(3, 128, True, False, ARCH, 1)[0])


@requires_nvrtc
def test_inspect_nvidia_without_its_gpu_reads_ptxas(fresh_cache):
    """No GPU here loads an sm_80 cubin (an H100 does not either): registers come from ptxas -v."""
    rows = json.loads(ok("inspect", "--spec", "gptq_gemv", "bits=4", "group=128", "m=2", "sym=true",
                         "--arch", "sm_80", "--json"))
    (row,) = rows
    assert "ptxas" in row["note"]
    assert 32 <= row["registers"] <= 255 and row["spill_bytes"] == 0 and row["stack_bytes"] == 0
    assert row["shared_bytes"] >= 16 * 2 * 32 * 4        # partial[16 warps][M = 2][32] floats
    portable = json.loads(ok("inspect", "--spec", "gptq_gemv", "bits=4", "group=128", "--arch", "compute_75",
                             "--json"))
    if "registers" not in portable[0]:                  # no GPU: PTX waits for the driver
        assert "driver" in portable[0]["note"]


def test_ptxas_report_parses_its_log():
    from jitkern.inspect import ptxas_report

    log = ("ptxas info    : Compiling entry function 'jk_x' for 'sm_90'\n"
           "ptxas info    : Function properties for jk_x\n"
           "    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
           "ptxas info    : Used 96 registers, used 1 barriers\n")
    assert ptxas_report(log) == {"registers": 96, "shared_bytes": 0, "stack_bytes": 8, "spill_bytes": 4}
    with pytest.raises(ValueError, match="no ptxas resource report"):
        ptxas_report("ptxas fatal   : something else")


@requires_hiprtc
def test_inspect_json_matches_code_object(fresh_cache):
    from jitkern.inspect import amd_kernel_report, amdgpu_metadata, instruction_counts, objdump

    one = json.loads(ok("inspect", "--spec", "gptq_gemv", "bits=4", "group=128", "m=1", "sym=true",
                        "--arch", ARCH, "--json"))
    rows = one + json.loads(ok("inspect", "--all", "--preset", "llama-3-8b", "--max-batch", "1",
                               "--arch", ARCH, "--json", "--no-instructions"))
    assert {r["uri"] for r in rows} >= {"gptq_gemv_w4_g128_m1_f16_sym_gfx906", "gptq_dequant_w4_g128_f16_sym_gfx906"}
    on_disk = bins(fresh_cache)
    for row in rows:
        binary = on_disk[row["uri"]].read_bytes()
        assert {k: row[k] for k in amd_kernel_report(binary)} == amd_kernel_report(binary)
        raw = amdgpu_metadata(binary)["amdhsa.kernels"][0]              # the ELF note itself
        assert (row["vgprs"], row["sgprs"], row["lds_bytes"], row["scratch_bytes"]) == (
            raw[".vgpr_count"], raw[".sgpr_count"], raw[".group_segment_fixed_size"],
            raw[".private_segment_fixed_size"])
    if objdump():
        assert one[0]["instructions"] == instruction_counts(on_disk[one[0]["uri"]].read_bytes(), ARCH)
        assert one[0]["instructions"]["v_dot2_f32_f16"] > 0


@requires_hiprtc
def test_cache_list_verify_prune_clear(fresh_cache):
    warm("--max-batch", "2")
    listed = json.loads(ok("cache", "list", "--json"))
    assert len(listed) == 5 and all(e["complete"] for e in listed)
    assert "5 entries checked, 0 broken" in ok("cache", "verify")

    victim = sorted(bins(fresh_cache).items())[0]
    data = bytearray(victim[1].read_bytes())
    data[len(data) // 2] ^= 0xFF                          # one flipped byte
    victim[1].write_bytes(bytes(data))
    p, _ = cli("cache", "verify")
    assert p.returncode == 1 and f"BROKEN {victim[0]}/" in p.stdout and "1 broken" in p.stdout, p.stdout
    ok("cache", "verify", "--fix")
    assert not victim[1].exists() and not victim[1].with_suffix(".json").exists()
    assert "4 entries checked, 0 broken" in ok("cache", "verify")
    rewarm, _ = warm("--max-batch", "2")                  # the manifest notices the hole
    assert rewarm["compiled"] == 1

    # Give entries distinct ages (the marker is not covered by the digest, so they stay valid).
    now, metas = time.time(), sorted((fresh_cache / "v1").glob("*/*.json"))
    for age_days, meta in enumerate(metas):
        m = json.loads(meta.read_text())
        m["created"] = now - age_days * 86400 - 60
        meta.write_text(json.dumps(m))
    ok("cache", "prune", "--older-than", "3.5")           # ages 4 days: gone
    assert sorted((fresh_cache / "v1").glob("*/*.json")) == metas[:4]
    sizes = [m.stat().st_size + m.with_suffix(".bin").stat().st_size for m in metas[:4]]
    ok("cache", "prune", "--max-size", str((sizes[0] + sizes[1] + 100) / (1 << 20)))   # oldest first
    assert sorted((fresh_cache / "v1").glob("*/*.json")) == metas[:2]
    assert ok("cache", "verify").startswith("2 entries checked, 0 broken")

    p, _ = cli("cache", "clear")
    assert p.returncode != 0 and "--yes" in p.stderr
    ok("cache", "clear", "--yes")
    assert json.loads(ok("cache", "list", "--json")) == [] and not (fresh_cache / "warmup").exists()


ERRORS = [
    (("warmup", "--preset", "llama-9000", "--arch", ARCH), "unknown preset"),
    (("warmup", "--model", "/nonexistent/model", "--arch", ARCH), "cannot read"),
    (("warmup", "--gguf", "/nonexistent/model.gguf", "--arch", ARCH), "cannot read"),
    (("warmup", "--preset", "llama-3-8b", "--arch", "gfx9000x"), "arch"),
    (("inspect", "--spec", "no_such_family", "--arch", ARCH), "unknown kernel family"),
]
NO_GPU = [(("selftest",), "needs a GPU"), (("warmup", "--preset", "llama-3-8b"), "no GPU")]


@pytest.mark.parametrize("args,message", ERRORS + ([] if torch.cuda.is_available() else NO_GPU))
def test_errors_are_one_line(fresh_cache, args, message):
    p, _ = cli(*args)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr + p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], p.stderr


def test_unreadable_model_config(fresh_cache, tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    p, _ = cli("warmup", "--model", str(tmp_path), "--arch", ARCH)
    assert p.returncode == 1 and "not valid JSON" in p.stderr and "Traceback" not in p.stderr


def test_warmup_model_folder(fresh_cache, tmp_path):
    cfg = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_key_value_heads=4,
               vocab_size=1000, quantization_config={"quant_method": "awq", "bits": 4, "group_size": 128,
                                                     "zero_point": True})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    s = json.loads(ok("warmup", "--model", str(tmp_path), "--arch", ARCH, "--max-batch", "1", "--dry-run", "--json"))
    assert s["quant"] == "awq int4 g128 asym" and s["compiled"] == 0
    assert "gptq_gemv_w4_g128_m1_f16_gfx906" in s["kernels"] and "gptq_dequant_w4_g128_f16_gfx906" in s["kernels"]


def test_warmup_gguf_file(fresh_cache, tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np
    from jitkern.ops import dense

    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("output.weight", np.zeros((64, 256), np.float16))               # -> dense kernels
    w.add_tensor("blk.0.attn_norm.weight", np.ones(256, np.float32))             # 1-D: no kernel
    q = gguf.quants.quantize(np.ones((64, 256), np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    p, _ = cli("warmup", "--gguf", str(path), "--arch", ARCH, "--max-batch", "2", "--dry-run", "--json")
    try:
        from jitkern.ops import gguf as gguf_ops
    except ModuleNotFoundError:                          # kernels not written yet: said clearly
        assert p.returncode == 1 and "jitkern.ops.gguf is missing" in p.stderr, p.stderr
        return
    assert p.returncode == 0, p.stderr
    expected = gguf_ops.kernel_specs("Q8_0", ARCH, 2) + dense.kernel_specs(ARCH, 2)
    assert set(json.loads(p.stdout)["kernels"]) == {s.uri for s in expected}


def test_info_json(fresh_cache):
    from jitkern import env

    info = json.loads(ok("info", "--json"))
    assert info["cache"]["dir"] == str(fresh_cache) and info["cache"]["entries"] == 0
    assert set(info["settings"]) == set(env.SETTINGS)
    assert info["settings"]["JITKERN_CACHE_DIR"]["value"] == str(fresh_cache)
    assert set(info["compilers"]) == {"amd", "nvidia"} and "hip-python" in info["backends"]


def test_hf_quantization_configs():
    from jitkern.presets import Quant, apply_overrides, quant_from_config

    assert quant_from_config({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True,
                              "sym": False}) == Quant("gptq", 4, 128, sym=False, act_order=True)
    assert quant_from_config({"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True}) \
        == Quant("awq", 4, 64, sym=False, act_order=False)
    assert apply_overrides(Quant(), quant="gguf-q4_k").gguf_type == "Q4_K"
    assert apply_overrides(Quant(), bits=8, group=-1, asym=True) == Quant("gptq", 8, -1, sym=False)
