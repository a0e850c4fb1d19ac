"""`jitkern info`: what this machine offers jitkern (GPUs, backends, compilers, cache, settings)."""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json

from . import __version__, env

EXAMPLES = """\
Examples:
  jitkern info
  jitkern info --json
  JITKERN_ARCH=gfx906 jitkern info          # shows the arch kernels would be compiled for
"""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpus() -> dict:
    import torch

    out = {"torch": torch.__version__, "hip": getattr(torch.version, "hip", None),
           "cuda": torch.version.cuda, "devices": []}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            arch = getattr(p, "gcnArchName", "") or f"sm_{p.major}{p.minor}"
            out["devices"].append({"index": i, "name": p.name, "arch": arch,
                                   "memory_gib": round(p.total_memory / 2**30, 1)})
    return out


def _arch() -> str:
    from .arch import resolve

    try:
        return resolve().arch
    except RuntimeError:
        return "none (no GPU; set JITKERN_ARCH or pass --arch to compile for one)"
    except ValueError as e:
        return f"invalid: {e}"


def _compilers() -> dict:
    from .compiler import for_vendor

    out = {}
    for vendor in ("amd", "nvidia"):
        try:
            out[vendor] = for_vendor(vendor).fingerprint()
        except Exception as e:          # BackendMissing, or a library that fails to load
            out[vendor] = f"unavailable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return out


def _cache() -> dict:
    from .cli_cache import entries, root

    items = entries()
    return {"dir": str(env.cache_dir()), "root": str(root()), "entries": len(items),
            "bytes": sum(i.size for i in items)}


def collect() -> dict:
    return {
        "jitkern": __version__,
        "gpus": _gpus(),
        "arch": _arch(),
        "backends": {name: {"installed": _version(dist), "importable": importlib.util.find_spec(mod) is not None}
                     for name, dist, mod in (("hip-python", "hip-python", "hip"),
                                             ("cuda-bindings", "cuda-bindings", "cuda"))},
        "compilers": _compilers(),
        "cache": _cache(),
        "settings": {name: {"value": env.active().get(name), "about": about} for name, about in env.SETTINGS.items()},
    }


def run(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    g = info["gpus"]
    print(f"jitkern {info['jitkern']}  (torch {g['torch']}, HIP {g['hip'] or '-'}, CUDA {g['cuda'] or '-'})")
    print("GPUs:" + ("" if g["devices"] else " none visible to torch"))
    for d in g["devices"]:
        print(f"  [{d['index']}] {d['name']}  {d['arch']}  {d['memory_gib']} GiB")
    print(f"compile target: {info['arch']}")
    print("backends:")
    for name, b in info["backends"].items():
        print(f"  {name:<14} {b['installed'] or 'not installed'}{'' if b['importable'] else ' (not importable)'}")
    print("compilers:")
    for vendor, fp in info["compilers"].items():
        print(f"  {vendor:<14} {fp}")
    c = info["cache"]
    print(f"cache: {c['root']}  {c['entries']} entries, {c['bytes'] / (1 << 20):.1f} MiB")
    print("settings:")
    for name, s in info["settings"].items():
        print(f"  {name:<20} {s['value'] if s['value'] is not None else '(unset)':<12}  {s['about']}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="GPUs, backends, compiler versions, cache and settings",
                       description=__doc__.splitlines()[0], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)
