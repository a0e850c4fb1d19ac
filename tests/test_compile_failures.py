"""Compile failures: a missing hiprtc or NVRTC library, and a template that fails for one arch,
each give one actionable message and leave every other kernel working.

(An uninstalled hip-python / cuda-bindings is tests/test_core.py::test_import_without_backends...;
a compile error's log, numbered source and pickling are tests/test_core.py too.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import nvrtc_available, requires_hiprtc
from jitkern import cache
from jitkern.compiler import BackendMissing, CompileError
from jitkern.spec import KernelSpec

ROOT = Path(__file__).resolve().parent.parent
AMD_HINT = "apt-get install libamdhip64-dev libhiprtc-builtins5"
NV_HINT = "pip install 'jitkern[cuda]'"



# Runs in a fresh process (the compiler libraries are loaded once per process): make one backend's
# library unloadable, then report what cache.get and `jitkern warmup` say, and whether the other
# vendor's kernels still compile.
SCRIPT = """
import contextlib, io, json, sys, types
mode, other_arch = sys.argv[1], sys.argv[2]
if mode == "nvrtc":             # cuda-bindings present, libnvrtc not: the first call fails to load it
    fake = types.ModuleType("cuda.bindings.nvrtc")
    def nvrtc_version():
        raise RuntimeError("Failure finding libnvrtc.so.13")
    fake.nvrtcVersion = nvrtc_version
    sys.modules["cuda.bindings.nvrtc"] = fake
    try:
        import cuda.bindings
        cuda.bindings.nvrtc = fake
    except ImportError:
        pass
from jitkern import cache, cli
from jitkern.spec import KernelSpec
arch = "gfx906" if mode == "hiprtc" else "sm_90"
out = {}
try:
    cache.get(KernelSpec("q8_1_quantize", "q8_1", arch=arch))
    out["get"] = "compiled"
except Exception as e:
    out["get"] = [type(e).__name__, str(e)]
err = io.StringIO()
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    out["warmup_rc"] = cli.main(["warmup", "--preset", "llama-3-8b", "--arch", arch, "--max-batch", "1",
                                 "--jobs", "1", "--quiet"])
out["warmup_stderr"] = err.getvalue()
if other_arch != "-":
    e = cache.get(KernelSpec("q8_1_quantize", "q8_1", arch=other_arch))
    out["other"] = [len(e.binary), e.binary[:4].hex()]
