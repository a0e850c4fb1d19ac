"""Run-time compilers: hiprtc for AMD targets, NVRTC for NVIDIA ones.

Both modules expose the same two functions, ``compile(source, arch, options, name) -> bytes`` and
``fingerprint() -> str``, and import their vendor bindings only when first used, so ``import jitkern``
works with neither installed.  Caching lives in ``jitkern.cache``, not here.
"""
from __future__ import annotations

import importlib


class BackendMissing(RuntimeError):
    """The compiler or driver bindings for a vendor are not installed."""


class CompileError(RuntimeError):
    """A kernel failed to compile.  Carries the compiler log, the source and the options."""

    def __init__(self, name: str, arch: str, log: str, source: str, options: list[str]):
        self.name, self.arch, self.log, self.source, self.options = name, arch, log, source, list(options)
        super().__init__(name, arch, log, source, self.options)

    def __reduce__(self):
        return (type(self), (self.name, self.arch, self.log, self.source, self.options))

    def numbered_source(self) -> str:
        return "\n".join(f"{i:5d}  {line}" for i, line in enumerate(self.source.splitlines(), 1))

    def __str__(self) -> str:
        return (f"compiling {self.name} for {self.arch} failed\n"
                f"options: {' '.join(self.options)}\n"
                f"--- compiler log ---\n{self.log.strip()}\n"
                f"--- source ---\n{self.numbered_source()}")


def for_vendor(vendor: str):
    """The compiler module for 'amd' or 'nvidia'."""
    return importlib.import_module({"amd": ".hiprtc", "nvidia": ".nvrtc"}[vendor], __name__)
