#!/usr/bin/env python3
"""Same-run A/B of two source trees on one GPU: `tools/bench.py` alternately from BASE and from this
tree, ROUNDS times each (machines differ, and even one card drifts, so only a same-run comparison
says whether a change helped).  Prints each row's best time on both sides and the geometric means of
the ratio to fp16 F.linear, round by round.

    git archive REV | (mkdir -p /tmp/base && tar -x -C /tmp/base)        # the tree to compare with
    tools/ab_bench.py /tmp/base --impls jitkern-int4-g128 --ms 1,8 --shapes llama3-70b.qkv
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def bench(tree: Path, out: Path, args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "tools/bench.py", "--out", str(out), *args], cwd=tree, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads((out / "bench.json").read_text())


def compare(runs: dict[str, list[dict]]) -> list[str]:
    """The report's lines, from each side's bench.json contents (a list a side, one a round)."""
    lines = [f"GPU: {runs['new'][0]['gpu']}; best of {len(runs['new'])} rounds, base -> new"]
    best: dict[tuple, dict] = {}
    for side, results in runs.items():
        for result in results:
            for row in result["rows"]:
                if "us" in row and row["impl"] != "fp16":
                    slot = best.setdefault((row["shape"], row["m"], row["impl"]), {})
                    slot[side] = min(slot.get(side, float("inf")), row["us"])
    for (shape, m, impl), t in best.items():
        if "base" in t and "new" in t:
            lines.append(f"{shape:20s} m={m:<4d} {impl:28s} {t['base']:9.1f} -> {t['new']:9.1f} us  "
                         f"x{t['base'] / t['new']:.3f}")
    for r, (base, new) in enumerate(zip(runs["base"], runs["new"])):
        before = {(s["impl"], s["m"]): s["geomean"] for s in base["summary"]}
        for s in new["summary"]:
            if (s["impl"], s["m"]) in before:
                lines.append(f"round {r + 1}  {s['impl']:28s} m={s['m']:<4d} geomean "
                             f"{before[s['impl'], s['m']]:.3f} -> {s['geomean']:.3f}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", type=Path, help="the other source tree (e.g. git archive of a revision)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--impls", required=True, help="as tools/bench.py --impls")
    p.add_argument("--ms", default="1,8")
    p.add_argument("--shapes", default="all")
    a = p.parse_args(argv)
    args = ["--impls", a.impls, "--ms", a.ms, "--shapes", a.shapes]
    runs: dict[str, list[dict]] = {"base": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for side, tree in (("base", a.base.resolve()), ("new", HERE)):
                runs[side].append(bench(tree, Path(tmp) / f"{side}{r}", args))
            # the report so far, each round (a run cut short by a time limit still says something)
            print(f"== after round {r + 1} of {a.rounds}", *compare(runs), sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
