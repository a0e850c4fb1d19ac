"""tools/ab_bench.py's report from two sides' bench.json contents (the GPU runs themselves need a GPU)."""
from __future__ import annotations

import importlib.util
import random
from pathlib import Path

spec = importlib.util.spec_from_file_location("ab_bench", Path(__file__).resolve().parents[1] / "tools" / "ab_bench.py")
ab_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ab_bench)


def fake_run(rng: random.Random, impl: str) -> dict:
    rows = [dict(shape="s1", m=m, impl=i, us=rng.uniform(5, 50)) for m in (1, 8) for i in ("fp16", impl)]
    summary = [dict(impl=impl, m=m, geomean=rng.uniform(0.5, 1.0)) for m in (1, 8)]
    return dict(gpu="Fake GPU", rows=rows, summary=summary)


def test_compare_takes_each_rows_best_and_pairs_the_rounds(seed):
    rng = random.Random(seed)
    runs = {side: [fake_run(rng, "k") for _ in range(3)] for side in ("base", "new")}
    runs["new"][1]["rows"].append(dict(shape="s1", m=1, impl="only-new", us=1.0))
    lines = ab_bench.compare(runs)
    assert lines[0].startswith("GPU: Fake GPU; best of 3 rounds")
    for m in (1, 8):
        best = {side: min(r["us"] for run in runs[side] for r in run["rows"] if r["impl"] == "k" and r["m"] == m)
                for side in runs}
        (line,) = [x for x in lines if x.startswith("s1") and f"m={m} " in x]
        assert f"{best['base']:9.1f} -> {best['new']:9.1f} us  x{best['base'] / best['new']:.3f}" in line
        for r in range(3):
            before, after = (next(s["geomean"] for s in runs[side][r]["summary"] if s["m"] == m) for side in runs)
            assert any(x.startswith(f"round {r + 1}") and f"m={m} " in x and f"{before:.3f} -> {after:.3f}" in x
                       for x in lines)
    assert not any("only-new" in x for x in lines) and not any(" fp16 " in x for x in lines)
