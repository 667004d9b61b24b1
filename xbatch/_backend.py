"""Picks the kernel implementation once, at import.

``XBATCH_BACKEND=numpy`` forces the NumPy fallback; ``XBATCH_BACKEND=cython`` makes a
missing or broken extension an ``ImportError`` that says why; unset prefers the compiled
extension and falls back to NumPy, logging one WARNING line with the reason, the fix and
how much slower the fallback is.

A bad ``XBATCH_BACKEND`` does not break ``import xbatch`` itself, so that ``xbatch info``
can still report it: the ``ImportError`` is raised by the first use of the kernels (any
kernel call, or reading ``xbatch.BACKEND``), and :data:`ERROR` holds it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import _kernels_numpy

if TYPE_CHECKING:  # type checkers read the NumPy twin, which has the same signatures
    from . import _kernels_numpy as _kernels_type  # noqa: F401

LOGGER = logging.getLogger("xbatch")
ENV_VAR = "XBATCH_BACKEND"
BACKENDS = ("cython", "numpy")
# How to get the compiled kernels where they are missing.
FIX = (
    "install a C++ compiler (e.g. apt install g++, or Xcode's command line tools) and reinstall xbatch "
    "from its source tree: pip install --force-reinstall --no-deps ."
)
# From docs/backends.rst ("How much slower is the fallback?"), measured with bench/run.py.
FALLBACK_SLOWDOWN = "about 4-11x slower at packing than the compiled kernels"


def _load_compiled() -> ModuleType:
    # import_module, not "from . import _kernels": while xbatch/__init__ runs, the latter
    # reports a missing extension as "cannot import name ... (most likely due to a
    # circular import)", which misleads.
    return importlib.import_module("xbatch._kernels")


def _why_not_compiled(exc: ImportError, folder: Path = Path(__file__).parent) -> str:
    """Why the extension did not import, in words a user can act on (``folder``: xbatch's)."""
    built = sorted(
        path.name for suffix in importlib.machinery.EXTENSION_SUFFIXES for path in folder.glob(f"_kernels{suffix}")
    )
    if not built:
        return (
            f"the compiled extension xbatch._kernels is not installed in {folder}: it was not built when xbatch "
            "was installed (no working C++ compiler, or XBATCH_NO_EXTENSION=1)"
        )
    return f"the compiled extension {folder / built[0]} does not load: {exc}"


class _Unavailable:
    """Stands in for the kernel module when XBATCH_BACKEND asks for what cannot be had:
    every use raises the ImportError that says why."""

    def __init__(self, error: ImportError):
        self._error = error

    def __getattr__(self, name: str) -> Any:
        raise ImportError(str(self._error))


def _select() -> tuple[str | None, Any, str | None, ImportError | None]:
    """Returns (backend name, kernel module, reason the extension is not used, error)."""
    requested = os.environ.get(ENV_VAR, "").strip().lower()
    if requested not in ("", *BACKENDS):
        error = ImportError(
            f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not a backend; expected one of {BACKENDS} or unset"
        )
        return None, _Unavailable(error), str(error), error
    if requested == "numpy":
        return "numpy", _kernels_numpy, f"{ENV_VAR}=numpy forces the NumPy fallback", None
    try:
        return "cython", _load_compiled(), None, None
    except ImportError as exc:
        reason = _why_not_compiled(exc)
        if requested == "cython":
            error = ImportError(
                f"{ENV_VAR}=cython but {reason}. To fix it, {FIX}; or unset the variable to use the NumPy fallback."
            )
            return None, _Unavailable(error), reason, error
        LOGGER.warning("xbatch: running the NumPy fallback, %s, because %s. To fix it, %s",
                       FALLBACK_SLOWDOWN, reason, FIX)
        return "numpy", _kernels_numpy, reason, None


BACKEND, impl, FALLBACK_REASON, ERROR = _select()


def check() -> None:
    """Raises the ImportError of a bad ``XBATCH_BACKEND`` (see the module docstring)."""
    if ERROR is not None:
        raise ImportError(str(ERROR))


def compiled_module() -> ModuleType | None:
    """The compiled kernel module if it can be imported, else None (for tests and benchmarks)."""
    try:
        return _load_compiled()
    except ImportError:
        return None
