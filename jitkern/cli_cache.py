"""`jitkern cache list | verify | clear | prune`: look after the disk cache.

Deleting is safe while other processes use the cache: under the entry's per-key lock (the one
``cache.get`` holds while it builds), the ``.json`` marker goes first, so a reader sees a plain miss
(or, if it was already past the marker, a broken entry, which ``cache.read_entry`` treats as a miss
and rebuilds), then the binary.  Lock files stay: deleting one while a process waits on it would let
two processes hold "the" lock; they are empty.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import filelock

from . import env

EXAMPLES = """\
Examples:
  jitkern cache list                        # kernel name, size, age of every entry
  jitkern cache list --json
  jitkern cache verify                      # re-check every binary's digest
  jitkern cache verify --fix                # and delete the broken ones (rebuilt on next use)
  jitkern cache prune --older-than 30       # entries created more than 30 days ago
  jitkern cache prune --max-size 500        # oldest first until the cache is <= 500 MB
  jitkern cache clear --yes
"""
LOCK_TIMEOUT_S = 60
TMP_MAX_AGE_S = 3600          # a writer's temp file older than this was left by a crashed process


@dataclass
class Item:
    dir: Path
    stem: str                 # the key's first 32 hex digits
    meta: dict | None         # None: binary without marker (being written, or a crashed write)
    size: int
    created: float

    @property
    def uri(self) -> str:
        return self.dir.name

    def path(self, suffix: str) -> Path:
        return self.dir / f"{self.stem}{suffix}"


def root() -> Path:
    from .cache import root as cache_root

    return cache_root()


def entries() -> list[Item]:
    items = []
    base = root()
    if not base.is_dir():
        return items
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        for b in sorted(d.glob("*.bin")):
            j = b.with_suffix(".json")
            meta = None
            try:
                st = b.stat()
            except FileNotFoundError:                    # removed since the listing (a concurrent prune)
                continue
            size, created = st.st_size, st.st_mtime
            try:
                if j.exists():
                    size += j.stat().st_size
                    meta = json.loads(j.read_text())
                    created = float(meta.get("created", created))
            except (OSError, ValueError, TypeError):
                meta = meta or {}                        # unreadable marker: verify reports it
            items.append(Item(d, b.stem, meta, size, created))
    return items


def delete(item: Item, still=lambda item: True) -> bool:
    """Delete one entry under its lock if `still(item)` holds once the lock is ours."""
    lock = filelock.FileLock(str(item.path(".lock")), timeout=LOCK_TIMEOUT_S)
    with lock:
        if not still(item):
            return False
        item.path(".json").unlink(missing_ok=True)      # first: from now on the entry is a miss
        item.path(".bin").unlink(missing_ok=True)
    return True


def _age(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n:
            return f"{seconds / n:.1f}{unit}"
    return f"{seconds:.0f}s"


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def cmd_list(args) -> int:
    now, items = time.time(), entries()
    if args.json:
        print(json.dumps([{"uri": i.uri, "key": i.stem, "size": i.size, "age_s": round(now - i.created, 1),
                           "complete": i.meta is not None, "arch": (i.meta or {}).get("arch")} for i in items],
                         indent=1))
        return 0
    print(f"{root()}: {len(items)} entries, {_size(sum(i.size for i in items))}")
    width = max([len(i.uri) for i in items] + [6])
    for i in items:
        state = "" if i.meta is not None else "  (incomplete)"
        print(f"  {i.uri:<{width}}  {_size(i.size):>10}  {_age(now - i.created):>7}  {i.stem[:12]}{state}")
    return 0


class _Capture(logging.Handler):
    """cache.read_entry logs why an entry is broken; keep the reason instead of printing it."""

    def __init__(self):
        super().__init__()
        self.reason = ""

    def emit(self, record):
        self.reason = str(record.args[-1]) if record.args else record.getMessage()


def _broken(item: Item) -> str:
    """'' if the entry is intact, else why not."""
    from .cache import read_entry

    if item.meta is None:
        return "no .json marker (incomplete write)"
    log, cap = logging.getLogger("jitkern"), _Capture()
    log.addHandler(cap)
    old, log.propagate = log.propagate, False
    try:
        ok = read_entry(item.path(".bin"), item.path(".json"), item.meta.get("key")) is not None
    finally:
        log.removeHandler(cap)
        log.propagate = old
    return "" if ok else (cap.reason or "unreadable")


def cmd_verify(args) -> int:
    items = entries()
    broken = [(i, why) for i in items if (why := _broken(i))]
    for i, why in broken:
        fixed = args.fix and delete(i, still=lambda it: bool(_broken(it)))
        print(f"BROKEN {i.uri}/{i.stem}: {why}{'  -> deleted' if fixed else ''}")
    print(f"{len(items)} entries checked, {len(broken)} broken{', deleted' if args.fix and broken else ''}")
    return 1 if broken and not args.fix else 0


def cmd_clear(args) -> int:
    items = entries()
    if not args.yes:
        raise RuntimeError(f"this deletes all {len(items)} entries under {root()}; add --yes to confirm")
    n = sum(delete(i) for i in items)
    shutil.rmtree(env.cache_dir() / "warmup", ignore_errors=True)   # manifests of the warmup fast path
    print(f"deleted {n} entries from {root()}")
    return 0


def cmd_prune(args) -> int:
    if args.older_than is None and args.max_size is None:
        raise ValueError("prune needs --older-than DAYS and/or --max-size MB")
    for flag, value in (("--older-than", args.older_than), ("--max-size", args.max_size)):
        if value is not None and not value >= 0:          # a negative limit would delete everything
            raise ValueError(f"{flag} {value:g}: expected a number >= 0")
    now = time.time()
    items = sorted(entries(), key=lambda i: i.created)          # oldest first
    doomed = []
    if args.older_than is not None:
        doomed = [i for i in items if now - i.created > args.older_than * 86400]
    if args.max_size is not None:
        total = sum(i.size for i in items) - sum(i.size for i in doomed)
        for i in items:
            if total <= args.max_size * (1 << 20):
                break
            if i not in doomed:
                doomed.append(i)
                total -= i.size
    for i in doomed:
        if not args.dry_run:
            delete(i, still=_not_rebuilt)
        print(f"{'would delete' if args.dry_run else 'deleted'} {i.uri}/{i.stem[:12]}  "
              f"{_size(i.size)}  {_age(now - i.created)}")
    _remove_stale_temp_files(now, args.dry_run)
    print(f"{len(doomed)} entries, {_size(sum(i.size for i in doomed))} "
          f"{'would be ' if args.dry_run else ''}freed")
    return 0


def _not_rebuilt(item: Item) -> bool:
    """False for an entry rebuilt since we listed it (its marker is newer): keep that one."""
    try:
        return float(json.loads(item.path(".json").read_text()).get("created", 0)) <= item.created
    except (OSError, ValueError, TypeError):
        return True


def _remove_stale_temp_files(now: float, dry_run: bool) -> None:
    base = root()
    for tmp in base.glob("*/.*.tmp") if base.is_dir() else []:
        try:
            if now - tmp.stat().st_mtime > TMP_MAX_AGE_S and not dry_run:
                tmp.unlink()
        except OSError:
            pass


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="list, verify, prune or clear the kernel cache",
                       description=__doc__.splitlines()[0], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    cs = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    c = cs.add_parser("list", help="entries by kernel name, size, age", epilog=EXAMPLES, formatter_class=fmt)
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(run=cmd_list)
    c = cs.add_parser("verify", help="re-check every entry's digest", epilog=EXAMPLES, formatter_class=fmt)
    c.add_argument("--fix", action="store_true", help="delete broken entries (they are rebuilt on next use)")
    c.set_defaults(run=cmd_verify)
    c = cs.add_parser("clear", help="delete every entry", epilog=EXAMPLES, formatter_class=fmt)
    c.add_argument("--yes", "-y", action="store_true", help="really delete")
    c.set_defaults(run=cmd_clear)
    c = cs.add_parser("prune", help="delete old entries, or the oldest down to a size",
                      epilog=EXAMPLES, formatter_class=fmt)
    c.add_argument("--older-than", type=float, metavar="DAYS", help="delete entries created more than DAYS ago")
    c.add_argument("--max-size", type=float, metavar="MB", help="delete oldest entries until the cache is <= MB")
    c.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    c.set_defaults(run=cmd_prune)
