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


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int if it is an integer >= ``minimum`` (bools are not), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def raise_bad_item(lengths: Any, capacities: np.ndarray) -> None:
    """Raises the error for one item whose lengths do not fit an empty bin."""
    values = np.asarray(lengths).reshape(-1).tolist()
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
