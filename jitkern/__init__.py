"""jitkern: quantized LLM kernels for AMD gfx906, compiled at run time (hiprtc; NVRTC on NVIDIA).

Importing jitkern touches no GPU and needs neither hip-python nor cuda-bindings.
"""
__version__ = "0.1.0"

import logging as _logging
import os as _os

_logging.getLogger("jitkern").setLevel(_os.environ.get("JITKERN_LOG", "WARNING").upper())

from .spec import KernelSpec  # noqa: E402
from .compiler import CompileError, BackendMissing  # noqa: E402
from .nn import QuantLinear, quant_linear  # noqa: E402
