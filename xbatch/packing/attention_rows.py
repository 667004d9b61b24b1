"""The LLM packer's ``attention_metadata=True``: per-row attention metadata on every row.

:class:`AttentionRowsIterator` wraps the packer's iterator of any algorithm. All of them
emit rows as views of one ``[rows, seq_len]`` array per window (or group of rows laid out
together), so the metadata is computed once per such array, in one vectorized
:func:`~xbatch.packing.attention.row_metadata` call, and each row gets views of its row
of the result. Rows that are not such views (none today) get one call each.
"""

from __future__ import annotations

import ctypes
from typing import Any

import grain
import numpy as np

from .attention import row_metadata
from .stats import PackingStats


def _address(array: np.ndarray) -> int:
    """The address of ``array``'s first byte."""
    try:  # ~0.3 us; __array_interface__ builds a dict (~2.5 us), once per row adds up
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except (TypeError, ValueError, BufferError):  # read-only, empty or strided buffers
        return array.__array_interface__["data"][0]


def window_row(value: np.ndarray, base: np.ndarray | None = None) -> int:
    """r when ``value`` is exactly row ``r`` of ``base`` (by default ``value.base``), a
    C-contiguous 2-d array; else -1."""
    base = value.base if base is None else base
    if (not isinstance(base, np.ndarray) or value.base is not base or base.ndim != 2
            or value.shape != base.shape[1:] or value.strides != base.strides[1:] or base.dtype != value.dtype
            or not base.flags.c_contiguous or base.strides[0] == 0):
        return -1
    row, misaligned = divmod(_address(value) - _address(base), base.strides[0])
    return row if not misaligned and 0 <= row < base.shape[0] else -1


class AttentionRowsIterator(grain.DatasetIterator):
    """The rows of ``parent`` (a packer iterator) plus ``seq_lengths`` int32[M] and
    ``seq_offsets`` int32[M + 1] of their ``inputs_segmentation``.

    The state, ``stats`` and the rows themselves are the parent's: restoring gives the
    same rows with the same metadata. The current window's segmentation array is held
    while its rows are emitted (a reference, so the packer's pool does not rewrite it
    under the cached metadata).
    """

    def __init__(self, parent: grain.DatasetIterator, max_segments: int):
        super().__init__(parent)
        self._max_segments = max_segments
        self._base: np.ndarray | None = None
        self._metadata: dict[str, np.ndarray] = {}

    @property
    def stats(self) -> PackingStats:
        """What the rows emitted so far hold (the packer's)."""
        return self._parent.stats

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)
        self._base, self._metadata = None, {}

    def __next__(self) -> dict[str, np.ndarray]:
        row = next(self._parent)
        segmentation = row["inputs_segmentation"]
        base = self._base
        if isinstance(segmentation, np.ndarray) and segmentation.base is base and base is not None:
            # Another row of the current window: only where it lies needs finding.
            index, misaligned = divmod(_address(segmentation) - self._base_address, self._row_bytes)
            if (not misaligned and 0 <= index < base.shape[0] and segmentation.shape == self._row_shape
                    and segmentation.strides == self._row_strides):
                return {**row, **{name: value[index] for name, value in self._metadata.items()}}
        index = window_row(segmentation) if isinstance(segmentation, np.ndarray) else -1
        if index < 0:
            metadata = row_metadata(np.asarray(segmentation)[None], max_segments=self._max_segments)
            return {**row, **{name: value[0] for name, value in metadata.items()}}
        self._base, self._metadata = None, {}  # never keep metadata of a failed call
        base = segmentation.base
        self._metadata = row_metadata(base, max_segments=self._max_segments)
        self._base, self._base_address, self._row_bytes = base, _address(base), base.strides[0]
        self._row_shape, self._row_strides = base.shape[1:], base.strides[1:]
        return {**row, **{name: value[index] for name, value in self._metadata.items()}}
