"""Run tiny checkpoints through vllm.LLM in this process and print one JSON line per model.

Usage: python vllm_runner.py '{"models": [...], "prompts": [[...]], "steps": 32, "tp": 1, "prefill": [[...]],
                                "prompts_for": {"<model>": [[...]]}}'
A subprocess per configuration because vLLM loads general plugins once per process, so the plugin
on/off choice (VLLM_PLUGINS, JITKERN_VLLM) cannot change inside one.

Per model: the greedy tokens of ``prompts`` (or that model's ``prompts_for``); ``calls``: how often
each jitkern op ran; with tp == 1 also ``methods``: each layer's quant method class, and
``dense_rows``: per layer, the row counts M that reached ``jitkern::dense_linear`` (while generating
``prompts`` and then one step of ``prefill``).
"""
import gc
import json
import sys
import time
from collections import defaultdict


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
        llm = LLM(model=model, dtype="float16", enforce_eager=True, max_model_len=128, seed=0,
                  tensor_parallel_size=spec.get("tp", 1))
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
        result["seconds"] = round(time.time() - t0, 1)
        print("RESULT " + json.dumps(result), flush=True)
        del llm
        gc.collect()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
