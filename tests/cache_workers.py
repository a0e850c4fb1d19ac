"""Worker processes for tests/test_cache_stress.py (not a test module).

``python tests/cache_workers.py MODE ARGS_JSON`` imports jitkern once, then forks real processes
(fork: no 2 s import per process, and no compiler library is loaded before the fork) that use the
disk cache at the same time.  It prints one line ``RESULT <json>``.

Modes:
  race    16 processes released together by a barrier, each asking for its own list of specs
  kill    one process per kill point, SIGKILLed (by itself, at that exact point) while writing
  prune   readers re-loading kernels while other processes run `jitkern cache prune/clear`
  fsize   a process whose file-size limit (RLIMIT_FSIZE) makes every cache write fail (EFBIG)
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import random
import re
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jitkern import cache  # noqa: E402
from jitkern.spec import KernelSpec  # noqa: E402

CTX = mp.get_context("fork")


def spec(d: dict) -> KernelSpec:
    return KernelSpec(**d)


def digest(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _use(cache_dir: str) -> None:
    os.environ["JITKERN_CACHE_DIR"] = cache_dir
    cache.clear_memory()


# ---------------------------------------------------------------------------------------------
# race: N processes, a random mix of specs each, on a cold cache

def _race_child(cache_dir, specs, barrier, queue):
    try:
        _use(cache_dir)
        barrier.wait(timeout=60)
        got = {}
        for d in specs:
            s = spec(d)
            got[s.uri] = digest(cache.get(s).binary)
        queue.put({"pid": os.getpid(), "digests": got, "compiled": list(cache.stats.compiled)})
    except BaseException:
        queue.put({"pid": os.getpid(), "error": traceback.format_exc()})


def race(args: dict) -> dict:
    plan = args["plan"]                      # one list of spec dicts per process
    barrier, queue = CTX.Barrier(len(plan)), CTX.Queue()
    procs = [CTX.Process(target=_race_child, args=(args["cache_dir"], p, barrier, queue)) for p in plan]
    t0 = time.time()
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    return {"children": results, "exit_codes": [p.exitcode for p in procs], "seconds": time.time() - t0}


# ---------------------------------------------------------------------------------------------
# kill: SIGKILL at an exact point of an entry write

def _get_all(cache_dir, specs):
    _use(cache_dir)
    for d in specs:
        cache.get(spec(d))
    os._exit(0)


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(point: str) -> None:
    """Patch os.fdopen / os.replace so this process kills itself at ``point``:
    bin_half / meta_half: after writing half of the .bin / .json temp file (flushed to disk);
    bin_replaced: the .bin is in place, no .json yet;  meta_replaced: both in place."""
    real_fdopen, real_replace = os.fdopen, os.replace
    what, when = point.split("_")

    def fdopen(fd, *a, **k):
        f = real_fdopen(fd, *a, **k)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if when == "half" and name.startswith(".") and f".{what}." in name and name.endswith(".tmp"):
            real_write = f.write

            def write(data):
                real_write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                _die()
            f.write = write
        return f

    def replace(src, dst, *a, **k):
        real_replace(src, dst, *a, **k)
        if when == "replaced" and str(dst).endswith(f".{'bin' if what == 'bin' else 'json'}"):
            _die()

    os.fdopen, os.replace = fdopen, replace


def _kill_child(cache_dir, d, point):
    _use(cache_dir)
    _arm(point)
    cache.get(spec(d))
    os._exit(0)                              # not reached when the point is hit


def kill(args: dict) -> dict:
    out = {}
    for label, point, cache_dir in args["points"]:
        p = CTX.Process(target=_kill_child, args=(cache_dir, args["spec"], point))
        p.start()
        p.join(120)
        out[label] = p.exitcode
    # and once at a random moment, from outside, while a process writes several entries
    p = CTX.Process(target=_get_all, args=(args["random_dir"], args["random_specs"]))
    p.start()
    time.sleep(args["random_delay"])
    os.kill(p.pid, signal.SIGKILL)
    p.join(60)
    out["random"] = p.exitcode
    return out


# ---------------------------------------------------------------------------------------------
# prune: deleters against readers

def _reader(cache_dir, specs, until, seed, queue):
    rng = random.Random(seed)
    seen, reads, errors = {}, 0, []
    logging.getLogger("jitkern").setLevel(logging.ERROR)     # 'broken entry' warnings are expected
    _use(cache_dir)
    while time.time() < until:
        s = spec(rng.choice(specs))
        cache.clear_memory()                                  # every read goes to the disk
        try:
            seen.setdefault(s.uri, set()).add(digest(cache.get(s).binary))
            reads += 1
        except Exception:
            errors.append(traceback.format_exc())
    queue.put({"role": "reader", "reads": reads, "errors": errors, "compiles": cache.stats.compiles,
               "digests": {u: sorted(v) for u, v in seen.items()}})


def _deleter(cache_dir, until, seed, queue):
    from jitkern import cli

    rng = random.Random(seed)
    runs, deleted, errors = 0, 0, []
    _use(cache_dir)
    while time.time() < until:
        argv = rng.choice([["cache", "prune", "--max-size", "0"], ["cache", "prune", "--older-than", "0"],
                           ["cache", "clear", "--yes"], ["cache", "verify", "--fix"], ["cache", "list"]])
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(argv)
        runs += 1
        for line in out.getvalue().splitlines():
            m = re.match(r"deleted (\d+) entries from ", line)                   # cache clear
            deleted += int(m.group(1)) if m else line.startswith("deleted ") or line.endswith("-> deleted")
        if rc != 0 and argv[1] != "verify":      # verify exits 1 while it sees an entry being written
            errors.append(f"{' '.join(argv)} -> {rc}: {err.getvalue()}")
        time.sleep(rng.uniform(0.05, 0.3))          # readers find entries between deletions
    queue.put({"role": "deleter", "runs": runs, "deleted": deleted, "errors": errors})




def prune(args: dict) -> dict:
    d, specs = args["cache_dir"], args["specs"]
    p = CTX.Process(target=_get_all, args=(d, specs))         # a warm cache to start from
    p.start()
    p.join(300)
    until = time.time() + args["seconds"]
    queue = CTX.Queue()
    procs = [CTX.Process(target=_reader, args=(d, specs, until, args["seed"] + i, queue)) for i in range(args["readers"])]
    procs += [CTX.Process(target=_deleter, args=(d, until, args["seed"] + 100 + i, queue)) for i in range(args["deleters"])]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    return {"results": results, "exit_codes": [p.exitcode for p in procs]}


# ---------------------------------------------------------------------------------------------
# fsize: every cache write fails with EFBIG (the disk is "full" for this process)

def _fsize_child(cache_dir, specs, limit, queue):
    _use(cache_dir)
    records = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logging.getLogger("jitkern").addHandler(handler)
    logging.getLogger("jitkern").setLevel(logging.WARNING)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)            # write() then fails with EFBIG
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    real_compile = cache._compile

    def compile_then_fill_disk(*a, **k):                      # the compiler's own temp files are
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))   # not what this test is about
        binary = real_compile(*a, **k)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        return binary

    cache._compile = compile_then_fill_disk
    out = {}
    try:
        for d in specs:
            e = cache.get(spec(d))
            out[e.spec.uri] = [digest(e.binary), e.binary[:4].hex()]
        again = {spec(d).uri: digest(cache.get(spec(d)).binary) for d in specs}   # memory hits
        queue.put({"entries": out, "again": again, "warnings": records, "compiles": cache.stats.compiles})
    except BaseException:
        queue.put({"error": traceback.format_exc(), "warnings": records})


def fsize(args: dict) -> dict:
    queue = CTX.Queue()
    p = CTX.Process(target=_fsize_child, args=(args["cache_dir"], args["specs"], args["limit"], queue))
    p.start()
    res = queue.get(timeout=300)
    p.join(60)
    return {**res, "exit_code": p.exitcode}


if __name__ == "__main__":
    mode, payload = sys.argv[1], json.loads(sys.argv[2])
    result = {"race": race, "kill": kill, "prune": prune, "fsize": fsize}[mode](payload)
    print("RESULT " + json.dumps(result))
