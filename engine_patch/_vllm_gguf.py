"""GGUF layers on jitkern's GGUF kernels (imported only by the plugin, and only where the out-of-tree
``vllm-gguf-plugin`` is installed: vLLM removed in-tree GGUF in 0.24).

That plugin's ``GGUFConfig.get_quant_method`` builds ``GGUFLinearMethod`` for linear layers and
``GGUFEmbeddingMethod`` for vocabulary tables (token embedding, lm_head).  :func:`install` wraps it (on
the class, so it works whichever plugin vLLM registers first) to return subclasses of those methods:
they create and load weights exactly as the stock ones (vLLM's loaders, TP shards, merged qkv/gate_up
shards), then after loading repack each block type once into jitkern's ``GGUFLayout`` and compile every
kernel it can hit.  ``apply`` is one ``jitkern::gguf_linear`` call per run of same-type shards (one call
unless a merged layer mixes types, e.g. Q4_K q/k with a Q6_K v); the token embedding dequantizes the
looked-up rows in one ``jitkern_vllm::gguf_embedding`` op.  Block types jitkern lacks keep vLLM's path.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from vllm_gguf_plugin.quantization.config import GGUFConfig
from vllm_gguf_plugin.quantization.linear import GGUFLinearMethod
from vllm_gguf_plugin.quantization.vocal_embeds import GGUFEmbeddingMethod

from jitkern.formats.gguf import TYPES, GGUFLayout, dequantize_layout, to_layout
from jitkern.ops.gguf import gguf_linear_op

from ._vllm_common import allow_v2_loaders, fp16_input, log_once, note_forward

_HOOKED = "_jitkern_gguf_hook"
calls = {"gguf_embedding": 0}          # how often the embedding op ran (tests)
_BY_ID = {t.id: name for name, t in TYPES.items()}


def runs(layer) -> Optional[list[tuple[str, int, int, int]]]:
    """The loaded ``qweight`` as (type, first row, end row, bytes a row) runs of same-type shards in
    output order; None if some shard has a type jitkern does not implement."""
    q, qt = layer.qweight, layer.qweight_type
    offsets = getattr(q, "shard_offset_map", None)
    if not offsets:                         # one tensor (a merged layer with one shard here included)
        parts = [(qt.weight_type, 0, q.shape[0], q.shape[1])]
    else:                                   # merged shards, rows padded to the widest shard's bytes
        parts = sorted(((qt.shard_weight_type.get(s, qt.weight_type), *offsets[s]) for s in offsets),
                       key=lambda p: p[1])
    out: list[tuple[str, int, int, int]] = []
    for type_id, start, end, width in parts:
        name = _BY_ID.get(int(type_id))
        if name is None:
            return None
        if out and out[-1][0] == name and out[-1][2] == start:
            out[-1] = (name, out[-1][1], end, width)
        else:
            out.append((name, start, end, width))
    return out


class _GGUFMethod:
    """Repack after vLLM's own load/merge; forward through jitkern's op."""

    layouts: tuple = ()

    def process_weights_after_loading(self, layer) -> None:
        super().process_weights_after_loading(layer)            # materialize, validate, merge shards
        plan = runs(layer)
        if plan is None:
            from gguf import GGMLQuantizationType as T

            types = {T(int(t)).name for t in (layer.qweight_type.shard_weight_type or
                                              {0: layer.qweight_type.weight_type}).values()}
            log_once(f"gguf-{sorted(types)}", logging.INFO, "jitkern: GGUF %s not implemented by jitkern; "
                     "vLLM's GGUF kernels serve those layers", "/".join(sorted(types)))
            self.layouts = ()
            return
        raw = layer.qweight.data
        layouts = [to_layout(raw[a:b, :w].contiguous(), name) for name, a, b, w in plan]
        for i, lay in enumerate(layouts):
            layer.register_parameter(f"jk_qs{i}", torch.nn.Parameter(lay.qs, requires_grad=False))
            layer.register_parameter(f"jk_hdr{i}", torch.nn.Parameter(lay.hdr, requires_grad=False))
        self.layouts = tuple((lay.qtype, lay.n, lay.k) for lay in layouts)
        layer.qweight.data = raw.new_empty(0)                   # the layout holds every byte
        if raw.is_cuda:
            from jitkern.ops import gguf

            for lay in layouts:                                 # every kernel now, never in forward
                gguf.prepare(lay)

    def apply(self, layer, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.layouts:
            return super().apply(layer, x, bias)
        k = self.layouts[0][2]
        x2d = fp16_input(x, k)
        outs = [gguf_linear_op(x2d, getattr(layer, f"jk_qs{i}"), getattr(layer, f"jk_hdr{i}"), None, qtype, n, k)
                for i, (qtype, n, _) in enumerate(self.layouts)]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        if bias is not None:
            out = out + bias
        note_forward()
        return out.to(x.dtype).reshape(*x.shape[:-1], out.shape[1])


class JitkernGGUFLinearMethod(_GGUFMethod, GGUFLinearMethod):
    """A GGUF linear layer served by jitkern (still a ``GGUFLinearMethod``)."""


class JitkernGGUFEmbeddingMethod(_GGUFMethod, GGUFEmbeddingMethod):
    """A GGUF vocabulary table: lm_head logits (``apply``) and token lookups (``embedding``) by jitkern."""

    def embedding(self, layer, ids: torch.Tensor) -> torch.Tensor:
        if not self.layouts:
            return super().embedding(layer, ids)
        qtype, _, k = self.layouts[0]
        return gguf_embedding(ids, layer.jk_qs0, layer.jk_hdr0, qtype, k, self.params_dtype)


@torch.library.custom_op("jitkern_vllm::gguf_embedding", mutates_args=())
def gguf_embedding(ids: torch.Tensor, qs: torch.Tensor, hdr: torch.Tensor, qtype: str, k: int,
                   dtype: torch.dtype) -> torch.Tensor:
    """Rows ``ids`` of a GGUF table, dequantized: [*ids.shape, K] in ``dtype``."""
    calls["gguf_embedding"] += 1
    flat = ids.reshape(-1)
    rows = GGUFLayout(qtype, flat.numel(), k, qs.index_select(0, flat), hdr.index_select(0, flat))
    if qs.device.type == "cpu":
        w = dequantize_layout(rows)                             # bit-exact float32
    else:
        from jitkern.ops import gguf

        w = gguf.dequantize(rows)                               # fp16 (exact for every block type)
    return w.to(dtype).reshape(*ids.shape, k)


@gguf_embedding.register_fake
def _(ids, qs, hdr, qtype, k, dtype):
    return qs.new_empty(*ids.shape, k, dtype=dtype)


_SERVED = {GGUFLinearMethod: JitkernGGUFLinearMethod, GGUFEmbeddingMethod: JitkernGGUFEmbeddingMethod}


def install() -> None:
    """Idempotent: GGUFConfig hands out the jitkern methods."""
    if getattr(GGUFConfig.get_quant_method, _HOOKED, False):
        return
    stock = GGUFConfig.get_quant_method

    def get_quant_method(self, layer, prefix):
        method = stock(self, layer, prefix)
        served = _SERVED.get(type(method))
        return method if served is None else served(self)

    get_quant_method.__wrapped__ = stock
    setattr(get_quant_method, _HOOKED, True)
    GGUFConfig.get_quant_method = get_quant_method
    allow_v2_loaders(JitkernGGUFLinearMethod)


def installed() -> bool:
    return bool(getattr(GGUFConfig.get_quant_method, _HOOKED, False))
