"""The fused Triton prefill GEMM (jitkern/ops/int_gemm_triton.py) vs float64, on the CPU through
Triton's interpreter (TRITON_INTERPRET=1, read when the kernel is decorated: hence a subprocess).
The same kernel runs compiled on the GPU in tests/test_gptq_gpu.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

CASES = [  # bits, sym, act_order, group, m, k, n
    (4, True, False, 128, 40, 256, 96),      # one group a K step, a padded last tile
    (8, False, False, 64, 17, 256, 64),      # asymmetric, group < BK: a group per row
    (4, False, True, 64, 9, 256, 200),       # act-order: groups through unit_group
    (8, True, False, -1, 33, 192, 64),       # per-channel; K not a multiple of BK = 128
    (4, True, False, 32, 64, 256, 64),
]

SCRIPT = r"""
import json, sys, torch
from jitkern.formats.gptq import dequantize_gptq, gptq_to_layout, quantize_gptq
from jitkern.ops import int_gemm_triton
seed = int(sys.argv[1])
errs = []
for i, (bits, sym, act_order, group, m, k, n) in enumerate(json.loads(sys.argv[2])):
    g = torch.Generator().manual_seed(seed + i)
    ck = quantize_gptq(torch.randn(n, k, generator=g), bits, group, sym=sym, act_order=act_order,
                       checkpoint_format="gptq", generator=g)
    ref_w = dequantize_gptq(ck["qweight"], ck["qzeros"], ck["scales"], ck["g_idx"], bits, group, "gptq")
    layout = gptq_to_layout(ck["qweight"], ck["qzeros"], ck["scales"], ck["g_idx"], bits, group, sym,
                            checkpoint_format="gptq")
    x, bias = torch.randn(m, k, generator=g).half(), torch.randn(n, generator=g).half()
    out = int_gemm_triton.gemm(x.index_select(1, layout.perm) if layout.act_order else x, layout, bias)
    ref = x.double() @ ref_w.T + bias.double()
    errs.append(((out.double() - ref).norm() / ref.norm()).item())
print(json.dumps(errs))
"""


def test_fused_prefill_matches_float64_in_interpreter(seed):
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(seed), json.dumps(CASES)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    errs = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(errs) == len(CASES)
    for case, err in zip(CASES, errs):
        assert err < 1e-3, f"{case}: rel err {err} (seed {seed})"
