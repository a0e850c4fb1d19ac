"""DenseLinear / ops.dense: CPU reference, input validation, and (marked gpu) the GEMV kernels."""
from __future__ import annotations

import pytest
import torch

from jitkern.nn_dense import DenseLinear, dense_linear
from tests.conftest import rel_err

SHAPES = [(1024, 4096), (4096, 4096), (1027, 4104), (8, 8), (13, 72)]     # (N, K); odd N and K % 64 != 0


def _rand(seed, *shape, dtype=torch.float16, device="cpu", scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(device)


def _ref(x, w, b=None):
    y = x.double().cpu() @ w.double().cpu().T
    return y if b is None else y + b.double().cpu()


# ---------------------------------------------------------------- CPU
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cpu_reference(seed, dtype):
    w, b = _rand(seed, 40, 64), _rand(seed + 1, 40)
    x = _rand(seed + 2, 3, 5, 64, dtype=dtype)
    layer = DenseLinear.from_linear(torch.nn.Linear(64, 40, dtype=torch.float16))
    layer.weight.data.copy_(w), layer.bias.data.copy_(b)
    y = layer(x)
    assert y.shape == (3, 5, 40) and y.dtype == dtype
    assert rel_err(y, _ref(x.reshape(-1, 64), w, b).reshape(3, 5, 40)) < 1e-2


def test_fake_impl_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from jitkern.ops.dense import dense_linear_op

    with FakeTensorMode():
        y = dense_linear_op(torch.empty(3, 64, dtype=torch.float16), torch.empty(40, 64, dtype=torch.float16), None)
    assert y.shape == (3, 40) and y.dtype == torch.float16


def _bad_inputs():
    w = torch.zeros(16, 64, dtype=torch.float16)
    ok = torch.zeros(2, 64, dtype=torch.float16)
    return [
        ("x", ok[:, :32], w, None),                                   # wrong in_features
        ("x", ok.int(), w, None),                                     # wrong dtype
        ("x", torch.zeros(64, 2, dtype=torch.float16).T, w, None),    # not contiguous
        ("x", [1.0] * 64, w, None),                                   # not a tensor
        ("bias", ok, w, torch.zeros(15, dtype=torch.float16)),        # wrong length
        ("bias", ok, w, torch.zeros(16, dtype=torch.bfloat16)),       # dtype differs from weight
        ("weight", ok, torch.zeros(16, 64, dtype=torch.int8), None),  # not a float weight
        ("weight", ok, torch.zeros(64, dtype=torch.float16), None),   # not 2-D
    ]


@pytest.mark.parametrize("name,x,w,b", _bad_inputs())
def test_bad_inputs_name_the_tensor(name, x, w, b):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        dense_linear(x, w, b)


def test_module_rejects_bad_weights():
    with pytest.raises(ValueError, match="^weight:"):
        DenseLinear(torch.zeros(16, 60, dtype=torch.float16))               # in_features % 8
    with pytest.raises(ValueError, match="^linear:"):
        DenseLinear.from_linear(torch.nn.Conv1d(4, 4, 1))


# ---------------------------------------------------------------- GPU
def _poisoned_empty(monkeypatch):
    """Make the op's output allocations NaN so an unwritten element cannot pass."""
    real = torch.empty

    def poisoned(*a, **kw):
        t = real(*a, **kw)
        if t.is_cuda and t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", poisoned)


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", range(1, 17))
def test_gemv_matches_float64(monkeypatch, seed, m, n, k):
    from jitkern.ops import dense

    w = _rand(seed, n, k, device="cuda", scale=0.05)
    b = _rand(seed + 1, n, device="cuda")
    x = _rand(seed + 2, m, k, device="cuda")
    dense.prepare(x.device)
    _poisoned_empty(monkeypatch)
    before = dense.calls["dense_linear"]
    y = dense_linear(x, w, b)
    assert dense.calls["dense_linear"] == before + 1
    assert y.shape == (m, n) and y.dtype == torch.float16 and torch.isfinite(y).all()
    assert rel_err(y, _ref(x, w, b)) < 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 5, 9, 16])
def test_fp16_overflow_of_partial_sums(m):
    """Partial sums reach ~1e6 (inf in fp16) while the true result is small: fp32 accumulation."""
    from jitkern.ops import dense

    n, k = 33, 8192
    sign = torch.ones(k)
    sign[k // 2:] = -1                      # first half pushes up, second half back down
    w = (torch.full((n, k), 30.0) * sign).half().cuda()
    w[:, 0] += torch.arange(n, dtype=torch.float16, device="cuda")
    x = torch.full((m, k), 8.0, dtype=torch.float16, device="cuda")
    y = dense.gemv(x, w)
    ref = _ref(x, w)
    assert ref.abs().max() < 65504 and torch.isfinite(y).all()
    assert rel_err(y, ref) < 1e-3


@pytest.mark.gpu
def test_bf16_and_dispatch(seed):
    from jitkern.ops import dense

    w = _rand(seed, 96, 256, dtype=torch.bfloat16, scale=0.05)
    layer = DenseLinear(w).cuda()
    for m in (1, 16, 17, 40):                # GEMV, GEMV, F.linear, F.linear
        x = _rand(seed + m, m, 256, dtype=torch.bfloat16, device="cuda")
        y = layer(x)
        assert y.dtype == torch.bfloat16 and rel_err(y, _ref(x, w)) < 1e-2
    assert dense.linear(x[:0], layer.weight).shape == (0, 96)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 7, 16])
def test_graph_capture_and_replay(seed, m):
    n, k = 1031, 2048
    layer = DenseLinear(_rand(seed, n, k, scale=0.05), _rand(seed + 1, n)).cuda()
    x = _rand(seed + 2, m, k, device="cuda")
    layer(x)                                  # kernels loaded before capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        y = layer(x)
    torch.cuda.current_stream().wait_stream(stream)
    for i in range(2):                        # new inputs through the captured buffers
        x.copy_(_rand(seed + 10 + i, m, k, device="cuda"))
        y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(y, _ref(x, layer.weight, layer.bias)) < 1e-3


@pytest.mark.gpu
def test_gpu_rejects_before_launch():
    w = torch.zeros(16, 64, dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match="^x:"):
        dense_linear(torch.zeros(2, 64, dtype=torch.float16), w)             # CPU x, GPU weight
    with pytest.raises(ValueError, match="^x:"):
        dense_linear(torch.zeros(2, 64, dtype=torch.float32, device="cuda"), w)


@pytest.mark.gpu
def test_ops_gemv_strided_and_misaligned_x(seed):
    from jitkern.ops import dense

    n, k, m = 77, 520, 6
    w = _rand(seed, n, k, device="cuda", scale=0.05)
    flat = _rand(seed + 1, m * k + 4, device="cuda")
    x = flat[4:].view(m, k)                  # 8-byte offset: not 16-byte aligned, gets copied
    assert rel_err(dense.gemv(x, w), _ref(x, w)) < 1e-3
    wide = _rand(seed + 2, m, k + 64, device="cuda")
    assert rel_err(dense.gemv(wide[:, :k], w), _ref(wide[:, :k], w)) < 1e-3     # ldx = k + 64
