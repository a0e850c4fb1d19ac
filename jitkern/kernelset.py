"""The set of kernels a model needs: from a preset, a Hugging Face folder or a .gguf file.

Shared by `jitkern warmup` and `jitkern inspect --all`.  Kernel lists come from the ops modules
(``kernel_specs`` of ops.gptq, ops.gguf and ops.dense), so warmup compiles exactly what the layers
will ask the cache for.  ops.gguf and ops.dense are optional: imported lazily, reported when absent.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import os
from pathlib import Path

from . import env
from .presets import PRESETS, Linear, ModelError, Quant, apply_overrides, model_dir, preset


def add_source_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    src = p.add_argument_group("model (one of)").add_mutually_exclusive_group(required=required)
    src.add_argument("--preset", metavar="NAME", help=f"built-in model: {', '.join(sorted(PRESETS))}")
    src.add_argument("--model", metavar="DIR", help="Hugging Face model folder (config.json + quantization config)")
    src.add_argument("--gguf", metavar="FILE", help=".gguf file: kernels for each tensor type it holds")
    q = p.add_argument_group("quantization (presets default to GPTQ int4 g128 sym; flags override a folder's config)")
    q.add_argument("--quant", metavar="KIND", help="gptq, awq or gguf-TYPE (e.g. gguf-q4_k)")
    q.add_argument("--bits", type=int, help="weight bits (2, 3, 4, 8)")
    q.add_argument("--group", type=int, help="group size (32, 64, 128; -1 = per column)")
    q.add_argument("--asym", action="store_true", help="asymmetric (zero points)")
    q.add_argument("--act-order", action="store_true", help="GPTQ desc_act / act-order")
    t = p.add_argument_group("target")
    t.add_argument("--arch", help="compile for this target (gfx906, gfx906:sramecc+:xnack-, sm_90...); "
                                   "default: JITKERN_ARCH, else the local GPU")
    t.add_argument("--max-batch", type=int, default=None, metavar="M",
                   help="most rows a decode step sends through a layer: quantized GEMV for 1..min(8, M), "
                        "lm_head GEMV for 1..min(16, M) (default JITKERN_GEMV_MAX_M, 8)")


def max_batch(args) -> int:
    """Passed as max_m to every ops module's kernel_specs; each caps it at its own GEMV limit."""
    m = args.max_batch if args.max_batch is not None else env.gemv_max_m()
    if m < 1:
        raise ModelError(f"--max-batch {m}: expected a positive batch size")
    return m


def target_arch(args) -> str:
    """--arch, else JITKERN_ARCH, else the local GPU; a clear error when there is none."""
    from .arch import parse, resolve

    if args.arch:
        return parse(args.arch).arch
    try:
        return resolve().arch                  # JITKERN_ARCH (named in its error), else the GPU
    except RuntimeError:
        raise ModelError("no GPU found: pass --arch (e.g. --arch gfx906 or --arch sm_90) "
                         "or set JITKERN_ARCH") from None


def _file_id(path: Path, content: bool) -> str:
    try:
        if content:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        st = path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror or e}") from None


def request(args, arch: str) -> dict:
    """What decides the kernel set, cheaply (no torch): the warmup manifest's signature input."""
    req = {k: getattr(args, k) for k in ("preset", "quant", "bits", "group", "asym", "act_order")}
    req.update(arch=arch, max_batch=max_batch(args))
    if args.model:
        root = Path(args.model).expanduser().resolve()
        req["model"] = {n: _file_id(root / n, True) for n in ("config.json", "quantize_config.json",
                                                              "quant_config.json") if (root / n).exists()}
        if not req["model"]:
            raise ModelError(f"cannot read {root / 'config.json'}: No such file or directory")
    if args.gguf:
        path = Path(args.gguf).expanduser().resolve()
        req["gguf"] = [str(path), _file_id(path, False)]
    return req


def optional_ops(name: str):
    """jitkern.ops.<name>, or None if that module does not exist (a broken one still raises)."""
    full = f"jitkern.ops.{name}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as e:
        if e.name == full:
            return None
        raise


def _gguf_ops():
    mod = optional_ops("gguf")
    if mod is None:
        raise ModelError("GGUF kernels are not available in this jitkern (module jitkern.ops.gguf is missing)")
    return mod


def _gptq_group(q: Quant, k: int) -> int:
    return -1 if q.group == -1 or q.group >= k else q.group     # as ops.gptq.variant does


def describe(args) -> str:
    return args.preset or args.model or args.gguf


def collect(args, arch: str) -> tuple[list, list[str], str]:
    """(deduplicated kernel specs, notes for the user, quantization description)."""
    from .ops import gptq

    m = max_batch(args)
    notes: list[str] = []
    specs: list = []
    dense_needed = False
    overrides = dict(quant=args.quant, bits=args.bits, group=args.group, asym=args.asym, act_order=args.act_order)
    if args.gguf:
        shapes, quant_desc = [], None
        types = _gguf_types(args.gguf, notes)
        dense_needed = "dense" in types
        gg = _gguf_ops() if types - {"dense"} else None
        for t in sorted(types - {"dense"}):
            specs += gg.kernel_specs(t, arch, m)
        quant_desc = "gguf " + ", ".join(sorted(types - {"dense"}) or ["(float only)"])
    else:
        if args.preset:
            shapes, base = preset(args.preset), Quant()
        else:
            shapes, base = model_dir(args.model)
            if base is None:
                if not (args.quant or args.bits):
                    raise ModelError(f"{args.model}: no quantization_config in config.json and no "
                                     f"quantize_config.json; pass --quant/--bits to say how it is quantized")
                base = Quant()
        q = apply_overrides(base, **overrides)
        quant_desc = q.describe()
        for lin in shapes:
            if not lin.quantized:
                dense_needed = True
            elif q.method == "gguf":
                specs += _gguf_ops().kernel_specs(q.gguf_type, arch, m)
            else:
                specs += gptq.kernel_specs(q.bits, _gptq_group(q, lin.k), q.sym, q.act_order, arch, m)
    if dense_needed:
        dense = optional_ops("dense")
        if dense is None:
            notes.append("lm_head skipped: fp16 GEMV kernels not available (module jitkern.ops.dense is missing)")
        else:
            specs += dense.kernel_specs(arch, m)
    return list(dict.fromkeys(specs)), notes, quant_desc


def _gguf_types(path: str, notes: list[str]) -> set[str]:
    """The ggml types of the file's 2-D tensors; float ones are served by the dense kernels."""
    from .formats.gguf import FLOAT_TYPES, read_gguf_header
    from .formats.gguf_quants import TYPES

    if not os.access(path, os.R_OK) or not Path(path).is_file():
        raise ModelError(f"cannot read {path}: not a readable file")
    try:
        infos = read_gguf_header(path)
    except Exception as e:
        raise ModelError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    types, unsupported = set(), {}
    for info in infos.values():
        if len(info.shape) != 2:
            continue                                             # norms, biases
        if info.qtype in FLOAT_TYPES:
            types.add("dense")
        elif info.qtype in TYPES:
            types.add(info.qtype)
        else:
            unsupported[info.qtype] = unsupported.get(info.qtype, 0) + 1
    for t, n in sorted(unsupported.items()):
        notes.append(f"{n} tensor(s) of type {t} skipped: jitkern has no {t} kernels")
    return types


__all__ = ["add_source_args", "collect", "request", "target_arch", "max_batch", "Linear", "describe"]
