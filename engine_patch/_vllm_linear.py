"""vLLM linear methods that serve GPTQ / AWQ checkpoints through jitkern (imported only by the plugin).

Weights are created with vLLM's parameter classes so vLLM's loaders and tensor-parallel sharding fill
them exactly as for its own GPTQ / AWQ methods; after loading they are converted once to jitkern's
IntLayout and the forward calls the ``jitkern::gptq_linear`` op through :func:`jitkern.quant_linear`.
"""
from __future__ import annotations

from fractions import Fraction

import torch
from vllm.model_executor.layers.linear import LinearBase, LinearMethodBase, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization import get_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.parameter import (ChannelQuantScaleParameter, GroupQuantScaleParameter,
                                           PackedColumnParameter, PackedvLLMParameter, RowvLLMParameter)

from jitkern.formats.layout import IntLayout
from jitkern.nn import quant_linear

from . import vllm as plugin
from ._vllm_common import allow_v2_loaders, log_bf16, note_forward

_LAYOUT_FIELDS = ("qweight", "scales", "zeros", "perm", "unit_group")


def _pack_factor(bits: int):
    return 32 // bits if 32 % bits == 0 else Fraction(32, bits)    # 3-bit: 32 values in 3 words


class _JitkernLinearMethod(LinearMethodBase):
    def __init__(self, cfg):
        self.cfg = cfg

    def _register(self, layer, qweight, qzeros, scales, g_idx=None):
        for name, p in (("qweight", qweight), ("qzeros", qzeros), ("scales", scales), ("g_idx", g_idx)):
            if p is not None:
                layer.register_parameter(name, p)

    def _install(self, layer, layout: IntLayout) -> None:
        """Swap the checkpoint params for the layout's tensors (kept as params so torch.compile and
        .to() see them); checkpoint-only params go away."""
        for name in ("qweight", "qzeros", "scales", "g_idx"):
            if hasattr(layer, name):
                delattr(layer, name)
        for name in _LAYOUT_FIELDS:
            t = getattr(layout, name)
            layer.register_parameter("jk_" + name, None if t is None else torch.nn.Parameter(t, requires_grad=False))
        layer.jk_meta = (layout.bits, layout.group_size, layout.k_in, layout.k, layout.n)
        if layout.qweight.is_cuda:                    # compile / load every kernel now, never in forward
            from jitkern.ops import gptq

            gptq.prepare(layout)

    def apply(self, layer, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        layout = IntLayout(*layer.jk_meta, *(getattr(layer, "jk_" + n) for n in _LAYOUT_FIELDS))
        if x.dtype == torch.bfloat16:
            log_bf16()
        out = quant_linear(x.contiguous(), layout)
        if bias is not None:
            out = out + bias
        note_forward()
        return out


class JitkernGPTQLinearMethod(_JitkernLinearMethod):
    """Any GPTQ checkpoint jitkern packs: 2/3/4/8 bits, sym or asym, act-order, v1 or v2 zeros."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size,
                       output_size, params_dtype, **extra):
        c, loader = self.cfg, extra.get("weight_loader")
        n_part = sum(output_partition_sizes)
        pack = _pack_factor(c.bits)
        gs = c.group_size if c.group_size != -1 else input_size
        # act-order and channelwise scales index the full K: a row-parallel shard keeps every group
        replicate = input_size != input_size_per_partition and (c.desc_act or c.group_size == -1)
        groups = -(-input_size // gs) if replicate else -(-input_size_per_partition // gs)
        qweight = PackedvLLMParameter(data=torch.empty(int(input_size_per_partition / pack), n_part, dtype=torch.int32),
                                      input_dim=0, output_dim=1, packed_dim=0, packed_factor=pack,
                                      weight_loader=loader)
        # -1 = not in the checkpoint (older GPTQ files have no g_idx)
        g_idx = RowvLLMParameter(data=torch.full((input_size_per_partition,), -1, dtype=torch.int32),
                                 input_dim=0, weight_loader=loader)
        zeros = torch.empty(groups, int(n_part / pack), dtype=torch.int32)
        scales = torch.empty(groups, n_part, dtype=torch.float16)   # fp16 as stored: no bf16 round trip
        if replicate:
            qzeros = PackedColumnParameter(data=zeros, output_dim=1, packed_dim=1, packed_factor=pack,
                                           weight_loader=loader)
            scales = ChannelQuantScaleParameter(data=scales, output_dim=1, weight_loader=loader)
        else:
            qzeros = PackedvLLMParameter(data=zeros, input_dim=0, output_dim=1, packed_dim=1, packed_factor=pack,
                                         weight_loader=loader)
            scales = GroupQuantScaleParameter(data=scales, input_dim=0, output_dim=1, weight_loader=loader)
        self._register(layer, qweight, qzeros, scales, g_idx)

    def process_weights_after_loading(self, layer) -> None:
        from jitkern.formats.gptq import gptq_to_layout

        c, g_idx = self.cfg, layer.g_idx.data
        g_idx = None if bool((g_idx < 0).any()) else g_idx
        layout = gptq_to_layout(layer.qweight.data, layer.qzeros.data, layer.scales.data, g_idx,
                                c.bits, c.group_size, c.sym, checkpoint_format=c.checkpoint_format,
                                desc_act=True if c.desc_act else False)
        self._install(layer, layout)


class JitkernAWQLinearMethod(_JitkernLinearMethod):
    """AutoAWQ GEMM checkpoints (4-bit, zero point): qweight [K, N/8] packed along N."""

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size,
                       output_size, params_dtype, **extra):
        c, loader = self.cfg, extra.get("weight_loader")
        n_part = sum(output_partition_sizes)
        replicate = input_size != input_size_per_partition and c.group_size == -1
        gs = c.group_size if c.group_size != -1 else input_size
        groups = 1 if c.group_size == -1 else input_size_per_partition // gs
        qweight = PackedvLLMParameter(data=torch.empty(input_size_per_partition, n_part // 8, dtype=torch.int32),
                                      input_dim=0, output_dim=1, packed_dim=1, packed_factor=8, weight_loader=loader)
        zeros = torch.empty(groups, n_part // 8, dtype=torch.int32)
        scales = torch.empty(groups, n_part, dtype=torch.float16)
        if replicate:
            qzeros = PackedColumnParameter(data=zeros, output_dim=1, packed_dim=1, packed_factor=8,
                                           weight_loader=loader)
            scales = ChannelQuantScaleParameter(data=scales, output_dim=1, weight_loader=loader)
        else:
            qzeros = PackedvLLMParameter(data=zeros, input_dim=0, output_dim=1, packed_dim=1, packed_factor=8,
                                         weight_loader=loader)
            scales = GroupQuantScaleParameter(data=scales, input_dim=0, output_dim=1, weight_loader=loader)
        self._register(layer, qweight, qzeros, scales)

    def process_weights_after_loading(self, layer) -> None:
        from jitkern.formats.awq import awq_to_layout

        self._install(layer, awq_to_layout(layer.qweight.data, layer.qzeros.data, layer.scales.data,
                                           self.cfg.group_size))


class JitkernConfig(QuantizationConfig):
    """GPTQ (``quant_method: gptq``) or AWQ (``awq``) checkpoint served by jitkern's kernels."""

    def __init__(self, full: dict):
        super().__init__()
        self.full = full
        self.method = str(full["quant_method"]).lower()
        self.bits = int(full.get("bits", full.get("w_bit", 4)))
        self.group_size = int(full.get("group_size", full.get("q_group_size", 128)))
        self.desc_act = bool(full.get("desc_act", False)) and self.group_size != -1
        self.sym = bool(full.get("sym", True))
        self.checkpoint_format = full.get("checkpoint_format", "gptq")
        self.dynamic = full.get("dynamic") or {}
        self.skip = list(full.get("modules_to_not_convert") or [])

    def __repr__(self):
        return (f"JitkernConfig({self.method}, bits={self.bits}, group_size={self.group_size}, "
                f"desc_act={self.desc_act}, sym={self.sym})")

    @classmethod
    def get_name(cls):
        return plugin.NAME

    @classmethod
    def get_supported_act_dtypes(cls):
        return [torch.half, torch.bfloat16]

    @classmethod
    def get_min_capability(cls):
        return 0            # gfx906 reports 90; the CPU reference has none

    @classmethod
    def get_config_filenames(cls):
        return ["quantize_config.json", "quant_config.json"]

    @classmethod
    def from_config(cls, config: dict):
        return cls(config)

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg, user_quant, hf_config=None):
        method = str(hf_quant_cfg.get("quant_method", "")).lower()
        if user_quant not in (None, plugin.NAME, method, f"{method}_marlin", f"auto_{method}", "marlin"):
            return None
        return plugin.NAME if plugin.active() and method in ("gptq", "awq") and plugin.servable(hf_quant_cfg) else None

    @staticmethod
    def get_checkpoint_weight_mapper():
        """Keep g_idx: vLLM's default mapper drops it (its kernels no longer do act-order)."""
        from vllm.model_executor.models.utils import WeightsMapper

        return WeightsMapper()

    def get_quant_method(self, layer, prefix: str):
        if _is_moe(layer):      # experts: vLLM's own method for the same checkpoint
            stock = get_quantization_config("gptq" if self.method == "gptq" else "awq")
            return stock.from_config(self.full).get_quant_method(layer, prefix)
        if not isinstance(layer, LinearBase):
            return None         # embeddings, lm_head, attention: unquantized
        cfg = self._for(prefix)
        if cfg is None:
            return UnquantizedLinearMethod()
        return (JitkernGPTQLinearMethod if self.method == "gptq"
                else JitkernAWQLinearMethod)(cfg)

    def _for(self, prefix: str):
        """This layer's settings after GPTQModel ``dynamic`` rules; None = not quantized."""
        import copy
        import re

        if any(s and s in prefix for s in self.skip):
            return None
        for pattern, over in self.dynamic.items():
            if pattern.startswith("-:"):
                if re.match(pattern[2:], prefix):
                    return None
            elif re.match(pattern.removeprefix("+:"), prefix):
                cfg = copy.copy(self)
                cfg.bits = int(over.get("bits", self.bits))
                cfg.group_size = int(over.get("group_size", self.group_size))
                cfg.desc_act = bool(over.get("desc_act", self.desc_act)) and cfg.group_size != -1
                cfg.sym = bool(over.get("sym", self.sym))
                return cfg
        return self


def _is_moe(layer) -> bool:
    return any(c.__name__ in ("RoutedExperts", "FusedMoE") for c in type(layer).__mro__)


def enable_v2_loaders() -> None:
    allow_v2_loaders(JitkernGPTQLinearMethod, JitkernAWQLinearMethod)
