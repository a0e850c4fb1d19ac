"""Read what a compiled kernel really is: resources from the code object, instruction counts.

AMD code objects are ELF files whose ``NT_AMDGPU_METADATA`` note (type 32, owner "AMDGPU") is a
msgpack map with one entry per kernel (``.vgpr_count``, ``.sgpr_count``, ``.private_segment_fixed_size``
= scratch, ``.group_segment_fixed_size`` = LDS, ``.wavefront_size``); the target triple is in
``amdhsa.target``.  Disassembly (instruction counts) uses ``llvm-objdump`` when one is installed.
NVIDIA cubins are described by the driver (``Kernel.attributes``) on a machine with the GPU, and
anywhere else by ptxas's own report (``ptxas_report``: the kernel compiled with -v).
"""
from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
from collections import Counter

import msgpack
from elftools.elf.elffile import ELFFile

NT_AMDGPU_METADATA = 32
KEY_INSTRUCTIONS = ("v_dot2_f32_f16", "v_dot4_i32_i8", "v_dot8_i32_i4", "global_load_dwordx4",
                    "global_load_dwordx2", "global_load_dword", "buffer_load_dwordx4", "ds_read_b128",
                    "ds_bpermute_b32", "ds_swizzle_b32", "v_perm_b32", "scratch_", "global_atomic")


# ptxas -v: "Used 117 registers, used 1 barriers, 2049 bytes smem" and
# "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads".
PTXAS_FIELDS = {"registers": r"Used (\d+) registers", "shared_bytes": r"(\d+) bytes smem",
                "stack_bytes": r"(\d+) bytes stack frame", "spill_bytes": r"(\d+) bytes spill stores"}


def ptxas_report(log: str) -> dict:
    """Registers, static shared memory, stack and spill bytes from ptxas's -v messages (0 where it
    names none, as ptxas omits smem for kernels without any)."""
    if not re.search(PTXAS_FIELDS["registers"], log):
        raise ValueError(f"no ptxas resource report in the compiler log: {log[:200]!r}")
    found = {name: re.search(pattern, log) for name, pattern in PTXAS_FIELDS.items()}
    return {name: int(m.group(1)) if m else 0 for name, m in found.items()}


def nvidia_resources(spec) -> dict:
    """ptxas_report of an NVIDIA cubin spec: the cache's source and options compiled with -v."""
    from . import cache
    from .compiler import nvrtc

    source, options = cache.build_inputs(spec)
    log: list = []
    nvrtc.compile(source, spec.arch, options + ["--ptxas-options=-v"], log=log)
    return ptxas_report(log[0])


def amdgpu_metadata(code_object: bytes) -> dict:
    """The decoded NT_AMDGPU_METADATA map of an AMD code object."""
    elf = ELFFile(io.BytesIO(code_object))
    for section in elf.iter_sections():
        if section.header.sh_type != "SHT_NOTE":
            continue
        for note in section.iter_notes():
            if note["n_name"] == "AMDGPU" and note["n_type"] in (NT_AMDGPU_METADATA, "NT_AMDGPU_METADATA"):
                desc = note["n_desc"]
                raw = desc if isinstance(desc, (bytes, bytearray)) else bytes(desc, "latin-1")
                return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    raise ValueError("no NT_AMDGPU_METADATA note: not an AMD code object")


def waves_per_simd(vgprs: int, sgprs: int, lds_bytes: int, threads: int, wave: int = 64) -> int:
    """gfx9 occupancy: the least of the VGPR, SGPR and LDS limits (max 10 waves per SIMD)."""
    granule = 4
    v = max(granule, (vgprs + granule - 1) // granule * granule)
    by_vgpr = min(10, 256 // v)
    by_sgpr = 10 if sgprs <= 80 else 9 if sgprs <= 88 else 8 if sgprs <= 100 else 7
    waves_per_group = max(1, (threads + wave - 1) // wave)
    by_lds = 10
    if lds_bytes:
        groups_per_cu = (64 * 1024) // lds_bytes
        by_lds = min(10, groups_per_cu * waves_per_group // 4) if groups_per_cu else 0
    return max(0, min(by_vgpr, by_sgpr, by_lds))


def amd_kernel_report(code_object: bytes) -> dict:
    """Resources of the (single) kernel in a code object, plus the target it was built for."""
    meta = amdgpu_metadata(code_object)
    kernels = meta.get("amdhsa.kernels", [])
    if len(kernels) != 1:
        raise ValueError(f"expected one kernel in the code object, found {len(kernels)}")
    k = kernels[0]
    threads = k.get(".max_flat_workgroup_size", 256)
    report = {
        "target": meta.get("amdhsa.target", ""),
        "name": k[".name"],
        "vgprs": k[".vgpr_count"],
        "sgprs": k[".sgpr_count"],
        "lds_bytes": k[".group_segment_fixed_size"],
        "scratch_bytes": k[".private_segment_fixed_size"],
        "wave": k.get(".wavefront_size", 64),
        "max_threads": threads,
        "spills": k.get(".vgpr_spill_count", 0) + k.get(".sgpr_spill_count", 0),
    }
    report["waves_per_simd"] = waves_per_simd(report["vgprs"], report["sgprs"], report["lds_bytes"],
                                              threads, report["wave"])
    return report


def objdump() -> str | None:
    for name in ("llvm-objdump", "llvm-objdump-18", "llvm-objdump-17", "llvm-objdump-16", "llvm-objdump-15"):
        path = shutil.which(name)
        if path:
            return path
    return None


def disassemble(code_object: bytes, mcpu: str) -> str:
    tool = objdump()
    if tool is None:
        raise FileNotFoundError("llvm-objdump not found (Debian/Ubuntu: apt-get install llvm-15)")
    with tempfile.NamedTemporaryFile(suffix=".co") as f:
        f.write(code_object)
        f.flush()
        return subprocess.run([tool, "-d", f"--mcpu={mcpu}", f.name], check=True,
                              capture_output=True, text=True).stdout


def instruction_counts(code_object: bytes, mcpu: str, names=KEY_INSTRUCTIONS) -> dict:
    """How many times each key instruction (prefix match on the mnemonic) appears."""
    mnemonics = Counter(m.group(1) for m in re.finditer(r"^\s+([a-z_0-9]+)", disassemble(code_object, mcpu), re.M))
    return {name: sum(c for mn, c in mnemonics.items() if mn == name or (name.endswith("_") and mn.startswith(name)))
            for name in names}
