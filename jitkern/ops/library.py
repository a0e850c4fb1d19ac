"""torch.library registrations: one opaque op per family so torch.compile and CUDA/HIP graphs see a
single call with a shape-only fake implementation; the GEMV/GEMM choice happens inside."""
from __future__ import annotations

from typing import Optional

import torch

from ..formats.checks import loadable_rows
from ..formats.layout import IntLayout
from . import gptq

calls = {"gptq_linear": 0}        # how often each op ran (tests prove which path an engine took)


@torch.library.custom_op("jitkern::gptq_linear", mutates_args=())
def gptq_linear_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                   zeros: Optional[torch.Tensor], perm: Optional[torch.Tensor],
                   unit_group: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                   bits: int, group_size: int, k: int, k_in: int, n: int) -> torch.Tensor:
    calls["gptq_linear"] += 1
    layout = IntLayout(bits, group_size, k_in, k, n, qweight, scales, zeros, perm, unit_group)
    if x.device.type == "cpu":
        from ..formats.intpack import layout_linear

        return layout_linear(x, layout, bias).to(torch.float16)
    return gptq.linear(loadable_rows(x), layout, bias)


@gptq_linear_op.register_fake
def _(x, qweight, scales, zeros, perm, unit_group, bias, bits, group_size, k, k_in, n):
    return x.new_empty(x.shape[0], n, dtype=torch.float16)


def gptq_linear(x2d: torch.Tensor, layout: IntLayout, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return gptq_linear_op(x2d, layout.qweight, layout.scales, layout.zeros, layout.perm, layout.unit_group,
                          bias, layout.bits, layout.group_size, layout.k, layout.k_in, layout.n)
