"""Argument checks shared across xbatch, so the same mistake gets the same message.

Both kernel backends raise through these, and so do the Python wrappers around them.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def describe(value: Any) -> str:
    """A short description of ``value`` for an error message."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# Largest count or size the kernels take: far enough below 2**63 that a sum of two of
# them, or one rounded up to an alignment, still fits int64.
MAX_SIZE = 2**62


def positive_int(name: str, value: Any, minimum: int = 1, maximum: int = MAX_SIZE) -> int:
    """``value`` as an int if it is an integer in ``minimum..maximum`` (bools are not),
    else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value > maximum:
        raise ValueError(f"{name}: expected an integer in {minimum}..{maximum}, got {value!r}")
    return int(value)


def exact_sum(values: np.ndarray, largest: int) -> int:
    """The sum of int64 ``values``, each known to lie in ``0..largest``, without int64
    wrap-around (NumPy's sum wraps silently)."""
    if values.shape[0] * largest < 2**63:
        return int(values.sum())
    return sum(values.tolist())  # Python ints: exact; only for absurd sizes


def item_lengths(lengths: Any, capacities: np.ndarray) -> tuple[int, ...]:
    """One item's lengths as a tuple of ints in ``0..capacities`` (one per feature), or a
    ValueError. The one check both backends' ``BinPacker.place_one`` apply, so they
    accept and refuse the same arguments: an int (or 0-d integer array) when there is one
    feature, else a sequence or 1-d array of ints; bools and floats are refused."""
    array = lengths if isinstance(lengths, np.ndarray) else None
    if array is None and isinstance(lengths, (int, np.integer)) and not isinstance(lengths, bool):
        values: list = [lengths]
    elif array is not None:
        if array.dtype.kind not in "iu" or array.ndim > 1:
            raise_bad_item(lengths, capacities)
        values = array.reshape(-1).tolist()
    else:
        try:
            values = list(lengths)
        except TypeError:
            raise_bad_item(lengths, capacities)
    if len(values) != len(capacities) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values
    ):
        raise_bad_item(lengths, capacities)
    values = [int(v) for v in values]
    if not all(0 <= v <= c for v, c in zip(values, capacities.tolist())):
        raise_bad_item(values, capacities)
    return tuple(values)


def raise_busy(name: str) -> None:
    raise RuntimeError(
        f"{name}: already in use by another thread; a packer is not thread-safe, "
        "give each thread its own"
    )


def raise_overlap(name: str, other: str) -> None:
    raise ValueError(f"{name}: must not share memory with {other} (pass a copy)")


def raise_internal(where: str) -> None:
    """The compiled kernels' bounds assertion failed: a bug in xbatch, never bad input."""
    raise RuntimeError(
        f"xbatch internal error: {where} stopped before writing out of bounds; please report"
    )


def raise_bad_item(lengths: Any, capacities: np.ndarray) -> None:
    """Raises the error for one item whose lengths do not fit an empty bin."""
    try:
        values = np.asarray(lengths, dtype=object).reshape(-1).tolist()
    except (TypeError, ValueError):
        values = [lengths]
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values):
        raise ValueError(
            f"lengths: expected {len(capacities)} integer lengths (one per feature), got {describe(lengths)}"
        )
    if len(values) != len(capacities):
        raise ValueError(
            f"lengths: expected {len(capacities)} lengths per item (one per feature), got {values}"
        )
    raise ValueError(
        f"lengths: item lengths {values} must lie in 0..capacities {capacities.tolist()} "
        "(an item longer than a bin fits no bin)"
    )


def check_place_args(lengths: Any, out_bins: Any, capacities: np.ndarray) -> None:
    """Checks ``BinPacker.place`` arguments: shapes and dtypes (O(1): no pass over items)."""
    num_features = len(capacities)
    if not (
        isinstance(lengths, np.ndarray)
        and lengths.dtype == np.int64
        and lengths.ndim == 2
        and lengths.shape[1] == num_features
        and lengths.flags.c_contiguous
    ):
        raise ValueError(
            f"lengths: expected a C-contiguous int64 array of shape (items, {num_features}), "
            f"got {type(lengths).__name__} {getattr(lengths, 'shape', '')} {getattr(lengths, 'dtype', '')}"
        )
    if not (
        isinstance(out_bins, np.ndarray)
        and out_bins.dtype == np.int64
        and out_bins.ndim == 1
        and out_bins.shape[0] >= lengths.shape[0]
        and out_bins.flags.c_contiguous
        and out_bins.flags.writeable
    ):
        raise ValueError(
            f"out_bins: expected a writeable C-contiguous int64 array of at least "
            f"{lengths.shape[0]} items, got {type(out_bins).__name__} "
            f"{getattr(out_bins, 'shape', '')} {getattr(out_bins, 'dtype', '')}"
        )


def raise_bad_item_at(index: int, lengths: np.ndarray, capacities: np.ndarray) -> None:
    """Raises the error for item ``index`` of a ``place`` call, outside 0..capacities."""
    raise ValueError(
        f"lengths: item {index} has lengths {lengths[index].tolist()}, outside "
        f"0..capacities {capacities.tolist()} (an item longer than a bin fits no bin); "
        f"the {index} items before it were placed"
    )
