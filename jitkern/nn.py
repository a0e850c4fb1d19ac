"""``QuantLinear``: a torch module over GPTQ / AWQ weights converted once to jitkern's layout."""
from __future__ import annotations

from typing import Optional

import torch

from .formats.checks import expect, expect_tensor
from .formats.layout import IntLayout

ACT_DTYPES = (torch.float16, torch.bfloat16)


def check_activation(x: torch.Tensor, k_in: int, device: torch.device, name: str = "x") -> None:
    """Validate an activation before any launch; errors name the tensor and the expectation."""
    expect_tensor(name, x, dtype=ACT_DTYPES + (torch.float32,) if device.type == "cpu" else ACT_DTYPES)
    expect(x.dim() >= 1 and x.shape[-1] == k_in, name, f"last dimension {k_in} (in_features)", tuple(x.shape))
    expect(x.device.type == device.type and (device.index is None or x.device.index == device.index),
           name, f"a tensor on {device} (where the weights are)", x.device)
    expect(x.is_contiguous(), name, "a contiguous tensor", f"strides {x.stride()}")


def quant_linear(x: torch.Tensor, layout: IntLayout, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Functional form: y = x @ W.T (+ bias) for x [..., in_features] in fp16 or bf16.

    bf16 activations are computed as fp16 (gfx906 has no bf16 arithmetic) and returned as bf16.
    CPU tensors run the float32 reference.
    """
    from .ops.library import gptq_linear

    device = layout.qweight.device
    check_activation(x, layout.k_in, device)
    if bias is not None:
        expect_tensor("bias", bias, dtype=torch.float16, shape=(layout.n,), device=device)
    x2d = x.reshape(-1, layout.k_in)      # the op copies rows its kernels cannot load (checks.loadable_rows)
    y = gptq_linear(x2d if x.dtype == torch.float16 or device.type == "cpu" else x2d.half(), layout, bias)
    return y.to(x.dtype).reshape(*x.shape[:-1], layout.n)


class QuantLinear(torch.nn.Module):
    """A linear layer over 2/3/4/8-bit GPTQ or 4-bit AWQ weights.

    Build it with ``QuantLinear.from_gptq(...)`` or ``QuantLinear.from_awq(...)`` from checkpoint
    tensors; the weights are converted once to jitkern's layout.  Moving the module to a GPU compiles
    (or loads from the cache) every kernel it can hit, so nothing compiles during a forward.
    """

    def __init__(self, layout: IntLayout, bias: Optional[torch.Tensor] = None):
        super().__init__()
        self.layout = layout
        self.in_features, self.out_features = layout.k_in, layout.n
        self.bias = None if bias is None else bias.to(torch.float16)
        if layout.qweight.is_cuda:
            self.prepare()

    @classmethod
    def from_gptq(cls, qweight, qzeros, scales, g_idx=None, bias=None, *, bits: int, group_size: int,
                  sym: bool = True, checkpoint_format: str = "gptq", desc_act: Optional[bool] = None):
        from .formats.gptq import gptq_to_layout

        return cls(gptq_to_layout(qweight, qzeros, scales, g_idx, bits, group_size, sym,
                                  checkpoint_format=checkpoint_format, desc_act=desc_act), bias)

    @classmethod
    def from_awq(cls, qweight, qzeros, scales, bias=None, *, group_size: int):
        from .formats.awq import awq_to_layout

        return cls(awq_to_layout(qweight, qzeros, scales, group_size), bias)

    def prepare(self) -> None:
        from .ops import gptq

        gptq.prepare(self.layout)

    def _apply(self, fn, recurse=True):
        # Keep the layout (plain tensors in a dataclass) on the module's device.
        self.layout = IntLayout(self.layout.bits, self.layout.group_size, self.layout.k_in, self.layout.k,
                                self.layout.n, *[None if t is None else fn(t) for t in (
                                    self.layout.qweight, self.layout.scales, self.layout.zeros,
                                    self.layout.perm, self.layout.unit_group)])
        if self.bias is not None:
            self.bias = fn(self.bias)
        if self.layout.qweight.is_cuda:
            self.prepare()
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quant_linear(x, self.layout, self.bias)

    def extra_repr(self) -> str:
        lay = self.layout
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={lay.bits}, "
                f"group_size={lay.group_size}, sym={lay.symmetric}, act_order={lay.act_order}")
