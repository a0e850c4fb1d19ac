"""Run tiny checkpoints through vllm.LLM in this process and print one JSON line per model.

Usage: python vllm_runner.py '{"models": [...], "prompts": [[...]], "steps": 32, "tp": 1}'
A subprocess per configuration because vLLM loads general plugins once per process, so the plugin
on/off choice (VLLM_PLUGINS, JITKERN_VLLM) cannot change inside one.
"""
import gc
import json
import sys
import time


def main(spec: dict) -> None:
    from vllm import LLM, SamplingParams

    from jitkern.ops.library import calls

    sp = SamplingParams(temperature=0, max_tokens=spec.get("steps", 32), ignore_eos=True)
    for model in spec["models"]:
        t0, before = time.time(), calls["gptq_linear"]
        llm = LLM(model=model, dtype="float16", enforce_eager=True, max_model_len=128, seed=0,
                  tensor_parallel_size=spec.get("tp", 1))
        outs = llm.generate([{"prompt_token_ids": p} for p in spec["prompts"]], sp, use_tqdm=False)
        print("RESULT " + json.dumps({"model": model, "tokens": [list(o.outputs[0].token_ids) for o in outs],
                                      "calls": calls["gptq_linear"] - before,
                                      "seconds": round(time.time() - t0, 1)}), flush=True)
        del llm
        gc.collect()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
