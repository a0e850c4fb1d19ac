"""HF transformers adapter: swap loaded GPTQ / AWQ linear modules for :class:`jitkern.QuantLinear`.

Modules are recognised by duck typing (no import of gptqmodel, auto-gptq or AutoAWQ): they carry
``qweight``, ``qzeros``, ``scales`` and a bit width (``bits`` or AWQ's ``w_bit``) and a group size, and
their buffers are still in checkpoint layout — load with a plain-layout backend
(``GPTQConfig(backend="torch")``, ``AwqConfig(backend="gemm")``); Marlin / Exllama repacks do not
match the shapes below and are left alone (logged).

* GPTQ: ``qweight [K*bits/32, N]`` (packed along K) plus ``g_idx``.
* AWQ:  ``qweight [K, N/8]`` (packed along N, AutoAWQ GEMM interleave), 4-bit.
"""
from __future__ import annotations

import logging

import torch

from jitkern import QuantLinear

log = logging.getLogger("jitkern.transformers")


def _bits(m):
    return getattr(m, "bits", None) or getattr(m, "w_bit", None)


def _shape_kn(m):
    k = getattr(m, "in_features", None) or getattr(m, "infeatures", None)
    n = getattr(m, "out_features", None) or getattr(m, "outfeatures", None)
    return k, n


def is_quant_linear(m: torch.nn.Module) -> bool:
    return (not isinstance(m, QuantLinear) and all(isinstance(getattr(m, a, None), torch.Tensor)
                                                    for a in ("qweight", "qzeros", "scales"))
            and _bits(m) is not None and getattr(m, "group_size", None) is not None)


def _format(m, checkpoint_format: str) -> str:
    """GPTQ zero-point convention of the in-memory buffers.  gptqmodel rewrites v1 qzeros to v2 after
    loading for kernels that declare ``REQUIRES_FORMAT_V2`` (transformers' post_init)."""
    if checkpoint_format != "auto":
        return checkpoint_format
    return "gptq_v2" if getattr(type(m), "REQUIRES_FORMAT_V2", False) else "gptq"


def convert(m: torch.nn.Module, checkpoint_format: str = "auto") -> QuantLinear | None:
    """A QuantLinear with the same outputs as ``m``, or None when ``m``'s buffers are not in a layout
    jitkern reads."""
    bits, gs = int(_bits(m)), int(m.group_size)
    qw, qz, sc = m.qweight, m.qzeros, m.scales.to(torch.float16)
    k, n = _shape_kn(m)
    bias = getattr(m, "bias", None)
    bias = bias.detach().to(torch.float16) if isinstance(bias, torch.Tensor) else None
    if k is None or n is None:        # infer from scales [G, N]: K is unknown only for the AWQ shape
        n = sc.shape[1]
        k = qw.shape[0] * 32 // bits if qw.shape[1] == n else qw.shape[0]
    if gs == k:                       # some modules store the resolved group size for "-1"
        gs = -1
    if tuple(qw.shape) == (k * bits // 32, n):
        g_idx = getattr(m, "g_idx", None)
        return QuantLinear.from_gptq(qw, qz, sc, g_idx if isinstance(g_idx, torch.Tensor) else None, bias,
                                     bits=bits, group_size=gs, sym=bool(getattr(m, "sym", True)),
                                     checkpoint_format=_format(m, checkpoint_format))
    if bits == 4 and tuple(qw.shape) == (k, n // 8):
        return QuantLinear.from_awq(qw, qz, sc, bias, group_size=gs)
    log.warning("jitkern: %s left alone: qweight %s is not GPTQ [K*bits/32, N] nor AWQ [K, N/8] for "
                "K=%d N=%d (repacked by its kernel? load with a plain-layout backend)",
                type(m).__name__, tuple(qw.shape), k, n)
    return None


def patch(model: torch.nn.Module, checkpoint_format: str = "auto") -> int:
    """Replace every recognised GPTQ/AWQ linear in ``model`` with a QuantLinear; return how many.

    ``checkpoint_format``: ``"gptq"`` (v1 qzeros) / ``"gptq_v2"`` override the per-module guess.
    Accelerate hooks live on parent modules, so device placement survives the swap.
    """
    targets = [(name, m) for name, m in model.named_modules() if is_quant_linear(m)]
    swapped = 0
    for name, m in targets:
        new = convert(m, checkpoint_format)
        if new is None:
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
        swapped += 1
    log.info("jitkern: swapped %d of %d quantized linear modules", swapped, len(targets))
    return swapped
