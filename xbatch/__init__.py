"""xbatch: packs tokenized documents into fixed-shape LLM batches for JAX and grain.

``xbatch.BACKEND`` tells which kernels run: ``"cython"`` (compiled) or ``"numpy"`` (the
fallback). The kernels need only NumPy; ``xbatch.batch`` needs JAX and
``xbatch.grain_batch_rampup`` / ``xbatch.packing`` need grain. They are imported on
first use so that ``import xbatch`` stays light. A bad ``XBATCH_BACKEND`` is an
``ImportError`` on first use of the kernels (reading ``xbatch.BACKEND`` included), not at
``import xbatch``, so that ``xbatch info`` can always say what is wrong.
"""

from importlib import import_module
from typing import Any

from . import _backend

__version__ = "0.1.0"
__all__ = ["BACKEND", "__version__", "batch", "grain_batch_rampup", "kernels", "packing"]

_SUBMODULES = {"batch", "grain_batch_rampup", "kernels", "packing"}


def __getattr__(name: str) -> Any:
    if name == "BACKEND":  # raises the ImportError of a bad XBATCH_BACKEND
        _backend.check()
        return _backend.BACKEND
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'xbatch' has no attribute {name!r}")
