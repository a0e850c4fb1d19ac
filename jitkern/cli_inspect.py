"""`jitkern inspect`: what the compiler made of a kernel (registers, LDS, scratch, occupancy, instructions).

AMD numbers come from the code object itself (the NT_AMDGPU_METADATA note; instruction counts from
llvm-objdump when installed), so any AMD target can be inspected on any machine.  NVIDIA cubins are
described by the driver where a GPU loads them, and otherwise by ptxas (the cache's source and
options compiled with -v); PTX targets (compute_XX) need a GPU, as the driver compiles them.
"""
from __future__ import annotations

import argparse
import json

from . import kernelset

EXAMPLES = """\
Examples:
  jitkern inspect --spec gptq_gemv bits=4 group=128 m=1 sym=true --arch gfx906
  jitkern inspect --spec gptq_dequant bits=8 group=-1 act_order=true --arch gfx906 --json
  jitkern inspect --all --preset llama-3-8b --arch gfx906      # every kernel warmup would build
  jitkern inspect --all --model ~/models/Qwen2.5-7B-AWQ --arch sm_90
"""
SPEC_FIELDS = ("fmt", "bits", "group", "m", "act", "wave")
COLUMNS = (("vgprs", "VGPR"), ("sgprs", "SGPR"), ("lds_bytes", "LDS"), ("scratch_bytes", "scratch"),
           ("spills", "spills"), ("waves_per_simd", "waves/SIMD"))


def _value(text: str):
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    try:
        return int(text)
    except ValueError:
        return text


def spec_from_words(words: list[str], arch: str):
    """['gptq_gemv', 'bits=4', 'sym=true', ...] -> KernelSpec; unknown names are family options."""
    from .families import get_family
    from .spec import KernelSpec

    family = get_family(words[0])
    fields, options = {"fmt": family.fmts[0]}, {}
    for word in words[1:]:
        name, sep, raw = word.partition("=")
        if not sep:
            raise ValueError(f"--spec: {word!r} is not NAME=VALUE")
        (fields if name in SPEC_FIELDS else options)[name.replace("-", "_")] = _value(raw)
    return KernelSpec(words[0], arch=arch, options=options, **fields)


def report(spec, objdump: bool = True) -> dict:
    from . import cache

    row = {"uri": spec.uri, "arch": spec.arch}
    if spec.target.vendor == "amd":
        from .inspect import amd_kernel_report, instruction_counts

        entry = cache.get(spec)
        row.update(amd_kernel_report(entry.binary))
        row["instructions"] = None
        if objdump:
            try:
                row["instructions"] = instruction_counts(entry.binary, spec.target.base)
            except FileNotFoundError as e:
                row["note"] = str(e)
        return row
    row.update(_nvidia(spec))
    return row


def _nvidia(spec) -> dict:
    import torch

    if torch.cuda.is_available() and not getattr(torch.version, "hip", None):
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        ptx_loads = spec.arch.startswith("compute_") and 10 * p.major + p.minor >= spec.target.sm
        if f"sm_{p.major}{p.minor}" == spec.arch or ptx_loads:
            from .runtime import get_kernel

            return get_kernel(spec, "cuda").attributes()
    if spec.arch.startswith("compute_"):
        return {"note": f"{spec.arch} is PTX, which the driver compiles: run on a GPU that loads it"}
    from .inspect import nvidia_resources

    return {**nvidia_resources(spec), "note": "from ptxas -v (no GPU of this arch here)"}


def _table(rows: list[dict]) -> None:
    width = max(len(r["uri"]) for r in rows)
    if any("vgprs" in r for r in rows):
        print(f"{'kernel':<{width}}  " + "  ".join(f"{h:>10}" for _, h in COLUMNS))
    notes = set()
    for r in rows:
        if "vgprs" not in r:
            extra = "  ".join(f"{k}={v}" for k, v in r.items() if k not in ("uri", "arch", "note"))
            print(f"{r['uri']:<{width}}  {extra or r.get('note', '')}")
            if extra and "note" in r:
                notes.add(r["note"])
            continue
        print(f"{r['uri']:<{width}}  " + "  ".join(f"{r[k]:>10}" for k, _ in COLUMNS))
        counts = r.get("instructions")
        if counts:
            print(" " * (width + 2) + "  ".join(f"{k}={v}" for k, v in counts.items() if v))
    notes |= {r["note"] for r in rows if "note" in r and "vgprs" in r}
    for note in sorted(notes):
        print(f"note: {note}")


def run(args) -> int:
    arch = kernelset.target_arch(args)
    if args.spec:
        specs = [spec_from_words(args.spec, arch)]
    elif args.all:
        if not (args.preset or args.model or args.gguf):
            raise ValueError("--all needs --preset, --model or --gguf")
        specs = kernelset.collect(args, arch)[0]
    else:
        raise ValueError("say what to inspect: --spec FAMILY [NAME=VALUE ...] or --all --preset NAME")
    rows = [report(s, objdump=not args.no_instructions) for s in specs]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        _table(rows)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="registers, LDS, scratch, occupancy and instruction counts of kernels",
                       description=__doc__.splitlines()[0], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    w = p.add_argument_group("what")
    w.add_argument("--spec", nargs="+", metavar="FAMILY [NAME=VALUE]",
                   help=f"one kernel: a family then fields ({', '.join(SPEC_FIELDS)}) and options (e.g. sym=true)")
    w.add_argument("--all", action="store_true", help="every kernel `jitkern warmup` builds for the model below")
    kernelset.add_source_args(p, required=False)
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="machine-readable output")
    o.add_argument("--no-instructions", action="store_true", help="skip disassembly (llvm-objdump)")
    p.set_defaults(run=run)
