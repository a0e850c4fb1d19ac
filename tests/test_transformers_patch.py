"""engine_patch.transformers.patch on a tiny Llama whose projections are GPTQ / AWQ modules.

The quantized modules are stand-ins with gptqmodel's / AutoAWQ's attribute names (the adapter detects
by duck typing, so neither package is needed).  CPU runs in float32: the op's CPU path is the float32
reference (fp16 outputs), compared with the float32 dense model rebuilt from the dequantized weights.
"""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from engine_patch import tiny_models  # noqa: E402
from engine_patch.transformers import patch  # noqa: E402
from jitkern import QuantLinear  # noqa: E402
from jitkern.formats import awq, gptq  # noqa: E402

PROMPTS = [[1, 263, 416, 264, 485], [1, 409, 434, 499, 127]]   # tie-free paths (see test_vllm_plugin)


class GPTQStandIn(torch.nn.Module):
    """gptqmodel TorchQuantLinear's buffers (v1 qzeros) and attributes; forward dequantizes."""

    def __init__(self, t, bits, group_size, k, n):
        super().__init__()
        for name in ("qweight", "qzeros", "scales", "g_idx"):
            self.register_buffer(name, t[name])
        self.bits, self.group_size, self.sym, self.in_features, self.out_features = bits, group_size, True, k, n
        self.bias = None

    def forward(self, x):
        w = gptq.dequantize_gptq(self.qweight, self.qzeros, self.scales, self.g_idx, self.bits, self.group_size)
        return x @ w.t().to(x.dtype)


class AWQStandIn(torch.nn.Module):
    """AutoAWQ WQLinear_GEMM's buffers and attributes (w_bit, no g_idx)."""

    def __init__(self, t, group_size, k, n):
        super().__init__()
        for name in ("qweight", "qzeros", "scales"):
            self.register_buffer(name, t[name])
        self.w_bit, self.group_size, self.in_features, self.out_features = 4, group_size, k, n
        self.bias = None

    def forward(self, x):
        return x @ awq.dequantize_awq(self.qweight, self.qzeros, self.scales, self.group_size).t().to(x.dtype)


def build(kind: str, dtype=torch.float32):
    """(quantized model with stand-in modules, dense dequantized model)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg_dict, state = tiny_models.dense_state()
    ckpt, deq = tiny_models.quantize(state, kind)
    qcfg = tiny_models.QUANT[kind][0]
    cfg = LlamaConfig(**{k: v for k, v in cfg_dict.items() if k in tiny_models.CONFIG or k == "rope_parameters"})
    dense = LlamaForCausalLM(cfg)
    dense.load_state_dict({k: v.float() for k, v in deq.items()})
    quant = LlamaForCausalLM(cfg)
    quant.load_state_dict({k: v.float() for k, v in deq.items()})
    for name, mod in list(quant.named_modules()):
        if isinstance(mod, torch.nn.Linear) and name + ".weight" in deq and name + ".qweight" in ckpt:
            t = {s: ckpt[f"{name}.{s}"] for s in ("qweight", "qzeros", "scales", "g_idx") if f"{name}.{s}" in ckpt}
            k, n = mod.in_features, mod.out_features
            new = (AWQStandIn(t, qcfg["group_size"], k, n) if qcfg["quant_method"] == "awq"
                   else GPTQStandIn(t, qcfg["bits"], qcfg["group_size"], k, n))
            parent, _, attr = name.rpartition(".")
            setattr(quant.get_submodule(parent), attr, new)
    return quant.to(dtype).eval(), dense.to(dtype).eval()


@torch.no_grad()
def greedy(model, prompt, steps=32, device="cpu"):
    ids = torch.tensor([prompt], device=device)
    for _ in range(steps):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids[0, len(prompt):].tolist()


@pytest.mark.parametrize("kind", ["gptq4", "gptq4_act", "gptq8", "awq"])
def test_patch_cpu_same_greedy_tokens(kind):
    quant, dense = build(kind)
    assert patch(quant) == 14                               # 7 projections x 2 layers
    assert sum(isinstance(m, QuantLinear) for m in quant.modules()) == 14
    for p in PROMPTS:
        assert greedy(quant, p) == greedy(dense, p)


def test_patch_leaves_other_modules():
    quant, _ = build("gptq4")
    patch(quant)
    assert patch(quant) == 0                                # idempotent: nothing left to swap
    assert isinstance(quant.lm_head, torch.nn.Linear)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["gptq4", "awq"])
def test_patch_gpu_eager_and_compiled(kind):
    """fp16 on the GPU: eager greedy tokens equal the dense dequantized model; then torch.compile with
    CUDA graphs (mode="reduce-overhead") reproduces them teacher-forced over the whole sequence."""
    quant, dense = build(kind, torch.float16)
    patch(quant)
    quant, dense = quant.cuda(), dense.cuda()
    for p in PROMPTS:
        toks = greedy(quant, p, device="cuda")
        assert toks == greedy(dense, p, device="cuda")
        compiled = torch.compile(quant, mode="reduce-overhead", fullgraph=False)
        seq = torch.tensor([p + toks[:-1]], device="cuda")
        with torch.no_grad():
            for _ in range(3):                              # record, then replay the graph
                pred = compiled(seq).logits[0, len(p) - 1:].argmax(-1).tolist()
        assert pred == toks
