"""AMD compiler: hiprtc through hip-python.

Works on a machine with no AMD GPU: Debian/Ubuntu's ``libamdhip64-dev libhiprtc-builtins5`` (ROCm 5.2)
export hiprtc from ``libamdhip64.so.5``.  hip-python looks for ``$ROCM_PATH/lib/libhiprtc.so``; where
neither ROCm nor ROCM_PATH is set up, we point ROCM_PATH at a small directory of symlinks to the
distribution's library.
"""
from __future__ import annotations

import ctypes.util
import glob
import os
from functools import lru_cache
from pathlib import Path

from . import BackendMissing, CompileError

INSTALL_HINT = ("the AMD backend needs hip-python (pip install 'jitkern[rocm]') and ROCm's hiprtc "
                "(ROCm, or on Debian/Ubuntu: apt-get install libamdhip64-dev libhiprtc-builtins5)")


def _system_hip_library() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/libamdhip64.so.*")) + [ctypes.util.find_library("amdhip64") or ""]
    return next((p for p in found if p and os.path.exists(p)), None)


def _rocm_root() -> Path:
    for var in ("ROCM_PATH", "ROCM_HOME"):
        if os.environ.get(var):
            return Path(os.environ[var])
    if Path("/opt/rocm/lib/libhiprtc.so").exists():
        return Path("/opt/rocm")
    lib = _system_hip_library()
    if lib is None:
        raise BackendMissing(f"no hiprtc library found; {INSTALL_HINT}")
    from .. import env

    shim = env.cache_dir() / "rocm-shim"
    try:
        (shim / "lib").mkdir(parents=True, exist_ok=True)
    except OSError:
        shim = Path(f"/tmp/jitkern-rocm-shim-{os.getuid()}")
        (shim / "lib").mkdir(parents=True, exist_ok=True)
    for name in ("libhiprtc.so", "libamdhip64.so"):
        link = shim / "lib" / name
        if not link.exists():
            tmp = link.with_name(f"{name}.{os.getpid()}")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(lib)
            os.replace(tmp, link)
    os.environ["ROCM_PATH"] = str(shim)
    return shim


@lru_cache(maxsize=1)
def _hiprtc():
    root = _rocm_root()
    try:
        from hip import hiprtc
    except ImportError as e:
        raise BackendMissing(f"cannot import hip-python ({e}); {INSTALL_HINT}") from None
    try:
        hiprtc.hiprtcVersion()           # hip-python opens the library on the first call
    except Exception as e:
        raise BackendMissing(f"cannot load hiprtc from {Path(root) / 'lib'} ({e}); {INSTALL_HINT}") from None
    return hiprtc, root


def _check(result, what: str):
    err = result[0] if isinstance(result, tuple) else result
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {err}")
    return result[1:] if isinstance(result, tuple) and len(result) > 1 else None


@lru_cache(maxsize=1)
def fingerprint() -> str:
    """hiprtc's version plus the library file it resolves to (ROCm patch releases keep the version)."""
    hiprtc, root = _hiprtc()
    major, minor = _check(hiprtc.hiprtcVersion(), "hiprtcVersion")
    lib = Path(root) / "lib" / "libhiprtc.so"
    return f"hiprtc-{major}.{minor}:{os.path.realpath(lib)}"


def default_options(arch: str) -> list[str]:
    return [f"--gpu-architecture={arch}", "-O3", "-std=c++17"]


def compile(source: str, arch: str, options: list[str], name: str = "kernel.hip") -> bytes:
    """Compile HIP source to a code object (an AMDGPU ELF)."""
    hiprtc, _ = _hiprtc()
    err, prog = hiprtc.hiprtcCreateProgram(source.encode(), name.encode(), 0, [], [])
    _check((err,), "hiprtcCreateProgram")
    try:
        opts = [o.encode() for o in options]
        (err,) = hiprtc.hiprtcCompileProgram(prog, len(opts), opts)
        size = _check(hiprtc.hiprtcGetProgramLogSize(prog), "hiprtcGetProgramLogSize")[0]
        log = bytearray(size)
        if size:
            hiprtc.hiprtcGetProgramLog(prog, log)
        if int(err) != 0:
            raise CompileError(name, arch, log.rstrip(b"\0").decode(errors="replace"), source, options)
        size = _check(hiprtc.hiprtcGetCodeSize(prog), "hiprtcGetCodeSize")[0]
        code = bytearray(size)
        _check((hiprtc.hiprtcGetCode(prog, code)[0],), "hiprtcGetCode")
        return bytes(code)
    finally:
        hiprtc.hiprtcDestroyProgram(prog.createRef())   # takes hiprtcProgram*
