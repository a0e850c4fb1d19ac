"""Run tiny checkpoints through vllm.LLM in this process and print one JSON line per model.

Usage: python vllm_runner.py '{"models": [...], "prompts": [[...]], "steps": 32, "tp": 1, "prefill": [[...]],
                                "prompts_for": {"<model>": [[...]]}, "check_seed": 123}'
A subprocess per configuration because vLLM loads general plugins once per process, so the plugin
on/off choice (VLLM_PLUGINS, JITKERN_VLLM) cannot change inside one.

Per model: the greedy tokens of ``prompts`` (or that model's ``prompts_for``); ``calls``: how often
each jitkern op ran; with tp == 1 also ``methods``: each layer's quant method class, and
``dense_rows``: per layer, the row counts M that reached ``jitkern::dense_linear`` (while generating
``prompts`` and then one step of ``prefill``).
A ``.gguf`` model reads its config and tokenizer from the file's folder; with ``check_seed`` its result
also has ``layer_errors``: each loaded GGUF layer's output on fresh random fp16 input against float64
products of the file's tensors as the ``gguf`` package dequantizes them (and, for vocabulary tables,
whether looked-up rows equal those tensors' rows).
"""
import gc
import json
import sys
import time
from collections import defaultdict
from functools import partial
from pathlib import Path


def _layer_weights(model):
    """{data_ptr of a layer's weight: layer name} and {layer name: quant method class} of the model."""
    ptrs, methods = {}, {}
    for name, mod in model.named_modules():
        qm = getattr(mod, "quant_method", None)
        if qm is None:
            continue
        methods[name] = type(qm).__name__
        w = getattr(mod, getattr(qm, "weight_name", "weight"), None)
        if w is not None and w.numel():
            ptrs[w.data_ptr()] = name
    return ptrs, methods


_MERGED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def _gguf_layer_errors(path: str, seed: int, model) -> dict:
    """{layer: ‖y − x·Wᵀ‖/‖x·Wᵀ‖ (float64 reference) for M = 1, 5, 24; tables also "<name>.rows": lookups
    equal the dequantized rows} for every layer a jitkern GGUF method serves."""
    import gguf
    import torch

    reader = gguf.GGUFReader(path)
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)

    def weight(hf: str):                  # vLLM module name -> float64 [N, K] from the file
        head, leaf = hf.rsplit(".", 1) if "." in hf else ("", hf)
        parts = [f"{head}.{p}" if head else p for p in _MERGED.get(leaf, (leaf,))]
        return torch.cat([torch.from_numpy(tensors[names.get_name(p) + ".weight"]).double() for p in parts])

    g, out = torch.Generator().manual_seed(seed), {}
    for name, mod in model.named_modules():
        qm = getattr(mod, "quant_method", None)
        if not type(qm).__name__.startswith("JitkernGGUF"):
            continue
        w = weight(name)
        for m in (1, 5, 24):
            x = torch.randn(m, w.shape[1], generator=g).half()
            ref = x.double() @ w.T
            y = qm.apply(mod, x).double()
            out[f"{name}@{m}"] = ((y - ref).norm() / ref.norm()).item()
        if type(qm).__name__ == "JitkernGGUFEmbeddingMethod":
            ids = torch.randint(0, w.shape[0], (2, 7), generator=g)
            out[f"{name}.rows"] = float(torch.equal(qm.embedding(mod, ids), w[ids].half()))
    return out


def main(spec: dict) -> None:
    from vllm import LLM, SamplingParams

    from engine_patch._vllm_common import op_calls
    from jitkern.ops import dense

    rows = []                           # (weight data_ptr, M) of every dense_linear call
    stock_linear = dense.linear

    def recording_linear(x, weight, bias=None):
        rows.append((weight.data_ptr(), x.shape[0]))
        return stock_linear(x, weight, bias)

    dense.linear = recording_linear     # the op body looks it up at call time
    sp = SamplingParams(temperature=0, max_tokens=spec.get("steps", 32), ignore_eos=True)
    for model in spec["models"]:
        t0, before = time.time(), op_calls()
        rows.clear()
        extra = {"tokenizer": str(Path(model).parent)} if model.endswith(".gguf") else {}
        llm = LLM(model=model, dtype="float16", enforce_eager=True, max_model_len=128, seed=0,
                  tensor_parallel_size=spec.get("tp", 1), **extra)
        prompts = spec.get("prompts_for", {}).get(model, spec["prompts"])
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        if spec.get("prefill"):
            llm.generate([{"prompt_token_ids": p} for p in spec["prefill"]],
                         SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
        after = op_calls()
        result = {"model": model, "tokens": [list(o.outputs[0].token_ids) for o in outs],
                  "calls": {k: after.get(k, 0) - before.get(k, 0) for k in after}}
        if spec.get("tp", 1) == 1:
            ptrs, methods = llm.apply_model(_layer_weights)[0]
            dense_rows = defaultdict(set)
            for ptr, m in rows:
                dense_rows[ptrs.get(ptr, "?")].add(m)
            result.update(methods=methods, dense_rows={k: sorted(v) for k, v in dense_rows.items()})
            if model.endswith(".gguf") and "check_seed" in spec:
                result["layer_errors"] = llm.apply_model(partial(_gguf_layer_errors, model, spec["check_seed"]))[0]
        result["seconds"] = round(time.time() - t0, 1)
        print("RESULT " + json.dumps(result), flush=True)
        del llm
        gc.collect()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
