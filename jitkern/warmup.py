"""`jitkern warmup`: compile every kernel a model needs into the disk cache, in parallel processes.

Order of work, cheapest first: (1) a warmup manifest for this exact request whose entries are all
intact ends the run without importing torch (see jitkern.manifest); (2) otherwise list the specs and
look each one up on disk in-process (render + key hash, no compiler run); (3) only the misses go to a
process pool, each worker calling ``cache.get(spec)`` (per-key file locks make concurrent warmups
compile a kernel once).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time

from . import env, kernelset, manifest

EXAMPLES = """\
Examples:
  jitkern warmup --preset llama-3-8b --arch gfx906          # GPTQ int4 g128 sym, M = 1..8 + prefill
  jitkern warmup --preset qwen2.5-32b --bits 8 --group 64 --asym --jobs 4
  jitkern warmup --preset mistral-7b --quant gguf-q4_k --arch gfx906
  jitkern warmup --model ~/models/Llama-3-8B-GPTQ             # reads config.json's quantization_config
  jitkern warmup --gguf model-Q4_K_M.gguf --max-batch 4 --json
  JITKERN_CACHE_DIR=/shared/jitkern jitkern warmup --preset llama-3-70b --arch gfx906:sramecc+:xnack-
"""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of processes")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser("warmup", help="compile every kernel a model needs into the cache",
                       description=__doc__.splitlines()[0], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    kernelset.add_source_args(p)
    o = p.add_argument_group("run")
    o.add_argument("--jobs", "-j", type=_positive, default=os.cpu_count() or 1, help="compiler processes (default: CPU count)")
    o.add_argument("--dry-run", action="store_true", help="list the kernels and whether each is cached; compile nothing")
    o.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def lookup(spec) -> tuple[str, str, bool]:
    """(cache key, entry path under the cache dir without suffix, present and intact)."""
    from . import cache
    from .compiler import for_vendor
    from .render import render

    compiler = for_vendor(spec.target.vendor)
    options = compiler.default_options(spec.arch)
    key = cache.entry_key(render(spec), options, spec.arch, compiler.fingerprint())
    bin_path, meta_path, _ = cache._paths(spec, key)
    rel = str(bin_path.with_suffix("").relative_to(env.cache_dir()))
    return key, rel, cache.read_entry(bin_path, meta_path, key) is not None


def _short_error(e: Exception) -> str:
    from .compiler import CompileError

    if isinstance(e, CompileError):                      # the log, without the (long) numbered source
        log = [ln for ln in e.log.strip().splitlines() if ln.strip()][:20]
        return "compile error:\n" + "\n".join("    " + ln for ln in log)
    return f"{type(e).__name__}: {e}"


def _build(spec):
    """Worker: (key, seconds, compiled here?, error or None).  Never raises, so one bad kernel
    does not cancel the others."""
    from . import cache

    before, t0 = cache.stats.compiles, time.perf_counter()
    try:
        key = cache.get(spec).key
    except Exception as e:
        return None, time.perf_counter() - t0, False, _short_error(e)
    return key, time.perf_counter() - t0, cache.stats.compiles > before, None


def _pool_context():
    # fork: workers inherit the imported modules (no 2-3 s torch import each); the parent never
    # created a GPU context, and workers only run the compiler.
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None


def build_all(specs: list, jobs: int, progress: bool) -> list[tuple]:
    """_build for each spec, in `jobs` processes (in this one for jobs == 1), in spec order."""
    from tqdm import tqdm

    results: list = [None] * len(specs)
    bar = tqdm(total=len(specs), desc="compiling", unit="kernel", disable=not progress or None,
               file=sys.stderr, leave=False)
    with bar:
        if jobs <= 1 or len(specs) == 1:
            for i, spec in enumerate(specs):
                results[i] = _build(spec)
                bar.update()
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(max_workers=min(jobs, len(specs)), mp_context=_pool_context()) as pool:
                futures = {pool.submit(_build, s): i for i, s in enumerate(specs)}
                for f in as_completed(futures):
                    results[futures[f]] = f.result()
                    bar.set_postfix_str(specs[futures[f]].uri, refresh=False)
                    bar.update()
    return results


def warmup(args) -> dict:
    t0 = time.perf_counter()
    arch = kernelset.target_arch(args)
    sig = None if args.dry_run else manifest.signature(kernelset.request(args, arch), arch)
    known = manifest.check(sig)
    summary = dict(model=kernelset.describe(args), arch=arch, max_batch=kernelset.max_batch(args), quant=None,
                   notes=[], fast_path=known is not None)
    if known is not None:
        uris = [e["uri"] for e in known["entries"]]
        summary.update(known.get("info", {}))
        summary.update(kernels=uris, compiled=0, cached=len(uris), failed=[],
                       seconds=round(time.perf_counter() - t0, 3))
        return summary
    specs, notes, quant = kernelset.collect(args, arch)
    summary.update(quant=quant, notes=notes, kernels=[s.uri for s in specs])
    found = [lookup(s) for s in specs]
    missing = [i for i, (_, _, hit) in enumerate(found) if not hit]
    if args.dry_run:
        summary.update(missing=[specs[i].uri for i in missing], compiled=0,
                       cached=len(specs) - len(missing), failed=[], seconds=round(time.perf_counter() - t0, 3))
        return summary
    results = build_all([specs[i] for i in missing], args.jobs, not (args.quiet or args.json)) if missing else []
    compiled, failed, keys = 0, [], {i: k for i, (k, _, hit) in enumerate(found) if hit}
    for i, (key, _secs, did_compile, err) in zip(missing, results):
        if err is not None:
            failed.append({"uri": specs[i].uri, "error": err})
        else:
            compiled += did_compile
            keys[i] = key
    if not failed:
        manifest.record(sig, [{"uri": specs[i].uri, "key": keys[i],
                               "path": found[i][1] if keys[i] == found[i][0] else lookup(specs[i])[1]}
                              for i in range(len(specs))], {"quant": quant, "notes": notes})
    summary.update(compiled=compiled, cached=len(specs) - compiled - len(failed), failed=failed,
                   seconds=round(time.perf_counter() - t0, 3))
    return summary


def print_summary(s: dict, out=sys.stdout) -> None:
    print(f"jitkern warmup: {s['model']}{' (' + s['quant'] + ')' if s['quant'] else ''} for {s['arch']}, "
          f"batch <= {s['max_batch']}{'  [manifest: all entries verified]' if s['fast_path'] else ''}", file=out)
    for note in s["notes"]:
        print(f"  note: {note}", file=out)
    if "missing" in s:                                  # --dry-run
        for uri in s["kernels"]:
            print(f"  {'MISSING' if uri in s['missing'] else 'cached '}  {uri}", file=out)
    rows = [("kernels", len(s["kernels"])), ("compiled", s["compiled"]), ("already cached", s["cached"]),
            ("failed", len(s["failed"])), ("seconds", f"{s['seconds']:.2f}")]
    for name, value in rows:
        print(f"  {name:<15} {value:>8}", file=out)
    for f in s["failed"]:
        print(f"  FAILED {f['uri']}: {f['error']}", file=out)


def run(args) -> int:
    s = warmup(args)
    if args.json:
        print(json.dumps(s, indent=1))
    else:
        print_summary(s)
    return 1 if s["failed"] else 0
