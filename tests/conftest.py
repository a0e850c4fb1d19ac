"""Shared fixtures: a fresh kernel cache per test, GPU tests skipped cleanly where there is no GPU."""
from __future__ import annotations

import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a GPU (run `pytest -m gpu` on a machine with one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """Point the disk cache at an empty directory and forget in-process kernels."""
    from jitkern import cache

    monkeypatch.setenv("JITKERN_CACHE_DIR", str(tmp_path / "cache"))
    cache.clear_memory()
    yield tmp_path / "cache"
    cache.clear_memory()


@pytest.fixture
def seed():
    """A fresh seed per test, printed so a failure can be replayed."""
    s = int.from_bytes(os.urandom(4), "little")
    print(f"seed={s}")
    return s


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def hiprtc_available() -> bool:
    try:
        from jitkern.compiler import hiprtc

        hiprtc.fingerprint()
        return True
    except Exception:
        return False


requires_hiprtc = pytest.mark.skipif(not hiprtc_available(), reason="hiprtc not installed")
