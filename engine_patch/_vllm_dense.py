"""Unquantized linear layers and the lm_head on jitkern's dense fp16 GEMV (imported only by the plugin).

vLLM builds every unquantized linear with ``UnquantizedLinearMethod`` (whatever the checkpoint's
quantization) and the lm_head with ``UnquantizedEmbeddingMethod``, whose ``apply`` computes the logits.
Both keep creating and loading their weights as usual.  :func:`install` hooks their
``process_weights_after_loading``: a layer jitkern can serve (2-D fp16/bf16 weight, K % 8 == 0) gets its
own method object, a subclass of the stock one, which prepares the weight once (contiguous; bf16 made
fp16 where the GPU has no bf16 math; every GEMV kernel compiled) and whose ``apply`` is the single op
``jitkern::dense_linear``: GEMV for M <= 16, ``F.linear`` above, chosen inside the op.
"""
from __future__ import annotations

import logging

import torch
from vllm.model_executor.layers.linear import UnquantizedLinearMethod
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, UnquantizedEmbeddingMethod

from jitkern.ops.dense import dense_linear_op

from ._vllm_common import log_bf16, log_once, note_forward

_HOOKED = "_jitkern_dense_hook"


def servable(layer) -> bool:
    w = getattr(layer, "weight", None)
    return (isinstance(w, torch.Tensor) and w.dim() == 2 and not w.is_meta and w.numel() > 0
            and w.dtype in (torch.float16, torch.bfloat16) and w.shape[1] % 8 == 0
            and not getattr(layer, "_cpu_skip_gemm_dispatch", False))


class _DenseMethod:
    """``apply`` of a served layer: one ``jitkern::dense_linear`` call."""

    weight_name = "weight"

    def process_weights_after_loading(self, layer) -> None:
        w = layer.weight
        w.data = w.data.contiguous()
        if w.is_cuda:
            from jitkern.arch import resolve
            from jitkern.ops import dense

            dense.prepare(w.device)                         # every GEMV kernel now, never in forward
            if w.dtype == torch.bfloat16 and not dense.native_bf16(resolve(None, w.device)):
                log_bf16()
                self._to_fp16(layer)

    def _to_fp16(self, layer) -> None:
        layer.weight.data = layer.weight.data.half()
        if getattr(layer, "bias", None) is not None:
            layer.bias.data = layer.bias.data.half()

    def apply(self, layer, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        w = getattr(layer, self.weight_name)
        # bf16 x over an fp16 weight (gfx906) is computed in fp16 and returned as bf16 by the op itself
        out = dense_linear_op(x.reshape(-1, w.shape[1]), w, bias)
        note_forward()
        return out.reshape(*x.shape[:-1], w.shape[0])


class JitkernDenseLinearMethod(_DenseMethod, UnquantizedLinearMethod):
    """An unquantized linear layer served by jitkern (still an ``UnquantizedLinearMethod``)."""


class JitkernLMHeadMethod(_DenseMethod, UnquantizedEmbeddingMethod):
    """The lm_head (``apply`` = logits) served by jitkern."""

    def _to_fp16(self, layer) -> None:
        if not tied(layer):                                 # its own table: convert in place
            return super()._to_fp16(layer)
        # tied: the table is also the (bf16) token embedding, so the logits read an fp16 copy
        log_once("tied16", logging.INFO, "jitkern: tied bf16 lm_head on a GPU without bf16 math: keeping an "
                 "fp16 copy of the table for the logits")
        layer.register_buffer("jk_weight16", layer.weight.data.half(), persistent=False)
        self.weight_name = "jk_weight16"


def tied(lm_head) -> bool:
    """Is the lm_head's table the token embedding's?  vLLM's tie_weights hands the lm_head the
    embedding's Parameter, whose weight_loader stays bound to the embedding module."""
    return getattr(getattr(lm_head.weight, "weight_loader", None), "__self__", lm_head) is not lm_head


def _hook(cls, served_cls, wants):
    stock = cls.process_weights_after_loading

    def process_weights_after_loading(self, layer):
        if type(self) is cls and wants(layer) and servable(layer):
            layer.quant_method = served_cls()
            layer.quant_method.process_weights_after_loading(layer)
            return None
        return stock(self, layer)

    process_weights_after_loading.__wrapped__ = stock
    setattr(process_weights_after_loading, _HOOKED, True)
    cls.process_weights_after_loading = process_weights_after_loading


def install() -> None:
    """Idempotent; hooks the two stock methods (only layers they were built for)."""
    if not getattr(UnquantizedLinearMethod.process_weights_after_loading, _HOOKED, False):
        _hook(UnquantizedLinearMethod, JitkernDenseLinearMethod, lambda layer: True)
    if not getattr(UnquantizedEmbeddingMethod.process_weights_after_loading, _HOOKED, False):
        # the logits only: token embeddings (VocabParallelEmbedding) keep F.embedding
        _hook(UnquantizedEmbeddingMethod, JitkernLMHeadMethod, lambda layer: isinstance(layer, ParallelLMHead))


def installed() -> bool:
    return bool(getattr(UnquantizedLinearMethod.process_weights_after_loading, _HOOKED, False))
