"""NVIDIA compiler: NVRTC through cuda-bindings.  Produces a cubin for one ``sm_XX``."""
from __future__ import annotations

import glob
import os
import sys
from contextlib import contextmanager
from functools import lru_cache

from . import BackendMissing, CompileError

INSTALL_HINT = "the NVIDIA backend needs cuda-bindings and NVRTC (pip install 'jitkern[cuda]')"


@lru_cache(maxsize=1)
def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:
        raise BackendMissing(f"cannot import cuda.bindings.nvrtc ({e}); {INSTALL_HINT}") from None
    try:
        nvrtc.nvrtcVersion()             # the bindings open libnvrtc on the first call
    except Exception as e:
        raise BackendMissing(f"cannot load the NVRTC library ({type(e).__name__}: {e}); {INSTALL_HINT}") from None
    return nvrtc


def _check(result, what: str):
    err = result[0]
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {err}")
    return result[1:]


@lru_cache(maxsize=1)
def include_dir() -> str:
    """A directory holding cuda_fp16.h: CUDA_HOME/CUDA_PATH, the pip CUDA headers, or /usr/local/cuda*."""
    roots = [os.environ.get(v, "") for v in ("CUDA_HOME", "CUDA_PATH")]
    candidates = [os.path.join(r, "include") for r in roots if r]
    for site in sys.path:
        candidates += sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")), reverse=True)
        candidates += glob.glob(os.path.join(site, "nvidia", "cuda_runtime", "include"))
    candidates += ["/usr/local/cuda/include"] + sorted(glob.glob("/usr/local/cuda-*/include"), reverse=True)
    for c in candidates:
        if os.path.exists(os.path.join(c, "cuda_fp16.h")):
            return c
    raise BackendMissing("cuda_fp16.h not found (set CUDA_HOME, or pip install nvidia-cuda-runtime)")


@lru_cache(maxsize=1)
def fingerprint() -> str:
    major, minor = _check(_nvrtc().nvrtcVersion(), "nvrtcVersion")
    return f"nvrtc-{major}.{minor}"


def default_options(arch: str) -> list[str]:
    # NVRTC optimises by default and rejects -O3.
    return [f"--gpu-architecture={arch}", "-std=c++17", f"-I{include_dir()}"]


@contextmanager
def _program(source: str, arch: str, options: list[str], name: str, log: list | None):
    """A compiled NVRTC program (destroyed on exit); `log` receives the compiler's messages."""
    nvrtc = _nvrtc()
    (prog,) = _check(nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], []), "nvrtcCreateProgram")
    try:
        opts = [o.encode() for o in options]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        (size,) = _check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        raw = b" " * size
        if size:
            _check(nvrtc.nvrtcGetProgramLog(prog, raw), "nvrtcGetProgramLog")
        text = raw.rstrip(b"\0").decode(errors="replace")
        if log is not None:
            log.append(text)
        if int(err) != 0:
            raise CompileError(name, arch, text, source, options)
        yield nvrtc, prog
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def compile(source: str, arch: str, options: list[str], name: str = "kernel.cu", log: list | None = None) -> bytes:
    """Compile CUDA source to a cubin, or for a virtual architecture (compute_75) to PTX, NUL-terminated
    as the driver loads it; `log` (a list) receives the compiler's messages, e.g. ptxas's with
    --ptxas-options=-v."""
    with _program(source, arch, options, name, log) as (nvrtc, prog):
        if arch.startswith("compute_"):
            return _ptx(nvrtc, prog)
        (size,) = _check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * size
        _check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return cubin


def _ptx(nvrtc, prog) -> bytes:
    (size,) = _check(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
    text = b" " * size
    _check(nvrtc.nvrtcGetPTX(prog, text), "nvrtcGetPTX")
    return text


def ptx(source: str, arch: str, name: str = "kernel.cu") -> str:
    """The PTX of CUDA source for a virtual architecture (e.g. compute_90a), to inspect what it issues."""
    with _program(source, arch, default_options(arch), name, None) as (nvrtc, prog):
        return _ptx(nvrtc, prog).rstrip(b"\0").decode()
