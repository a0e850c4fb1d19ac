"""Warmup manifests: let a repeated `jitkern warmup` prove "all cached" without importing torch.

Listing a model's kernels imports the ops modules, and they import torch (2-3 s), which alone would
break the "second run in under 2 s" goal.  So a successful warmup records the cache entries it
needs under a signature of everything that decides them: the request (model, quant, arch, batch),
jitkern's code and templates (by content), and the compiler fingerprint.  A later identical request
re-checks each recorded entry's digest and is done; any change or any broken entry falls back to
the full check.  A stale manifest can only cost time, never skip a needed compile.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from . import __version__, env

_PACKAGE = Path(__file__).resolve().parent


def _code_digest() -> str:
    h = hashlib.sha256()
    roots = [_PACKAGE] + [d for d in (_PACKAGE / "templates", _PACKAGE.parent / "templates") if d.is_dir()]
    for root in roots:
        pattern = "*.py" if root == _PACKAGE else "*"
        for path in sorted(root.rglob(pattern)):
            if path.is_file() and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def signature(request: dict, arch: str) -> str | None:
    """None when the compiler cannot be asked for its fingerprint (then there is no fast path)."""
    from .arch import parse
    from .compiler import for_vendor

    try:
        fingerprint = for_vendor(parse(arch).vendor).fingerprint()
    except Exception:            # backend missing: the slow path reports it properly
        return None
    blob = json.dumps({"request": request, "arch": arch, "compiler": fingerprint, "jitkern": __version__,
                       "code": _code_digest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _path(sig: str) -> Path:
    return env.cache_dir() / "warmup" / f"{sig}.json"


def _entry_ok(rel: str, key: str) -> bool:
    base = env.cache_dir() / rel
    try:
        meta = json.loads(base.with_suffix(".json").read_text())
        binary = base.with_suffix(".bin").read_bytes()
    except (OSError, ValueError):
        return False
    return (meta.get("key") == key and meta.get("size") == len(binary)
            and meta.get("sha256") == hashlib.sha256(binary).hexdigest())


def check(sig: str | None) -> dict | None:
    """The recorded manifest ({"entries", "info"}) if every entry is present and intact, else None."""
    if sig is None:
        return None
    try:
        data = json.loads(_path(sig).read_text())
        entries = data["entries"]
    except (OSError, ValueError, KeyError):
        return None
    if all(_entry_ok(e["path"], e["key"]) for e in entries):
        return data
    return None


def record(sig: str | None, entries: list[dict], info: dict | None = None) -> None:
    """entries: {"uri", "key", "path"} with path = the entry's location under the cache dir, no suffix;
    info: what to report on a fast-path run (quantization, notes)."""
    if sig is None:
        return
    path = _path(sig)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"entries": entries, "info": info or {}}, f)
        os.replace(tmp, path)
    except OSError:
        pass                     # read-only cache: warmup still worked, only the fast path is lost
