"""Tiny random-weight Llama checkpoints built locally (no downloads) for engine tests.

``build(root, kind)`` writes a HF model directory: ``dense`` (fp16), GPTQ ``gptq4`` (4-bit sym v1,
group 128), ``gptq4_act`` (4-bit asym, act-order, group 64), ``gptq8`` (8-bit sym, group 128),
``awq`` (4-bit GEMM, group 128), and ``<kind>_deq``: the dense model rebuilt from the dequantized
weights of that checkpoint (the comparison baseline).  Quantized with jitkern's own packers.
``gguf`` is the same model as a .gguf file (``tiny_gguf``; ``build`` returns the file's path) and
``gguf_deq`` the dense model of its dequantized weights.

Seed 27 with init std 0.1: a random tiny model whose greedy tokens are stable across dtypes
(random tiny models tie easily; other seeds flip tokens between fp32 and fp16).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

SEED = 27
CONFIG = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=512, max_position_embeddings=256,
              initializer_range=0.1, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
PROJS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
QUANT = {   # kind -> (quantization_config, quantizer kwargs)
    "gptq4": (dict(quant_method="gptq", bits=4, group_size=128, desc_act=False, sym=True), {}),
    "gptq4_act": (dict(quant_method="gptq", bits=4, group_size=64, desc_act=True, sym=False), {}),
    "gptq8": (dict(quant_method="gptq", bits=8, group_size=128, desc_act=False, sym=True), {}),
    "awq": (dict(quant_method="awq", bits=4, group_size=128, zero_point=True, version="gemm"), {}),
}
KINDS = ("dense",) + tuple(QUANT) + tuple(k + "_deq" for k in QUANT) + ("gguf", "gguf_deq")


def dense_state() -> tuple[dict, dict]:
    """(transformers LlamaConfig dict, fp32 state dict) of the seeded random model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    cfg = LlamaConfig(**CONFIG)
    model = LlamaForCausalLM(cfg)
    return cfg.to_dict(), {k: v.detach().float().clone() for k, v in model.state_dict().items()}


def quantize(state: dict, kind: str) -> tuple[dict, dict]:
    """(checkpoint tensors, dequantized fp16 state) for one quantized kind."""
    from jitkern.formats import awq, gptq

    qcfg = QUANT[kind][0]
    ckpt, deq = {}, {}
    for name, w in state.items():
        if not any(name.endswith(p + ".weight") for p in PROJS):
            ckpt[name] = deq[name] = w.half()
            continue
        base = name[: -len(".weight")]
        if qcfg["quant_method"] == "awq":
            t = awq.quantize_awq(w, qcfg["group_size"])
            W = awq.dequantize_awq(t["qweight"], t["qzeros"], t["scales"], qcfg["group_size"])
        else:
            t = gptq.quantize_gptq(w, qcfg["bits"], qcfg["group_size"], sym=qcfg["sym"],
                                   act_order=qcfg["desc_act"], generator=_perm_gen(base))
            W = gptq.dequantize_gptq(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], qcfg["bits"],
                                     qcfg["group_size"])
        ckpt.update({f"{base}.{k}": v.contiguous() for k, v in t.items()})
        deq[name] = W.half()
    return ckpt, deq


def _perm_gen(base: str) -> torch.Generator:
    """Act-order stand-in: one permutation per input (GPTQ orders by the input's Hessian), so q/k/v and
    gate/up share g_idx — vLLM fuses them into one layer with one g_idx."""
    shared = base.replace("k_proj", "q_proj").replace("v_proj", "q_proj").replace("up_proj", "gate_proj")
    return torch.Generator().manual_seed(SEED + sum(map(ord, shared)) * 7919)


def tokenizer():
    """A word-level tokenizer over the 512-entry vocab: '<unk>', '<s>', '</s>', 'w3' … 'w511'."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, CONFIG["vocab_size"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def save(path: Path, cfg: dict, tensors: dict | None, qcfg: dict | None) -> Path:
    """config.json, tokenizer and (unless ``tensors`` is None) model.safetensors in ``path``."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    cfg = dict(cfg, torch_dtype="float16", dtype="float16", architectures=["LlamaForCausalLM"])
    if qcfg is not None:
        cfg["quantization_config"] = qcfg
        (path / "quantize_config.json").write_text(json.dumps(qcfg))
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    if tensors is not None:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"))
    tokenizer().save_pretrained(str(path))
    return path


def build(root, kind: str) -> Path:
    """Write model ``kind`` (see ``KINDS``) under ``root/kind`` once; return its directory (``gguf``:
    the .gguf file in it)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {KINDS}")
    if kind.startswith("gguf"):
        from . import tiny_gguf

        gguf_file = tiny_gguf.build(root)
        return gguf_file if kind == "gguf" else Path(root) / kind
    path = Path(root) / kind
    if (path / "model.safetensors").exists():
        return path
    cfg, state = dense_state()
    if kind == "dense":
        return save(path, cfg, {k: v.half() for k, v in state.items()}, None)
    base = kind.removesuffix("_deq")
    ckpt, deq = quantize(state, base)
    qcfg = dict(QUANT[base][0])
    if qcfg["quant_method"] == "gptq":
        qcfg["checkpoint_format"] = "gptq"
    return save(path, cfg, deq, None) if kind.endswith("_deq") else save(path, cfg, ckpt, qcfg)


if __name__ == "__main__":
    import sys

    for k in sys.argv[2:] or KINDS:
        print(build(sys.argv[1], k))