print("RESULT " + json.dumps(out))
"""


def run_broken_backend(mode: str, other_arch: str, cache_dir: Path, **env) -> dict:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "JITKERN_CACHE_DIR": str(cache_dir), "JITKERN_LOG": "ERROR", **env}
    for var in ("JITKERN_ARCH", "JITKERN_NO_COMPILE"):
        e.pop(var, None)
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), mode, other_arch], env=e,
                       capture_output=True, text=True, timeout=300)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert p.returncode == 0 and line, p.stdout + p.stderr
    return json.loads(line[len("RESULT "):])


def _assert_one_actionable_message(res: dict, library: str, hint: str) -> None:
    kind, msg = res["get"]
    assert kind == "BackendMissing", res
    assert library in msg and hint in msg, msg
    lines = res["warmup_stderr"].strip().splitlines()
    assert res["warmup_rc"] == 1 and len(lines) == 1, res
    assert lines[0].startswith("jitkern warmup: error: ") and hint in lines[0] and library in lines[0], lines


@requires_hiprtc          # hip-python installed, the library it loads missing (no hip-python: test_core.py)
def test_hiprtc_library_missing(fresh_cache, tmp_path):
    empty = tmp_path / "rocm"
    (empty / "lib").mkdir(parents=True)              # a ROCm root with no libhiprtc.so in it
    other = "sm_90" if nvrtc_available() else "-"
    res = run_broken_backend("hiprtc", other, fresh_cache, ROCM_PATH=str(empty))
    _assert_one_actionable_message(res, "hiprtc", AMD_HINT)
    assert str(empty / "lib") in res["get"][1]       # says where it looked
    if other != "-":                                 # NVIDIA kernels still compile in that process
        assert res["other"][0] > 0 and res["other"][1] == "7f454c46"
    assert not list(fresh_cache.glob("v*/*gfx906/*")), "no cache entry for a kernel that never compiled"


@requires_hiprtc
def test_nvrtc_library_missing(fresh_cache):
    res = run_broken_backend("nvrtc", "gfx906", fresh_cache)
    _assert_one_actionable_message(res, "NVRTC", NV_HINT)
    assert res["other"][0] > 0 and res["other"][1] == "7f454c46"     # gfx906 still compiles


# ---------------------------------------------------------------------------------------------
# a template that fails for one arch

BROKEN_FAMILY = "gptq_dequant"
BROKEN_ARCH = "gfx908"
POISON = f'\n#if defined(__{BROKEN_ARCH}__)\n#error "jitkern test: {BROKEN_FAMILY} does not build for {BROKEN_ARCH}"\n#endif\n'


@pytest.fixture
def template_broken_for_gfx908(monkeypatch):
    """gptq_dequant's source gains an #error that only the gfx908 compile sees (the same source
    still builds for gfx906): the compiler, not the test, decides which arch fails."""
    from jitkern import render as render_mod

    real = render_mod.render

    def render(spec):
        src = real(spec)
        return src + POISON if spec.family == BROKEN_FAMILY else src

    monkeypatch.setattr(render_mod, "render", render)
    monkeypatch.setattr(cache, "render", render)


def _spec(family=BROKEN_FAMILY, arch=BROKEN_ARCH):
    if family == "gptq_dequant":
        return KernelSpec(family, "gptq", bits=4, group=128, arch=arch, options={"sym": True})
    return KernelSpec(family, "q8_1", arch=arch)


@requires_hiprtc
def test_template_failing_for_one_arch(fresh_cache, template_broken_for_gfx908):
    with pytest.raises(CompileError) as info:
        cache.get(_spec())
    text = str(info.value)
    assert f"for {BROKEN_ARCH} failed" in text and "does not build for gfx908" in info.value.log
    assert "--gpu-architecture=gfx908" in text and "#error" in text          # options + numbered source
    assert not list(fresh_cache.rglob("*.json")), "a failed compile must not leave an entry"
    assert _spec() not in cache._memory
    with pytest.raises(CompileError):               # the lock was released: a retry compiles again
        cache.get(_spec())
    ok = [cache.get(_spec(arch="gfx906")), cache.get(_spec("q8_1_quantize"))]  # same template, other
    assert all(e.binary[:4] == b"\x7fELF" for e in ok)                         # arch; other template
    assert len(list(fresh_cache.rglob("*.json"))) == 2


@requires_hiprtc
def test_warmup_reports_the_one_failing_kernel_and_builds_the_rest(fresh_cache, template_broken_for_gfx908,
                                                                   monkeypatch, capsys):
    from jitkern import cli

    monkeypatch.delenv("JITKERN_ARCH", raising=False)
    argv = ["warmup", "--preset", "llama-3-8b", "--arch", BROKEN_ARCH, "--max-batch", "1", "--jobs", "1", "--json"]
    assert cli.main(argv) == 1
    s = json.loads(capsys.readouterr().out)
    assert [f["uri"] for f in s["failed"]] == [_spec().uri], s["failed"]
    assert "does not build for gfx908" in s["failed"][0]["error"]
    assert s["compiled"] == len(s["kernels"]) - 1 >= 2                      # every other kernel built
    assert cli.main(argv) == 1                                             # a rerun retries only it
    again = json.loads(capsys.readouterr().out)
    assert again["compiled"] == 0 and again["cached"] == len(s["kernels"]) - 1 and len(again["failed"]) == 1
    # `jitkern inspect` on the broken kernel: one line naming kernel, arch and the compiler's error
    rc = cli.main(["inspect", "--spec", "gptq_dequant", "bits=4", "group=128", "sym=true", "--arch", BROKEN_ARCH])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert f"for {BROKEN_ARCH} failed" in err[0] and "does not build for gfx908" in err[0] and "--debug" in err[0]


def test_backend_missing_is_a_clear_type():
    assert issubclass(BackendMissing, RuntimeError) and issubclass(CompileError, RuntimeError)
