"""The tiny Llama of ``tiny_models`` written as a .gguf file (the ``gguf`` package's writer, no downloads).

Types mixed as llama.cpp's Q4_K_M mixes them: Q4_K for q/k/o/gate/up, Q8_0 for v, down, the output
(lm_head) and the token embedding, F32 norms.  The merged qkv layer therefore holds two types (q, k
Q4_K; v Q8_0).  (An F16 token embedding does not load: vLLM 0.32's Llama builds its embedding without a
prefix, so vllm-gguf-plugin cannot tell it is unquantized.)

``gguf`` quantizes Q8_0 itself; it has no K-quant encoder, so :func:`quantize_q4_k` is a plain one
(per-32 scale and min from the range, 6-bit scales under two fp16 super-scales) whose bytes
``gguf.quants.dequantize`` decodes.  Tensors keep Hugging Face's row order (no llama.cpp q/k
permutation): vLLM's GGUF loader copies them as stored into the HF-layout model.
"""
from __future__ import annotations

import numpy as np

from . import tiny_models

TYPES = {   # HF projection -> ggml type name
    "self_attn.q_proj": "Q4_K", "self_attn.k_proj": "Q4_K", "self_attn.v_proj": "Q8_0",
    "self_attn.o_proj": "Q4_K", "mlp.gate_proj": "Q4_K", "mlp.up_proj": "Q4_K", "mlp.down_proj": "Q8_0",
    "lm_head": "Q8_0", "model.embed_tokens": "Q8_0",
}
FILE = "model.gguf"


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8).reshape(*x.shape, 2)


def quantize_q4_k(w: np.ndarray) -> np.ndarray:
    """float32 [N, K] (K % 256 == 0) -> Q4_K block bytes uint8 [N, K/256*144] (ggml block_q4_K)."""
    n, k = w.shape
    x = w.astype(np.float32).reshape(-1, 8, 32)                 # super-blocks of 8 sub-blocks of 32
    lo = np.minimum(x.min(-1), 0.0)
    scale = (x.max(-1) - lo) / 15.0
    d = np.maximum(scale.max(-1), 1e-12) / 63.0
    dmin = np.maximum((-lo).max(-1), 1e-12) / 63.0
    d16, dmin16 = d.astype(np.float16), dmin.astype(np.float16)
    sc = np.clip(np.rint(scale / d16.astype(np.float32)[:, None]), 0, 63).astype(np.uint8)
    mn = np.clip(np.rint(-lo / dmin16.astype(np.float32)[:, None]), 0, 63).astype(np.uint8)
    step = d16.astype(np.float32)[:, None] * sc
    off = dmin16.astype(np.float32)[:, None] * mn
    q = np.clip(np.rint((x + off[..., None]) / np.where(step > 0, step, 1.0)[..., None]), 0, 15).astype(np.uint8)
    scales = np.empty((x.shape[0], 12), np.uint8)                 # 6-bit scales/mins, ggml's packing
    scales[:, 0:4] = sc[:, :4] | (sc[:, 4:] >> 4) << 6
    scales[:, 4:8] = mn[:, :4] | (mn[:, 4:] >> 4) << 6
    scales[:, 8:12] = (sc[:, 4:] & 15) | (mn[:, 4:] & 15) << 4
    q = q.reshape(-1, 4, 2, 32)                                   # element 64c + 32h + l
    qs = (q[:, :, 0] | q[:, :, 1] << 4).reshape(-1, 128)
    blocks = np.concatenate([_f16(d).reshape(-1, 2), _f16(dmin).reshape(-1, 2), scales, qs], axis=1)
    return blocks.reshape(n, k // 256 * 144)


def quantize(w: np.ndarray, qtype: str) -> np.ndarray:
    import gguf

    if qtype == "Q4_K":
        return quantize_q4_k(w)
    return gguf.quants.quantize(w.astype(np.float32), gguf.GGMLQuantizationType[qtype])


def dequantize(raw: np.ndarray, qtype: str) -> np.ndarray:
    """The gguf package's own decoder: float32 [N, K]."""
    import gguf

    return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])


def _type_of(name: str) -> str | None:
    return next((t for p, t in TYPES.items() if name.endswith(p + ".weight")), None)


def write(path, state: dict, cfg: dict) -> dict:
    """Write ``state`` (HF names, float32) as a llama .gguf at ``path``; return the dequantized state
    (what the file holds, as float32) for the dense baseline."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg["num_hidden_layers"])
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(float(cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))))
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(3, cfg["vocab_size"])])
    deq = {}
    for name, t in state.items():
        base, suffix = name.rsplit(".", 1)
        a = t.float().numpy()
        qtype = _type_of(name)
        if qtype is not None:
            raw = quantize(a, qtype)
            w.add_tensor(f"{names.get_name(base)}.{suffix}", raw, raw_shape=raw.shape,
                         raw_dtype=gguf.GGMLQuantizationType[qtype])
            deq[name] = dequantize(raw, qtype)
        else:                                   # norms: F32
            w.add_tensor(f"{names.get_name(base)}.{suffix}", a)
            deq[name] = a.astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return deq


def build(root):
    """``root/gguf/model.gguf`` (+ the HF config and tokenizer vLLM's GGUF loader reads beside it) and
    ``root/gguf_deq`` (the dense fp16 model of the dequantized weights).  Returns the .gguf path."""
    import torch

    from pathlib import Path

    path = Path(root) / "gguf"
    if (path / FILE).exists():
        return path / FILE
    cfg, state = tiny_models.dense_state()
    path.mkdir(parents=True, exist_ok=True)
    deq = write(path / FILE, state, cfg)
    tiny_models.save(path, cfg, None, None)
    tiny_models.save(Path(root) / "gguf_deq", cfg, {k: torch.from_numpy(v).half() for k, v in deq.items()}, None)
    return path / FILE
