"""``GGUFLinear``: a torch module over GGUF block-quantized weights (Q4_0 ... Q6_K, IQ4_NL, IQ4_XS),
repacked once into the SoA GPU layout (``jitkern.formats.gguf``)."""
from __future__ import annotations

from typing import Dict, Optional

import torch

from .formats.checks import expect, expect_tensor
from .formats.gguf import GGUFLayout, TYPES, load_gguf_linear_tensors, to_layout
from .nn import check_activation


class GGUFLinear(torch.nn.Module):
    """y = x @ W.T (+ bias) for x [..., in_features] in fp16 or bf16 (bf16 is computed as fp16).

    Moving the module to a GPU compiles (or loads from the cache) every kernel it can hit, so nothing
    compiles during a forward.  CPU tensors run the float32 reference.
    """

    def __init__(self, layout: GGUFLayout, bias: Optional[torch.Tensor] = None, name: str = "weight"):
        super().__init__()
        self.layout, self.name = layout, name
        self.in_features, self.out_features = layout.k, layout.n
        if bias is not None:
            expect_tensor(f"{name}.bias", bias, shape=(layout.n,))
            expect(bias.is_floating_point(), f"{name}.bias", "a floating-point tensor", bias.dtype)
            bias = bias.to(device=layout.qs.device, dtype=torch.float16)
        self.bias = bias
        if layout.qs.is_cuda:
            self.prepare()

    @classmethod
    def from_raw(cls, raw, qtype, bias: Optional[torch.Tensor] = None, *, shape=None, name: str = "weight"):
        """Stored GGUF bytes uint8 [N, K/B*S] (torch or numpy; ``shape`` = logical (N, K) if given)."""
        return cls(to_layout(raw, qtype, shape, name=name), bias, name)

    @classmethod
    def from_gguf_file(cls, path, names=None) -> Dict[str, "GGUFLinear"]:
        """Every 2-D tensor of a supported block type in a .gguf file (float tensors are skipped)."""
        out = {}
        for name, (qtype, shape, data) in load_gguf_linear_tensors(path, names).items():
            if qtype in TYPES:
                out[name] = cls.from_raw(data, qtype, shape=shape, name=name)
        return out

    def prepare(self) -> None:
        from .ops import gguf

        gguf.prepare(self.layout)

    def _apply(self, fn, recurse=True):
        # Keep the layout (plain tensors in a dataclass) on the module's device.
        lay = self.layout
        self.layout = GGUFLayout(lay.qtype, lay.n, lay.k, fn(lay.qs), fn(lay.hdr))
        if self.layout.qs.dtype != torch.uint8:      # .half() / .to(dtype) must not touch the bytes
            self.layout = lay
        if self.bias is not None:
            self.bias = fn(self.bias).to(torch.float16)
        if self.layout.qs.is_cuda:
            self.prepare()
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .ops.gguf import gguf_linear

        device = self.layout.qs.device
        check_activation(x, self.in_features, device, name=f"{self.name}: x")
        x2d = x.reshape(-1, self.in_features)     # the op copies rows its kernels cannot load
        if device.type != "cpu" and x.dtype != torch.float16:
            x2d = x2d.half()
        y = gguf_linear(x2d, self.layout, self.bias)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.layout.qtype}"
