"""The GGUF wgmma GEMM on the CPU: its k order, and what NVRTC makes of the template (no GPU needed)."""
from __future__ import annotations

import pytest
import torch

from conftest import requires_nvrtc
from jitkern.families import GGUF_FMTS, GGUF_GEMM_TOKENS, get_family
from jitkern.ops import gguf_gemm
from jitkern.render import render
from jitkern.spec import KernelSpec


@pytest.mark.parametrize("fmt", GGUF_FMTS)
def test_stage_order_is_a_permutation_of_whole_groups(fmt):
    """Every element of a 256-element stage is fed exactly once, and each lane's k16 slots take four
    consecutive elements of one group (a decoded word) in order."""
    order = gguf_gemm.stage_order(fmt.upper())
    assert torch.equal(order.sort().values, torch.arange(256, dtype=torch.int32))
    by_slot = order.view(4, 4, 2, 4, 2)            # [sub-step q][k16 kk][pair][lane t][e]
    words = by_slot.permute(0, 3, 1, 2, 4).reshape(16, 16)      # [group 4q + t][4kk + 2pair + e]
    assert torch.equal(words - words[:, :1], torch.arange(16, dtype=torch.int32).expand(16, 16))
    assert torch.equal(words[:, 0] % 16, torch.zeros(16, dtype=torch.int32))


@requires_nvrtc
@pytest.mark.parametrize("tokens", GGUF_GEMM_TOKENS)
@pytest.mark.parametrize("fmt", ["q4_0", "q5_1", "q8_0", "q3_k", "q4_k", "q6_k", "iq4_xs"])
def test_wgmma_gemm_compiles_without_spills_or_serialized_mmas(fmt, tokens):
    """ptxas keeps the MMAs of consecutive sub-steps overlapping (it would say "Performance Loss" if it
    serialized them) and spills nothing; the producer issues one tensor copy of quants a 256-element
    window, one bulk copy an activation stage (one or two a window), and one tensor copy per header
    plane a chunk (however the loop is unrolled: bulk copies come per window's quants copy, and the
    rest a whole chunk of planes at a time)."""
    from jitkern.compiler import nvrtc

    spec = KernelSpec("gguf_gemm", fmt, m=tokens, arch="sm_90")
    log: list = []
    nvrtc.compile(render(spec), "sm_90a", nvrtc.default_options("sm_90a") + ["--ptxas-options=-v"], log=log)
    assert "Used" in log[0] and "Performance Loss" not in log[0] and " 0 bytes spill stores" in log[0], log[0]
    ptx = nvrtc.ptx(render(spec), "compute_90a")
    consts = get_family("gguf_gemm").consts(spec)
    planes, per_window = len(consts["runs"]), 256 // consts["xk"]
    bulk = ptx.count("cp.async.bulk.shared::cluster.global")
    quants = ptx.count("cp.async.bulk.tensor.4d.shared::cluster.global")
    headers = ptx.count("cp.async.bulk.tensor.2d.shared::cluster.global")
    assert quants > 0 and bulk == per_window * quants and headers > 0 and headers % planes == 0, \
        (bulk, quants, headers, planes)


@pytest.mark.parametrize("qtype,k,takes", [
    ("Q4_0", 2560, True), ("Q4_0", 2592, False),     # 32-element blocks: whole 256-element stages
    ("Q6_K", 2560, True), ("Q2_K", 11008, True),     # planes at 16-byte multiples for any K
    ("Q4_K", 2560, True), ("Q5_K", 2816, True),      # one 16-byte header plane
    ("Q3_K", 2560, False), ("Q3_K", 3072, True),     # scales then d at 12 * nb: nb a multiple of 4
    ("Q3_K", 11008, False), ("IQ4_XS", 3072, False), ("IQ4_XS", 4096, True),
])
def test_gemm_takes_k_where_every_header_plane_starts_aligned(qtype, k, takes):
    """A TMA box's inner coordinate must be 16-byte aligned (the H100 raises an illegal instruction
    otherwise): the GEMM takes K only where every header plane of a row starts so; the rest
    dequantize + cuBLAS."""
    assert gguf_gemm.takes_k(qtype, k) == takes



@pytest.mark.parametrize("qtype,n,k,m,plan", [
    ("Q4_0", 6144, 4096, 512, 256),       # Llama-3-8B qkv: 96 blocks of 256 tokens, one wave
    ("Q4_0", 4096, 4096, 512, 128),       # 8B o: 64 blocks of 256 tokens; 128 of 128 fill the wave
    ("Q4_K", 10240, 8192, 512, 128),      # 70B qkv: 160 blocks of 256 tokens leave the second wave 21% full
    ("Q4_0", 57344, 8192, 200, 256),      # a short prompt on a wide layer: a wave of 256-token tiles
    ("Q4_0", 57344, 8192, 127, None),     # less than a tile
    ("Q4_0", 1024, 4096, 512, None),      # 16 blocks of 256 tokens on 132 SMs
    ("Q4_0", 57343, 8192, 512, None),     # odd N: the quants' TMA box pairs rows
    ("Q3_K", 57344, 2560, 512, None),     # a header plane starting unaligned (takes_k)
])
def test_plan_on_an_h100(monkeypatch, qtype, n, k, m, plan):
    """The op's token tile on 132 SMs (jitkern/ops/waves.py, as the GPTQ GEMM's) or None (dequantize +
    cuBLAS), and JITKERN_PREFILL=blas turning it off."""
    from types import SimpleNamespace

    monkeypatch.setattr(gguf_gemm.splitk, "multiprocessors", lambda device: 132)
    kernels = {("gemm", t): SimpleNamespace(consts={"rows": 128}) for t in GGUF_GEMM_TOKENS}
    layout = SimpleNamespace(qtype=qtype, n=n, k=k)
    assert gguf_gemm.plan(layout, kernels, m, None) == plan
    monkeypatch.setenv("JITKERN_PREFILL", "blas")
    assert gguf_gemm.plan(layout, kernels, m, None) is None
