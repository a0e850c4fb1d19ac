"""The disk cache under stress, with real processes and real gfx906 compiles (CPU only).

Extends tests/test_core.py (8 processes on one spec; truncated / bit-flipped / marker-less /
wrong-schema entries rebuilt; an unusable directory; a monkeypatched full disk) with: 16 processes
on a random mix of specs, SIGKILL at every point of an entry write and at a random moment, more
kinds of damaged and other-version entries, a real write failure (RLIMIT_FSIZE: EFBIG) and
ENOSPC / EACCES / EROFS at each write step with exactly one warning, and `jitkern cache
prune/clear/verify` running while other processes read.  Processes come from tests/cache_workers.py.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import requires_hiprtc
from jitkern import cache
from jitkern.spec import KernelSpec

pytestmark = requires_hiprtc
ROOT = Path(__file__).resolve().parent.parent
WORKERS = Path(__file__).resolve().parent / "cache_workers.py"

# Cheap kernels (0.1-0.3 s each), several families, and one arch with target features.
POOL = [dict(family="gguf_dequant", fmt="q4_0", act="f16", arch="gfx906"),
        dict(family="gguf_dequant", fmt="q8_0", act="f32", arch="gfx906"),
        dict(family="gguf_dequant", fmt="q5_0", act="f16", arch="gfx906:sramecc+:xnack-"),
        dict(family="dense_gemv", fmt="f16", m=1, arch="gfx906"),
        dict(family="q8_1_quantize", fmt="q8_1", arch="gfx906"),
        dict(family="gptq_dequant", fmt="gptq", bits=8, group=-1, arch="gfx906", options={"sym": True})]
ONE = POOL[1]


def workers(mode: str, **args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JITKERN_LOG": "ERROR"}
    env.pop("JITKERN_NO_COMPILE", None)
    p = subprocess.run([sys.executable, str(WORKERS), mode, json.dumps(args)], env=env, capture_output=True,
                       text=True, timeout=600)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert p.returncode == 0 and line, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(line[len("RESULT "):])


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


REFERENCE: dict = {}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """uri -> digest of each pool kernel, compiled once in a private cache (kept for copy_entry)."""
    old = os.environ.get("JITKERN_CACHE_DIR")
    REFERENCE["dir"] = tmp_path_factory.mktemp("reference_cache")
    os.environ["JITKERN_CACHE_DIR"] = str(REFERENCE["dir"])
    cache.clear_memory()
    try:
        return {KernelSpec(**d).uri: sha(cache.get(KernelSpec(**d)).binary) for d in POOL}
    finally:
        cache.clear_memory()
        if old is None:
            del os.environ["JITKERN_CACHE_DIR"]
        else:
            os.environ["JITKERN_CACHE_DIR"] = old


def copy_entry(spec: KernelSpec, cache_dir: Path) -> tuple[Path, Path]:
    """Put the reference cache's intact entry for spec into cache_dir; (bin, json) paths."""
    src = next(REFERENCE["dir"].glob(f"v*/{spec.uri}"))
    dst = cache_dir / src.parent.name / spec.uri
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix in (".bin", ".json"):
            shutil.copy2(f, dst / f.name)
    return next(dst.glob("*.bin")), next(dst.glob("*.json"))


def on_disk(cache_dir: Path) -> dict:
    """uri -> digest of every entry that loads (read_entry accepts it)."""
    out = {}
    for meta in cache_dir.glob("v*/*/*.json"):
        try:
            key = json.loads(meta.read_text())["key"]
        except (ValueError, KeyError):
            continue
        binary = cache.read_entry(meta.with_suffix(".bin"), meta, key)
        if binary is not None:
            out[meta.parent.name] = sha(binary)
    return out


def cli(*argv: str) -> tuple[int, str]:
    import contextlib
    import io

    from jitkern import cli as jcli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = jcli.main(list(argv))
    return rc, out.getvalue()


# ---------------------------------------------------------------------------------------------

def test_16_processes_random_mix_cold_cache_compile_each_spec_once(fresh_cache, seed, good):
    rng = random.Random(seed)
    while True:          # 16 random lists of 2-4 specs in random order; every spec wanted by >= 2
        plan = [rng.sample(POOL, rng.randint(2, 4)) for _ in range(16)]
        wanted = [KernelSpec(**d).uri for p in plan for d in p]
        if all(wanted.count(KernelSpec(**d).uri) >= 2 for d in POOL):
            break
    res = workers("race", cache_dir=str(fresh_cache), plan=plan)
    kids = res["children"]
    assert res["exit_codes"] == [0] * 16 and not [k["error"] for k in kids if "error" in k]
    assert len({k["pid"] for k in kids}) == 16
    compiled = [u for k in kids for u in k["compiled"]]
    assert sorted(compiled) == sorted(good), f"each spec compiled exactly once: {sorted(compiled)}"
    for k in kids:
        assert all(good[u] == d for u, d in k["digests"].items()), k
    assert sum(len(k["digests"]) for k in kids) == len(wanted)
    assert on_disk(fresh_cache) == good
    print(f"16 processes, {len(wanted)} requests, {len(compiled)} compiles, {res['seconds']:.1f} s")


