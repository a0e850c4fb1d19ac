"""KernelSpec: the one frozen description of a kernel variant.

It drives rendering (the template context), the cache (readable ``uri``), warmup manifests and error
messages.  Each family (``jitkern.families``) lists the values its template was written for;
anything else is rejected here, before a template ever sees it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from .arch import Target


@dataclass(frozen=True)
class KernelSpec:
    family: str                      # e.g. "gptq_gemv"
    fmt: str                         # weight format: "gptq", "f16", "q4_k", ...
    bits: int = 0                    # weight bits (0: implied by fmt)
    group: int = 0                   # quant group size along K (-1: one group per column; 0: n/a)
    m: int = 1                       # batch rows compiled in (GEMV kernels)
    act: str = "f16"                 # activation dtype
    arch: str = "sm_90"              # full target arch, e.g. "gfx906:sramecc+:xnack-"
    options: tuple = ()              # family switches as sorted (name, value) pairs
    wave: int = field(default=0)     # wave/warp size; derived from arch when 0

    def __post_init__(self):
        target = Target(self.arch)
        if self.wave == 0:
            object.__setattr__(self, "wave", target.wave)
        elif self.wave != target.wave:
            raise ValueError(f"wave={self.wave}: {self.arch} runs wave{target.wave}")
        if isinstance(self.options, dict):
            object.__setattr__(self, "options", tuple(sorted(self.options.items())))
        from .families import get_family

        get_family(self.family).validate(self)

    @property
    def target(self) -> Target:
        return Target(self.arch)

    @property
    def opts(self) -> dict:
        return dict(self.options)

    @property
    def uri(self) -> str:
        """Readable and unique: ``gptq_gemv_w4_g128_m4_f16_actorder_gfx906``."""
        from .families import get_family

        fam = get_family(self.family)
        parts = [self.family]
        if len(fam.fmts) > 1:
            parts.append(self.fmt)
        if self.bits:
            parts.append(f"w{self.bits}")
        if self.group:
            parts.append("gch" if self.group == -1 else f"g{self.group}")
        if len(fam.ms) > 1:
            parts.append(f"m{self.m}")
        parts.append(self.act)
        for name, value in self.options:
            if value is True:
                parts.append(name.replace("_", ""))
            elif value is not False:
                parts.append(f"{name.replace('_', '')}{value}")
        parts.append(self.target.short)
        return "_".join(parts)

    @property
    def key(self) -> str:
        """Content hash of the spec itself (the cache key also hashes the rendered source)."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]

    def with_(self, **changes) -> "KernelSpec":
        if "arch" in changes and "wave" not in changes:
            changes["wave"] = 0          # re-derive for the new target
        return replace(self, **changes)
