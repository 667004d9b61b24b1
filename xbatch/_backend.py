"""Picks the kernel implementation once, at import.

``XBATCH_BACKEND=numpy`` forces the NumPy fallback; ``XBATCH_BACKEND=cython`` makes a
missing or broken extension an ``ImportError`` that says why; unset prefers the compiled
extension and falls back to NumPy, logging the reason.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import TYPE_CHECKING

from . import _kernels_numpy

if TYPE_CHECKING:  # type checkers read the NumPy twin, which has the same signatures
    from . import _kernels_numpy as _kernels_type  # noqa: F401

LOGGER = logging.getLogger("xbatch")
ENV_VAR = "XBATCH_BACKEND"
BACKENDS = ("cython", "numpy")


def _load_compiled() -> ModuleType:
    from . import _kernels  # type: ignore[attr-defined]

    return _kernels


def _select() -> tuple[str, ModuleType, str | None]:
    """Returns (backend name, kernel module, reason the extension is not used)."""
    requested = os.environ.get(ENV_VAR, "").strip().lower()
    if requested not in ("", *BACKENDS):
        raise ImportError(
            f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not a backend; expected one of {BACKENDS} or unset"
        )
    if requested == "numpy":
        return "numpy", _kernels_numpy, f"{ENV_VAR}=numpy forces the NumPy fallback"
    try:
        return "cython", _load_compiled(), None
    except ImportError as exc:
        reason = f"the compiled extension xbatch._kernels could not be imported: {exc}"
        if requested == "cython":
            raise ImportError(
                f"{ENV_VAR}=cython but {reason}. Reinstall with a working C++ compiler "
                "(pip install . builds it) or unset the variable to use the NumPy fallback."
            ) from exc
        LOGGER.info("xbatch: using the NumPy fallback because %s", reason)
        return "numpy", _kernels_numpy, reason


BACKEND, impl, FALLBACK_REASON = _select()


def compiled_module() -> ModuleType | None:
    """The compiled kernel module if it can be imported, else None (for tests and benchmarks)."""
    try:
        return _load_compiled()
    except ImportError:
        return None
