"""Two-level kernel cache: an in-process dict, then a disk directory shared by processes.

Disk entries live in ``<cache_dir>/v<SCHEMA>/<uri>/<key>.bin`` with ``<key>.json`` beside it.  The key
hashes everything that decides the binary: the rendered source, the compiler options, the full target
arch, the compiler's fingerprint, jitkern's version and the schema number.  Writes are atomic (temp
file + ``os.replace``) and ``meta.json`` is written last as the commit marker; the binary's digest is
checked on every load, and a broken entry is a logged miss that gets rebuilt.  A per-key file lock
with a second look after acquiring it makes concurrent processes compile a kernel once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import filelock

from . import __version__, env
from .compiler import for_vendor
from .families import get_family
from .render import render
from .spec import KernelSpec

SCHEMA = 1
LOCK_TIMEOUT_S = 900
log = logging.getLogger("jitkern")


class CacheMissError(RuntimeError):
    """JITKERN_NO_COMPILE=1 and a kernel is not in the cache."""


@dataclass
class Stats:
    compiles: int = 0
    disk_hits: int = 0
    memory_hits: int = 0
    rebuilt: int = 0
    compiled: list = field(default_factory=list)   # uris compiled by this process


@dataclass(frozen=True)
class Entry:
    spec: KernelSpec
    key: str
    binary: bytes
    source: str
    options: tuple


stats = Stats()
_memory: dict[KernelSpec, Entry] = {}
_lock = threading.Lock()
_warned_memory_only = False


def entry_key(source: str, options: list[str], arch: str, fingerprint: str) -> str:
    h = hashlib.sha256()
    for part in (source, "\0".join(options), arch, fingerprint, __version__, str(SCHEMA)):
        h.update(part.encode())
        h.update(b"\x1f")
    return h.hexdigest()


def root() -> Path:
    return env.cache_dir() / f"v{SCHEMA}"


def _paths(spec: KernelSpec, key: str) -> tuple[Path, Path, Path]:
    d = root() / spec.uri
    stem = key[:32]
    return d / f"{stem}.bin", d / f"{stem}.json", d / f"{stem}.lock"


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_entry(bin_path: Path, meta_path: Path, key: str | None = None) -> bytes | None:
    """The binary if the entry is complete and intact, else None (with a warning if it is broken)."""
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        binary = bin_path.read_bytes()
        if key is not None and meta.get("key") != key:
            raise ValueError("key mismatch")
        if meta.get("schema") != SCHEMA:
            raise ValueError(f"schema {meta.get('schema')} != {SCHEMA}")
        if hashlib.sha256(binary).hexdigest() != meta.get("sha256") or len(binary) != meta.get("size"):
            raise ValueError("digest mismatch")
        return binary
    except (OSError, ValueError, TypeError, AttributeError) as e:
        log.warning("jitkern cache: broken entry %s (%s); rebuilding", bin_path, e)
        stats.rebuilt += 1
        return None


def _write_entry(spec: KernelSpec, key: str, binary: bytes, options: list[str], fingerprint: str,
                 seconds: float) -> None:
    bin_path, meta_path, _ = _paths(spec, key)
    meta = {"uri": spec.uri, "key": key, "spec": repr(spec), "arch": spec.arch, "options": options,
            "compiler": fingerprint, "jitkern": __version__, "schema": SCHEMA, "size": len(binary),
            "sha256": hashlib.sha256(binary).hexdigest(), "compile_s": round(seconds, 3),
            "created": time.time()}
    meta_path.unlink(missing_ok=True)            # a stale marker must not vouch for the new binary
    _atomic_write(bin_path, binary)
    _atomic_write(meta_path, json.dumps(meta, indent=1).encode())


def _memory_only(reason: Exception) -> None:
    global _warned_memory_only
    if not _warned_memory_only:
        _warned_memory_only = True
        log.warning("jitkern cache: %s is not usable (%s); kernels are kept in memory only", root(), reason)


def _compile(spec: KernelSpec, source: str, options: list[str]) -> bytes:
    if env.no_compile():
        raise CacheMissError(f"JITKERN_NO_COMPILE=1 and {spec.uri} is not in the cache at {root()}; "
                             f"run `jitkern warmup` for this model and arch first")
    compiler = for_vendor(spec.target.vendor)
    binary = compiler.compile(source, spec.arch, options, name=f"{spec.uri}.{'hip' if spec.target.vendor == 'amd' else 'cu'}")
    stats.compiles += 1
    stats.compiled.append(spec.uri)
    return binary


def get(spec: KernelSpec) -> Entry:
    """The compiled kernel for a spec: memory, then disk, then compile (once across processes)."""
    hit = _memory.get(spec)
    if hit is not None:
        stats.memory_hits += 1
        return hit
    if not isinstance(spec, KernelSpec):       # off the hot path: a memory hit is always a spec
        raise ValueError(f"spec: expected a jitkern.spec.KernelSpec, got {type(spec).__name__}")
    with _lock:
        hit = _memory.get(spec)
        if hit is None:
            hit = _memory[spec] = _load_or_build(spec)
        return hit


def build_inputs(spec: KernelSpec) -> tuple[str, list[str]]:
    """The source and compiler options the cache builds a spec from."""
    compiler = for_vendor(spec.target.vendor)
    return render(spec), compiler.default_options(spec.arch + get_family(spec.family).arch_suffix)


def _load_or_build(spec: KernelSpec) -> Entry:
    compiler = for_vendor(spec.target.vendor)
    source, options = build_inputs(spec)
    fingerprint = compiler.fingerprint()
    key = entry_key(source, options, spec.arch, fingerprint)
    bin_path, meta_path, lock_path = _paths(spec, key)
    make = lambda binary: Entry(spec, key, binary, source, tuple(options))  # noqa: E731

    binary = read_entry(bin_path, meta_path, key)
    if binary is not None:
        stats.disk_hits += 1
        return make(binary)
    try:
        bin_path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(lock_path), timeout=LOCK_TIMEOUT_S)
        lock.acquire()
    except OSError as e:
        _memory_only(e)
        return make(_compile(spec, source, options))
    try:
        binary = read_entry(bin_path, meta_path, key)     # another process may have built it meanwhile
        if binary is not None:
            stats.disk_hits += 1
            return make(binary)
        t0 = time.perf_counter()
        binary = _compile(spec, source, options)
        try:
            _write_entry(spec, key, binary, options, fingerprint, time.perf_counter() - t0)
        except OSError as e:
            _memory_only(e)
        return make(binary)
    finally:
        lock.release()


def clear_memory() -> None:
    """Forget in-process entries (tests; the disk cache is untouched)."""
    with _lock:
        _memory.clear()
