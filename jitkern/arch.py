"""Compile targets: parse, validate and detect them.

A target is a full arch string: ``gfx906``, ``gfx906:sramecc+:xnack-`` (AMD, with target features),
``sm_90`` (NVIDIA) or ``compute_75`` (NVIDIA PTX, which the driver compiles when it loads it: it runs on
that compute capability and every newer one, so ``JITKERN_ARCH=compute_75 jitkern selftest`` runs the
kernels' CUDA-core builds, the ones closest to gfx906's, on a GPU that has tensor cores).  A GPU
detected at run time is reduced to its bare AMD arch name: a feature-neutral code object loads on every
card of that arch (MI50 reports ``sramecc+``, Radeon VII ``sramecc-``), so one ``jitkern warmup --arch
gfx906`` serves both.  ``JITKERN_ARCH`` or ``arch=`` pins features.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from . import env

_AMD = re.compile(r"^gfx[0-9]{3,4}[a-f]?(:(sramecc|xnack)[+-])*$")
_NVIDIA = re.compile(r"^(sm|compute)_[0-9]{2,3}[af]?$")


@dataclass(frozen=True)
class Target:
    arch: str

    def __post_init__(self):
        if not (_AMD.match(self.arch) or _NVIDIA.match(self.arch)):
            raise ValueError(f"arch {self.arch!r}: expected an AMD target such as 'gfx906' or "
                             f"'gfx906:sramecc+:xnack-', or an NVIDIA one such as 'sm_90' or 'compute_75' (PTX)")

    @property
    def vendor(self) -> str:
        return "amd" if self.arch.startswith("gfx") else "nvidia"

    @property
    def base(self) -> str:
        return self.arch.split(":")[0]

    @property
    def wave(self) -> int:
        # gfx9 (GCN/CDNA) is wave64 only; RDNA (gfx10+) compiles wave32 by default.
        if self.vendor == "amd":
            return 64 if self.base.startswith("gfx9") else 32
        return 32

    @property
    def sm(self) -> int:
        """NVIDIA compute capability as an int (90 for sm_90); 0 for AMD."""
        return int(re.sub(r"\D", "", self.arch)) if self.vendor == "nvidia" else 0

    @property
    def short(self) -> str:
        """The arch as used in readable names: 'gfx906', 'gfx906-sramecc+-xnack-', 'sm90', 'compute75'."""
        return self.arch.replace(":", "-").replace("sm_", "sm").replace("compute_", "compute")


def parse(arch: str) -> Target:
    return Target(arch.strip())


def device_arch(device=None) -> str:
    """The arch of a torch CUDA/HIP device (features dropped on AMD, see the module docstring)."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("no GPU visible to torch; set JITKERN_ARCH (e.g. gfx906) to compile for one")
    props = torch.cuda.get_device_properties(torch.device("cuda", torch.cuda.current_device())
                                             if device is None else device)
    if getattr(torch.version, "hip", None):
        return props.gcnArchName.split(":")[0]
    return f"sm_{props.major}{props.minor}"


def resolve(arch: str | None = None, device=None) -> Target:
    """arch= argument, else JITKERN_ARCH, else the GPU's."""
    override = env.arch_override() if arch is None else None
    if override:
        try:
            return parse(override)
        except ValueError as e:
            raise ValueError(f"JITKERN_ARCH: {e}") from None
    return parse(arch or device_arch(device))