KILL_POINTS = ["bin_half", "bin_replaced", "json_half", "json_replaced"]


def test_sigkill_mid_write_never_leaves_an_entry_that_loads(tmp_path, seed, good, monkeypatch):
    spec = KernelSpec(**ONE)
    # rebuilding a broken entry (bit-flipped binary, its marker now stale), killed mid-write
    rebuild = tmp_path / "rebuild"
    monkeypatch.setenv("JITKERN_CACHE_DIR", str(rebuild))
    cache.clear_memory()
    entry_bin = cache._paths(spec, cache.get(spec).key)[0]
    raw = bytearray(entry_bin.read_bytes())
    raw[len(raw) // 2] ^= 1
    entry_bin.write_bytes(bytes(raw))
    points = [[p, p, str(tmp_path / p)] for p in KILL_POINTS] + [["rebuild", "bin_half", str(rebuild)]]
    res = workers("kill", spec=ONE, points=points, random_dir=str(tmp_path / "random"), random_specs=POOL,
                  random_delay=random.Random(seed).uniform(0.3, 1.5))
    assert all(res[label] == -9 for label, _, _ in points), res     # each died at its point
    assert res["random"] in (-9, 0), res
    for label, d in [(label, Path(d)) for label, _, d in points] + [("random", tmp_path / "random")]:
        loads = on_disk(d)
        for u, digest in loads.items():                             # whatever loads is intact
            assert digest == good[u], (label, u)
        if label != "random":                                       # only a committed marker loads
            assert (spec.uri in loads) == (label == "json_replaced"), (label, loads)
        monkeypatch.setenv("JITKERN_CACHE_DIR", str(d))
        cache.clear_memory()
        before, wanted = cache.stats.compiles, POOL if label == "random" else [ONE]
        for s in wanted:                                            # rebuilt where it did not load
            assert sha(cache.get(KernelSpec(**s)).binary) == good[KernelSpec(**s).uri]
        assert cache.stats.compiles - before == sum(KernelSpec(**s).uri not in loads for s in wanted), label
        rc, out = cli("cache", "verify")
        assert rc == 0 and " 0 broken" in out, (label, out)
    # temp files the killed writers left: never loaded; `cache prune` removes them after an hour
    tmps = [t for p in ("bin_half", "json_half", "rebuild") for t in (tmp_path / p).glob("v*/*/.*.tmp")]
    assert len(tmps) == 3, tmps
    for t in tmps:
        os.utime(t, (time.time() - 7200, time.time() - 7200))
    for p in ("bin_half", "json_half", "rebuild"):
        monkeypatch.setenv("JITKERN_CACHE_DIR", str(tmp_path / p))
        assert cli("cache", "prune", "--older-than", "1000")[0] == 0
    assert not any(t.exists() for t in tmps)


def _entry(spec_dict):
    spec = KernelSpec(**spec_dict)
    e = cache.get(spec)
    return spec, e, *cache._paths(spec, e.key)[:2]


DAMAGE = {
    "empty binary": lambda b, m, other: b.write_bytes(b""),
    "binary of another kernel": lambda b, m, other: b.write_bytes(other),
    "garbage marker": lambda b, m, other: m.write_bytes(b"\x00\xff{not json"),
    "marker is a list": lambda b, m, other: m.write_text("[1, 2]"),
    "marker of another key": lambda b, m, other: m.write_text(
        json.dumps({**json.loads(m.read_text()), "key": "0" * 64})),
    "truncated marker": lambda b, m, other: m.write_bytes(m.read_bytes()[:40]),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_entries_are_rebuilt(fresh_cache, damage, caplog, good):
    spec = KernelSpec(**ONE)
    bin_path, meta_path = copy_entry(spec, fresh_cache)
    other = next(REFERENCE["dir"].glob(f"v*/{KernelSpec(**POOL[0]).uri}/*.bin")).read_bytes()
    DAMAGE[damage](bin_path, meta_path, other)
    before = cache.stats.compiles
    with caplog.at_level(logging.WARNING, logger="jitkern"):
        got = cache.get(spec)
    assert sha(got.binary) == good[spec.uri] and cache.stats.compiles == before + 1, damage
    assert any("broken entry" in r.message for r in caplog.records), damage
    assert on_disk(fresh_cache)[spec.uri] == good[spec.uri]


def test_entry_of_another_jitkern_version_is_not_loaded(fresh_cache, monkeypatch, good):
    spec = KernelSpec(**ONE)
    with monkeypatch.context() as m:
        m.setattr(cache, "__version__", "0.0.0-old")
        old = cache.get(spec)
        old_bin = cache._paths(spec, old.key)[0]
    old_bin.write_bytes(b"\x7fELF from an old jitkern")          # would be wrong if ever loaded
    meta = old_bin.with_suffix(".json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "size": old_bin.stat().st_size,
                                "sha256": sha(old_bin.read_bytes())}))       # intact for its version
    cache.clear_memory()
    before = cache.stats.compiles
    new = cache.get(spec)
    assert new.key != old.key and cache.stats.compiles == before + 1
    assert sha(new.binary) == good[spec.uri] and old_bin.read_bytes() == b"\x7fELF from an old jitkern"
    cache.clear_memory()                                  # from disk now: the current entry
    assert sha(cache.get(spec).binary) == good[spec.uri] and cache.stats.compiles == before + 1


