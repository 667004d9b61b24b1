"""Arrays for packed rows, recycled once no emitted row refers to them."""

from __future__ import annotations

import sys

import numpy as np


def _references_when_unused() -> int:
    """``sys.getrefcount`` of an array held only by a list (differs across Pythons)."""
    held = [np.empty(0)]
    return sys.getrefcount(held[0])


class BufferPool:
    """Recycles the arrays of finished windows once no emitted row refers to them.

    Emitted rows are views that keep their window's arrays alive; an array whose only
    reference is this pool is unused and can be rewritten (the kernels write every cell),
    while a fresh multi-MiB array costs a page fault per 4 KiB on first touch. Holds the
    arrays of at most ``max_windows`` windows.
    """

    _UNUSED = _references_when_unused()

    def __init__(self, max_windows: int = 3):
        self._windows: list[list[np.ndarray]] = []
        self._max_windows = max_windows

    def release(self, arrays: list[np.ndarray]) -> None:
        """Offers a finished window's arrays for reuse."""
        self._windows.append(arrays)
        del self._windows[: -self._max_windows]

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An array of ``shape`` and ``dtype`` with undefined contents (a reused one if
        possible): the kernels write every cell."""
        dtype = np.dtype(dtype)
        for arrays in self._windows:
            for i in range(len(arrays)):
                if (
                    arrays[i].shape == shape
                    and arrays[i].dtype == dtype
                    and sys.getrefcount(arrays[i]) == self._UNUSED
                ):
                    return arrays.pop(i)
        return np.empty(shape, dtype)
