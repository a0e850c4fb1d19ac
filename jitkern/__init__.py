"""jitkern: quantized LLM kernels for AMD gfx906, compiled at run time (hiprtc; NVRTC on NVIDIA).

Importing jitkern touches no GPU and needs neither hip-python nor cuda-bindings.  It does not import
torch either: ``KernelSpec`` and the nn layers are loaded on first access (PEP 562), so the CLI's
already-warm path (``jitkern warmup`` with nothing to compile) stays well under a second.
"""
__version__ = "0.1.0"

import logging as _logging
import os as _os

_logging.getLogger("jitkern").setLevel(_os.environ.get("JITKERN_LOG", "WARNING").upper())

from .compiler import CompileError, BackendMissing  # noqa: E402

_LAZY = {"KernelSpec": ".spec", "QuantLinear": ".nn", "quant_linear": ".nn"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    import importlib.util

    if importlib.util.find_spec(f"{__name__}.{name}") is not None:    # `jitkern.cache` after `import jitkern`
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'jitkern' has no attribute {name!r}")


__all__ = ["KernelSpec", "QuantLinear", "quant_linear", "CompileError", "BackendMissing", "__version__"]
