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
@pytest.mark.parametrize("fmt", ["q4_0", "q5_1", "q8_0", "q3_k", "q4_k", "q6_k", "iq4_xs"])
def test_wgmma_gemm_compiles_without_spills_or_serialized_mmas(fmt):
    """ptxas keeps the MMAs of consecutive sub-steps overlapping (it would say "Performance Loss" if it
    serialized them) and spills nothing; the producer issues one bulk and one tensor copy a stage, and
    one tensor copy per header plane a chunk (however the loop is unrolled: the bulk copies match the
    quants' tensor copies, and the rest come a whole chunk of planes at a time)."""
    from jitkern.compiler import nvrtc

    spec = KernelSpec("gguf_gemm", fmt, m=GGUF_GEMM_TOKENS, arch="sm_90")
    log: list = []
    nvrtc.compile(render(spec), "sm_90a", nvrtc.default_options("sm_90a") + ["--ptxas-options=-v"], log=log)
    assert "Used" in log[0] and "Performance Loss" not in log[0] and " 0 bytes spill stores" in log[0], log[0]
    ptx = nvrtc.ptx(render(spec), "compute_90a")
    planes = len(get_family("gguf_gemm").consts(spec)["runs"])
    bulk = ptx.count("cp.async.bulk.shared::cluster.global")            # however ptxas unrolls the loop:
    tensor = ptx.count("cp.async.bulk.tensor.2d.shared::cluster.global")   # a quants copy per x copy,
    assert bulk > 0 and tensor > bulk and (tensor - bulk) % planes == 0, (bulk, tensor, planes)   # + planes


@pytest.mark.parametrize("qtype,k,takes", [
    ("Q4_0", 2560, True), ("Q4_0", 2592, False),     # 32-element blocks: whole 256-element stages
    ("Q6_K", 2560, True), ("Q2_K", 11008, True),     # planes at 16-byte multiples for any K
    ("Q4_K", 2560, False), ("Q4_K", 3072, True),     # dm then scales at 4 * nb: nb a multiple of 4
    ("Q3_K", 11008, False), ("IQ4_XS", 3072, False), ("IQ4_XS", 4096, True),
])
def test_gemm_takes_k_where_every_header_plane_starts_aligned(qtype, k, takes):
    """A TMA box's inner coordinate must be 16-byte aligned (the H100 raises an illegal instruction
    otherwise): the GEMM takes K only where every header plane of a row starts so; the rest
    dequantize + cuBLAS."""
    assert gguf_gemm.takes_k(qtype, k) == takes