# ---------------------------------------------------------------------------------------------
# write failures: memory only, one warning

def test_real_write_failure_efbig_falls_back_to_memory_with_one_warning(fresh_cache, good):
    res = workers("fsize", cache_dir=str(fresh_cache), specs=POOL[:3], limit=1024)
    assert res["exit_code"] == 0 and "error" not in res, res
    assert {u: d for u, (d, _) in res["entries"].items()} == {KernelSpec(**d).uri: good[KernelSpec(**d).uri]
                                                              for d in POOL[:3]}
    assert res["again"] == {u: d for u, (d, _) in res["entries"].items()} and res["compiles"] == 3
    memory_only = [w for w in res["warnings"] if "memory only" in w]
    assert len(memory_only) == 1 and "File too large" in memory_only[0], res["warnings"]
    assert on_disk(fresh_cache) == {}
    assert not list(fresh_cache.rglob("*.tmp")), "a failed write must not leave its temp file"


def _fail_with(monkeypatch, errno_name: str, where: str):
    import errno

    code = getattr(errno, errno_name)

    def boom(*a, **k):
        raise OSError(code, os.strerror(code))

    if where == "mkstemp":
        monkeypatch.setattr(cache.tempfile, "mkstemp", boom)
    elif where == "fsync":
        monkeypatch.setattr(cache.os, "fsync", boom)
    elif where == "replace":
        monkeypatch.setattr(cache.os, "replace", boom)
    elif where == "lock":
        monkeypatch.setattr(cache.filelock.FileLock, "acquire", boom)


@pytest.mark.parametrize("errno_name,where", [("ENOSPC", "fsync"), ("EACCES", "mkstemp"), ("EROFS", "replace"),
                                              ("EACCES", "lock"), ("EACCES", "chmod")])
def test_write_errors_fall_back_to_memory_with_one_warning(fresh_cache, monkeypatch, caplog, good, errno_name, where):
    monkeypatch.setattr(cache, "_warned_memory_only", False)
    root = fresh_cache / f"v{cache.SCHEMA}"
    if where == "chmod" and os.geteuid() == 0:
        where = "mkstemp"               # root ignores permissions: deny the way the kernel would
    with monkeypatch.context() as m, caplog.at_level(logging.WARNING, logger="jitkern"):
        if where == "chmod":
            root.mkdir(parents=True)
            root.chmod(0o555)
        else:
            _fail_with(m, errno_name, where)
        got = {KernelSpec(**d).uri: sha(cache.get(KernelSpec(**d)).binary) for d in POOL[:2]}
        if where == "chmod":
            root.chmod(0o755)
    assert got == {u: good[u] for u in got}
    warnings = [r.message for r in caplog.records if "memory only" in r.message]
    assert len(warnings) == 1, [r.message for r in caplog.records]
    assert on_disk(fresh_cache) == {} and not list(fresh_cache.rglob("*.tmp"))


# ---------------------------------------------------------------------------------------------

def test_prune_clear_verify_while_others_read(fresh_cache, seed, good):
    res = workers("prune", cache_dir=str(fresh_cache), specs=POOL[:3], seconds=3, readers=4, deleters=2,
                  seed=seed)
    assert res["exit_codes"] == [0] * 6
    readers = [r for r in res["results"] if r["role"] == "reader"]
    deleters = [r for r in res["results"] if r["role"] == "deleter"]
    assert not [e for r in res["results"] for e in r["errors"]], [e for r in res["results"] for e in r["errors"]]
    for r in readers:                      # every read returned the one correct binary
        assert all(d == [good[u]] for u, d in r["digests"].items()), r["digests"]
    reads, deleted = sum(r["reads"] for r in readers), sum(d["deleted"] for d in deleters)
    rebuilt = sum(r["compiles"] for r in readers)
    print(f"{reads} reads, {sum(d['runs'] for d in deleters)} cache commands deleting {deleted} entries, "
          f"{rebuilt} rebuilds")
    assert reads >= 10 and deleted >= 2 and rebuilt >= 1, (reads, deleted, rebuilt)
    rc, out = cli("cache", "verify")
    assert rc == 0 and " 0 broken" in out, out
