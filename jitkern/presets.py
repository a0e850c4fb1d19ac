"""Model descriptions for `jitkern warmup`: built-in presets, Hugging Face folders, quantization settings.

Only the linear layers matter: their (N, K) shapes and how they are quantized.  GPTQ/AWQ kernels take
N and K at run time, so a whole model usually needs one kernel variant per batch size; shapes still
decide the group (a group as large as K becomes "one group per column", as in ``ops.gptq.variant``).
Nothing here imports torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path


class ModelError(ValueError):
    """A preset, model folder or quantization setting that cannot be used (shown as one line)."""


# Shapes from each model's config.json on the Hugging Face hub.
PRESETS: dict[str, dict] = {
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                       num_key_value_heads=8, num_hidden_layers=32, vocab_size=128256),
    "llama-3-70b": dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
                        num_key_value_heads=8, num_hidden_layers=80, vocab_size=128256),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_attention_heads=24,
                         num_key_value_heads=8, num_hidden_layers=28, vocab_size=128256),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
                       num_key_value_heads=4, num_hidden_layers=28, vocab_size=152064),
    "qwen2.5-14b": dict(hidden_size=5120, intermediate_size=13824, num_attention_heads=40,
                        num_key_value_heads=8, num_hidden_layers=48, vocab_size=152064),
    "qwen2.5-32b": dict(hidden_size=5120, intermediate_size=27648, num_attention_heads=40,
                        num_key_value_heads=8, num_hidden_layers=64, vocab_size=152064),
    "qwen2.5-72b": dict(hidden_size=8192, intermediate_size=29568, num_attention_heads=64,
                        num_key_value_heads=8, num_hidden_layers=80, vocab_size=152064),
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                       num_key_value_heads=8, num_hidden_layers=32, vocab_size=32768),
}


@dataclass(frozen=True)
class Quant:
    method: str = "gptq"          # gptq | awq | gguf
    bits: int = 4
    group: int = 128              # -1: one group per output column
    sym: bool = True
    act_order: bool = False
    gguf_type: str = ""           # ggml type name for method == "gguf", e.g. "Q4_K"

    def describe(self) -> str:
        if self.method == "gguf":
            return f"gguf {self.gguf_type}"
        g = "per-column" if self.group == -1 else f"g{self.group}"
        return (f"{self.method} int{self.bits} {g} {'sym' if self.sym else 'asym'}"
                f"{' act-order' if self.act_order else ''}")


@dataclass(frozen=True)
class Linear:
    name: str
    n: int                        # output features
    k: int                        # input features
    quantized: bool = True        # lm_head stays fp16 in GPTQ/AWQ checkpoints


def linear_shapes(cfg: dict) -> list[Linear]:
    """The distinct linear layers of one decoder block plus lm_head, from a HF-style config dict."""
    cfg = cfg.get("text_config", cfg)            # multimodal configs nest the language model
    try:
        h, inter = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
        heads = int(cfg["num_attention_heads"])
    except KeyError as e:
        raise ModelError(f"config has no {e.args[0]!r}: not a decoder-only transformer config") from None
    kv = int(cfg.get("num_key_value_heads") or heads)
    hd = int(cfg.get("head_dim") or h // heads)
    shapes = [Linear("q_proj", heads * hd, h), Linear("k_proj", kv * hd, h), Linear("v_proj", kv * hd, h),
              Linear("o_proj", h, heads * hd), Linear("gate_proj", inter, h), Linear("up_proj", inter, h),
              Linear("down_proj", h, inter)]
    if cfg.get("vocab_size"):
        shapes.append(Linear("lm_head", int(cfg["vocab_size"]), h, quantized=False))
    return shapes


def preset(name: str) -> list[Linear]:
    if name not in PRESETS:
        raise ModelError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return linear_shapes(PRESETS[name])


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from None


def model_dir(path: str) -> tuple[list[Linear], Quant | None]:
    """Linear shapes and quantization of a Hugging Face model folder (None: no quantization found)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelError(f"cannot read model folder {root}: not a directory")
    cfg = _read_json(root / "config.json")
    qc = cfg.get("quantization_config")
    if qc is None:
        for name in ("quantize_config.json", "quant_config.json"):   # AutoGPTQ / AutoAWQ side files
            if (root / name).exists():
                qc = _read_json(root / name)
                break
    return linear_shapes(cfg), (quant_from_config(qc) if qc else None)


def quant_from_config(qc: dict) -> Quant:
    """GPTQ (AutoGPTQ / optimum / GPTQModel) and AWQ (AutoAWQ) quantization configs."""
    method = str(qc.get("quant_method") or ("awq" if "zero_point" in qc or "w_bit" in qc else "gptq")).lower()
    if method not in ("gptq", "awq"):
        raise ModelError(f"quant_method {method!r} is not supported (jitkern serves gptq and awq checkpoints)")
    bits = int(qc.get("bits", qc.get("w_bit", 4)))
    group = int(qc.get("group_size", qc.get("q_group_size", 128)))
    if method == "awq":                          # AWQ: asymmetric (zero points), never act-order
        return Quant("awq", bits, group, sym=not qc.get("zero_point", True), act_order=False)
    return Quant("gptq", bits, group, sym=bool(qc.get("sym", True)), act_order=bool(qc.get("desc_act", False)))


def apply_overrides(base: Quant, quant: str | None = None, bits: int | None = None, group: int | None = None,
                    asym: bool = False, act_order: bool = False) -> Quant:
    """Command-line flags win over what a model folder says."""
    q = base
    if quant:
        if quant.lower().startswith("gguf-"):
            q = Quant("gguf", bits=0, group=0, sym=False, gguf_type=quant[5:].upper())
        elif quant.lower() in ("gptq", "awq"):
            q = replace(q, method=quant.lower(), gguf_type="")
            if q.method == "awq" and not (base.method == "awq"):
                q = replace(q, sym=False, act_order=False)
        else:
            raise ModelError(f"--quant {quant!r}: expected gptq, awq or gguf-TYPE (e.g. gguf-q4_k)")
    if bits is not None:
        q = replace(q, bits=bits)
    if group is not None:
        q = replace(q, group=group)
    if asym:
        q = replace(q, sym=False)
    if act_order:
        if q.method == "awq":
            raise ModelError("--act-order: AWQ checkpoints have no act-order")
        q = replace(q, act_order=True)
    return q
