"""Shared fixtures: a fresh kernel cache per test, GPU tests skipped cleanly where there is no GPU."""
from __future__ import annotations

import os
import secrets
import zlib

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


# Fresh random data every run; replay a failure with JITKERN_TEST_SEED=<printed value>.
SEED = int(os.environ.get("JITKERN_TEST_SEED", secrets.randbits(31)))


@pytest.fixture
def seed(request):
    """A per-test seed derived from the run's seed and the test's name, printed for replay."""
    s = SEED + zlib.crc32(request.node.name.encode())
    print(f"JITKERN_TEST_SEED={SEED} (this test: {s})")
    request.node.user_properties.append(("seed", SEED))
    return s


@pytest.fixture
def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def hopper():
    """Skips a module of the wgmma GEMMs' GPU tests off sm_90 (their kernels are sm_90a code)."""
    if not torch.cuda.is_available() or torch.version.hip or torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the wgmma GEMMs run on sm_90 (H100/H200) only")


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


def nvrtc_available() -> bool:
    """cuda-bindings' NVRTC loads and finds its headers."""
    try:
        from jitkern.compiler import nvrtc

        nvrtc.fingerprint()
        nvrtc.include_dir()
        return True
    except Exception:
        return False


requires_nvrtc = pytest.mark.skipif(not nvrtc_available(), reason="NVRTC (cuda-bindings + headers) not installed")
