"""``DenseLinear``: an unquantized fp16/bf16 linear layer (lm_head, dense layers) on jitkern's GEMV."""
from __future__ import annotations

from typing import Optional

import torch

from .formats.checks import expect, expect_tensor
from .nn import check_activation

WEIGHT_DTYPES = (torch.float16, torch.bfloat16)


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Functional form: y = x @ weight.T (+ bias) for x [..., in_features]; output in x's dtype.

    Validated before any launch (ValueError naming the tensor).  M = prod(x.shape[:-1]) <= 16 runs the
    GEMV kernels, larger M ``F.linear``; CPU tensors run float32.
    """
    from .ops.dense import dense_linear_op

    device = weight.device
    expect_tensor("weight", weight, dtype=WEIGHT_DTYPES + ((torch.float32,) if device.type == "cpu" else ()), ndim=2)
    n, k = weight.shape
    check_activation(x, k, device)
    if bias is not None:
        expect_tensor("bias", bias, dtype=weight.dtype, shape=(n,), device=device)
    if device.type != "cpu":
        expect(k % 8 == 0, "weight", "in_features a multiple of 8 (128-bit loads)", k)
    y = dense_linear_op(x.reshape(-1, k), weight, bias)
    return y.reshape(*x.shape[:-1], n)


class DenseLinear(torch.nn.Module):
    """A linear layer over fp16/bf16 weights in PyTorch's [out, in] layout.

    Moving it to a GPU compiles (or loads from the cache) the M = 1..16 GEMV kernels, so nothing
    compiles during a forward.  On GPUs without bf16 arithmetic (gfx906) a bf16 weight is converted to
    fp16 once at that point; bf16 activations are then computed in fp16 and returned as bf16.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
        super().__init__()
        expect_tensor("weight", weight, dtype=WEIGHT_DTYPES + (torch.float32,), ndim=2)
        if weight.dtype == torch.float32:
            weight = weight.half()
        self.out_features, self.in_features = weight.shape
        expect(self.in_features % 8 == 0, "weight", "in_features a multiple of 8 (128-bit loads)", self.in_features)
        if bias is not None:
            expect_tensor("bias", bias, shape=(self.out_features,), device=weight)
        self.weight = torch.nn.Parameter(weight.detach().contiguous(), requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().to(weight.dtype), requires_grad=False)
        if self.weight.is_cuda:
            self.prepare()

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> "DenseLinear":
        expect(isinstance(linear, torch.nn.Linear), "linear", "a torch.nn.Linear", type(linear).__name__)
        return cls(linear.weight, linear.bias)

    def prepare(self) -> None:
        from .arch import resolve
        from .ops import dense

        dense.prepare(self.weight.device)
        if self.weight.dtype == torch.bfloat16 and not dense.native_bf16(resolve(None, self.weight.device)):
            self.weight.data = self.weight.data.half()
            if self.bias is not None:
                self.bias.data = self.bias.data.half()

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.weight.is_cuda:
            self.prepare()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dense_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
