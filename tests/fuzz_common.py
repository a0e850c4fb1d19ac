"""Data and checks shared by the hypothesis tests: test_fuzz_reference.py (CPU) and
test_fuzz_gpu.py (the kernels).  Import after ``pytest.importorskip("hypothesis")``."""
from __future__ import annotations

from typing import Callable, Optional

import pytest
import torch
from hypothesis import HealthCheck, strategies as st

SETTINGS = dict(deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
F16_MAX = 65504.0
F16_BITS = {"nan": 0x7E00, "inf": 0x7C00, "-inf": 0xFC00}
BAD = st.sampled_from(list(F16_BITS))
PROFILES = st.sampled_from(["normal", "large", "tiny", "mixed"])
SEEDS = st.integers(0, 2 ** 31 - 1)


def nmin(bits: int) -> int:
    """Smallest GPTQ N (qzeros packs N into int32 words; 3-bit in whole 32s)."""
    return 32 if bits == 3 else 32 // bits


def activations(profile: str, m: int, k: int, g: torch.Generator) -> torch.Tensor:
    """fp16 [m, k]: normal, large (|x| up to 6e4: outputs overflow fp16), tiny (fp16 subnormals)
    or mixed; always some +0 and -0, never an all-zero row."""
    x = torch.randn(m, k, generator=g)
    if profile == "large":
        x = x * 10 ** (2 + 2.8 * torch.rand(m, k, generator=g))
    elif profile == "tiny":
        x = x * 2.0 ** -20                                          # below 2**-14: subnormal in fp16
    elif profile == "mixed":
        pick = torch.rand(m, k, generator=g)
        x = torch.where(pick < 0.1, x * 2.0 ** -20, torch.where(pick < 0.15, x * 3e4, x))
    x = x.clamp(-F16_MAX, F16_MAX).half()
    zero = torch.rand(m, k, generator=g) < 0.1
    x[zero] = torch.where(torch.rand(m, k, generator=g)[zero] < 0.5, 0.0, -0.0).half()
    x[:, 0] = torch.where(x[:, 0] == 0, torch.ones_like(x[:, 0]), x[:, 0])
    return x


def check(out: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, what: str) -> None:
    """|out - ref| <= bound elementwise; past fp16's range, inf of ref's sign (either within the
    bound of 65504)."""
    out = out.detach().double().cpu()
    assert out.shape == ref.shape, (what, out.shape, ref.shape)
    ok = (torch.isfinite(out) & ((out - ref).abs() <= bound)) | \
         (torch.isinf(out) & (torch.sign(out) == torch.sign(ref)) & (ref.abs() + bound >= F16_MAX))
    if not ok.all():
        i = tuple((~ok).nonzero()[0].tolist())
        pytest.fail(f"{what}: {int((~ok).sum())} of {ok.numel()} outputs beyond the tolerance, e.g. {i}: "
                    f"got {out[i].item():.7g}, float64 reference {ref[i].item():.7g}, bound {bound[i].item():.3g}")


def check_propagation(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, m0: Optional[int], n0: Optional[int],
                      what: str, bound: Callable, bias: Optional[torch.Tensor] = None) -> None:
    """Row m0 and column n0 (None: none) all NaN/Inf; the other outputs finite and within
    ``bound(x_rows, w_cols, cols)`` of the clean float64 result."""
    out = out.detach().double().cpu()
    if m0 is not None:
        assert not torch.isfinite(out[m0]).any(), f"{what}: finite outputs in row {m0}: {out[m0].tolist()}"
    if n0 is not None:
        assert not torch.isfinite(out[:, n0]).any(), f"{what}: finite outputs in column {n0}: {out[:, n0].tolist()}"
    rows = [i for i in range(out.shape[0]) if i != m0]
    cols = [j for j in range(out.shape[1]) if j != n0]
    if rows and cols:
        xr, wc = x[rows], w[cols]
        ref = xr.double() @ wc.t() + (0 if bias is None else bias[cols].double())
        check(out[rows][:, cols], ref, bound(xr, wc, cols), f"{what}: unaffected outputs")


def spoil_x(x: torch.Tensor, bad: str, g: torch.Generator) -> tuple[torch.Tensor, int]:
    """A copy of x with one random element set to ``bad``; (copy, its row)."""
    m0 = int(torch.randint(0, x.shape[0], (1,), generator=g))
    xs = x.clone()
    xs[m0, int(torch.randint(0, x.shape[1], (1,), generator=g))] = float(bad)
    return xs, m0


def spoil_gguf_scale(raw: torch.Tensor, qtype: str, bad: str, g: torch.Generator) -> int:
    """Set d (the first fp16 field: d of d/dm) of one random block of one random row to ``bad``,
    in place; returns the row."""
    from jitkern.formats import gguf as G

    qt = G.gguf_type(qtype)
    d = next(f for f in qt.fields if f.kind.startswith("f16"))
    n0 = int(torch.randint(0, raw.shape[0], (1,), generator=g))
    at = int(torch.randint(0, raw.shape[1] // qt.nbytes, (1,), generator=g)) * qt.nbytes + d.offset
    raw[n0, at:at + 2] = torch.tensor([F16_BITS[bad] & 0xFF, F16_BITS[bad] >> 8], dtype=torch.uint8)
    return n0
