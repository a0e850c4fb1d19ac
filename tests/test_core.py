"""The JIT core on a CPU machine: spec, render, real hiprtc for gfx906, and the disk cache."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import requires_hiprtc
from jitkern import cache
from jitkern.compiler import CompileError
from jitkern.spec import KernelSpec

ROOT = Path(__file__).resolve().parent.parent
SPEC = dict(family="gptq_dequant", fmt="gptq", bits=4, group=128, arch="gfx906", options={"sym": True})


def run_py(code: str, env_extra: dict, timeout=120) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_extra}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout, check=True).stdout


COMPILE_ONE = """
    import hashlib, jitkern
    from jitkern import cache
    from jitkern.spec import KernelSpec
    e = cache.get(KernelSpec('gptq_dequant', 'gptq', bits=4, group=128, arch='gfx906', options={'sym': True}))
    print(cache.stats.compiles, hashlib.sha256(e.binary).hexdigest())
"""


def test_spec_is_frozen_hashable_readable_and_validated():
    s = KernelSpec("gptq_gemv", "gptq", bits=4, group=128, m=4, arch="gfx906", options={"act_order": True})
    assert s.uri == "gptq_gemv_w4_g128_m4_f16_actorder_gfx906"
    assert s.wave == 64 and KernelSpec("gptq_gemv", "gptq", bits=4, group=128, arch="sm_90").wave == 32
    assert hash(s) == hash(KernelSpec("gptq_gemv", "gptq", bits=4, group=128, m=4, arch="gfx906",
                                      options={"act_order": True, "sym": False}))
    with pytest.raises(AttributeError):
        s.bits = 8
    for bad in (dict(bits=5), dict(m=9), dict(group=96), dict(act="f32"), dict(arch="gfx9x"),
                dict(options={"nope": True}), dict(options={"sym": 1.5})):
        with pytest.raises(ValueError):
            KernelSpec(**{**dict(family="gptq_gemv", fmt="gptq", bits=4, group=128, arch="gfx906"), **bad})
    with pytest.raises(ValueError, match="unknown kernel family"):
        KernelSpec("nope", "gptq")


def test_render_is_strict():
    import jinja2
    from jitkern.render import environment

    with pytest.raises(jinja2.UndefinedError):
        environment().from_string("{{ not_given }}").render()


def test_import_without_backends_and_clear_message(fresh_cache):
    out = run_py("""
        import sys
        sys.modules['hip'] = None; sys.modules['cuda'] = None; sys.modules['cuda.bindings'] = None
        import jitkern
        from jitkern import cache
        from jitkern.spec import KernelSpec
        try:
            cache.get(KernelSpec('gptq_dequant', 'gptq', bits=4, group=128, arch='sm_90'))
        except jitkern.BackendMissing as e:
            print('missing:', e)
    """, {"JITKERN_CACHE_DIR": str(fresh_cache)})
    assert "missing:" in out and "pip install 'jitkern[cuda]'" in out


@requires_hiprtc
def test_gfx906_code_object_from_real_hiprtc(fresh_cache, monkeypatch):
    from jitkern.arch import resolve
    from jitkern.inspect import amd_kernel_report

    monkeypatch.setenv("JITKERN_ARCH", "gfx906")
    spec = KernelSpec(**{**SPEC, "arch": resolve().arch})
    entry = cache.get(spec)
    assert entry.binary[:4] == b"\x7fELF"
    report = amd_kernel_report(entry.binary)
    assert report["target"] == "amdgcn-amd-amdhsa--gfx906" and report["name"] == "jk_gptq_dequant"
    assert cache.stats.compiles >= 1
    meta = json.loads(next(fresh_cache.rglob("*.json")).read_text())
    assert meta["arch"] == "gfx906" and meta["compiler"].startswith("hiprtc") and meta["uri"] == spec.uri


@requires_hiprtc
def test_second_process_hits_the_cache(fresh_cache):
    env = {"JITKERN_CACHE_DIR": str(fresh_cache)}
    first, second = run_py(COMPILE_ONE, env).split(), run_py(COMPILE_ONE, env).split()
    assert first[0] == "1" and second[0] == "0" and first[1] == second[1]


@requires_hiprtc
def test_eight_processes_on_a_cold_cache_compile_once(fresh_cache):
    script = fresh_cache.parent / "racer.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        start = float(sys.argv[1])
        while time.time() < start:
            time.sleep(0.001)
    """) + textwrap.dedent(COMPILE_ONE))
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT), "JITKERN_CACHE_DIR": str(fresh_cache)}
    start = str(time.time() + 8)       # all eight are past their imports before the gun
    procs = [subprocess.Popen([sys.executable, str(script), start], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    results = [p.communicate(timeout=180)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(int(r[0]) for r in results) == 1, results
    assert len({r[1] for r in results}) == 1


@requires_hiprtc
@pytest.mark.parametrize("damage", ["truncate", "bitflip", "no_marker", "wrong_schema"])
def test_broken_entry_is_rebuilt_with_a_warning(fresh_cache, damage, caplog):
    spec = KernelSpec(**SPEC)
    good = cache.get(spec).binary
    bin_path = next(fresh_cache.rglob("*.bin"))
    meta_path = bin_path.with_suffix(".json")
    if damage == "truncate":
        bin_path.write_bytes(good[: len(good) // 2])
    elif damage == "bitflip":
        raw = bytearray(good)
        raw[len(raw) // 3] ^= 0x10
        bin_path.write_bytes(bytes(raw))
    elif damage == "no_marker":
        meta_path.unlink()                        # killed between binary and marker
    else:
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({**meta, "schema": 0}))
    cache.clear_memory()
    before = cache.stats.compiles
    with caplog.at_level(logging.WARNING, logger="jitkern"):
        rebuilt = cache.get(spec).binary
    assert cache.stats.compiles == before + 1
    assert rebuilt == good and hashlib.sha256(bin_path.read_bytes()).hexdigest() == hashlib.sha256(good).hexdigest()
    if damage != "no_marker":
        assert any("broken entry" in r.message for r in caplog.records)
    from jitkern.inspect import amd_kernel_report

    assert amd_kernel_report(rebuilt)["name"] == "jk_gptq_dequant"


@requires_hiprtc
def test_compile_error_carries_log_numbered_source_and_options():
    from jitkern.compiler import hiprtc

    src = "extern \"C\" __global__ void k(float* p) {\n  p[0] = undefined_name;\n}\n"
    with pytest.raises(CompileError) as info:
        hiprtc.compile(src, "gfx906", hiprtc.default_options("gfx906"), name="broken.hip")
    text = str(info.value)
    assert "undefined_name" in info.value.log and "    2    p[0] = undefined_name;" in text
    assert "--gpu-architecture=gfx906" in text
    again = pickle.loads(pickle.dumps(info.value))
    assert again.log == info.value.log and again.source == src


@requires_hiprtc
def test_unusable_cache_dir_falls_back_to_memory_once(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")         # mkdir under a file fails even for root
    monkeypatch.setenv("JITKERN_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(cache, "_warned_memory_only", False)
    cache.clear_memory()
    with caplog.at_level(logging.WARNING, logger="jitkern"):
        a = cache.get(KernelSpec(**SPEC))
        cache.get(KernelSpec(**{**SPEC, "bits": 8}))
    assert a.binary[:4] == b"\x7fELF"
    assert sum("memory only" in r.message for r in caplog.records) == 1


@requires_hiprtc
def test_full_disk_falls_back_to_memory(fresh_cache, monkeypatch, caplog):
    def no_space(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "_atomic_write", no_space)
    monkeypatch.setattr(cache, "_warned_memory_only", False)
    with caplog.at_level(logging.WARNING, logger="jitkern"):
        entry = cache.get(KernelSpec(**SPEC))
    assert entry.binary[:4] == b"\x7fELF"
    assert any("memory only" in r.message for r in caplog.records)
    assert not list(fresh_cache.rglob("*.json"))


@requires_hiprtc
def test_no_compile_setting_makes_a_miss_an_error(fresh_cache, monkeypatch):
    monkeypatch.setenv("JITKERN_NO_COMPILE", "1")
    with pytest.raises(cache.CacheMissError, match="jitkern warmup"):
        cache.get(KernelSpec(**SPEC))
