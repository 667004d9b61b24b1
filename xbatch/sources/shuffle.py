"""Which document comes at each position of a shard's stream: grain's order, vectorized.

grain's ``MapDataset.source(docs)[start:stop].shuffle(seed).repeat(num_epochs)`` yields,
at stream position ``p``, document ``start + index_shuffle(p % n, max_index=n - 1,
seed=(seed + p // n) % 2**32, rounds=4)`` with ``n = stop - start`` (grain's
``ShuffleMapDataset`` reseeds every epoch). Without shuffling it is ``start + p % n``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import kernels
from .._checks import describe

SHUFFLE_ROUNDS = 4  # grain's MapDataset.shuffle


def even_split(num_documents: int, shard_index: int, shard_count: int) -> tuple[int, int]:
    """[start, stop) of shard ``shard_index`` of ``shard_count``: grain's ``even_split``
    (``drop_remainder=False``): the first ``num_documents % shard_count`` shards get one
    document more."""
    per_shard, remainder = divmod(num_documents, shard_count)
    start = per_shard * shard_index + min(shard_index, remainder)
    stop = per_shard * (shard_index + 1) + min(shard_index + 1, remainder)
    return start, stop


def document_order(positions: Any, *, start: int, stop: int, shuffle: bool, seed: int = 0) -> np.ndarray:
    """int64 global document indices at stream ``positions`` of the shard ``[start, stop)``.

    Args:
      positions: int[k] >= 0, positions in the shard's stream (epoch ``p // n``).
      start, stop: the shard's documents, ``0 <= start < stop``.
      shuffle: grain's per-epoch shuffle; else corpus order.
      seed: ``0 <= seed < 2**32``; epoch ``e`` uses ``(seed + e) % 2**32``.
    """
    positions = np.asarray(positions)
    if positions.ndim != 1 or (positions.size and positions.dtype.kind not in "iu"):
        raise TypeError(f"positions: expected a 1-d integer array, got {describe(positions)}")
    positions = positions.astype(np.int64, copy=False)
    n = stop - start
    if n <= 0 or start < 0:
        raise ValueError(f"start, stop: expected 0 <= start < stop, got [{start}, {stop})")
    if positions.size and positions.min() < 0:
        raise ValueError(f"positions: expected positions >= 0, got {positions.min()}")
    epochs, within = np.divmod(positions, n)
    if shuffle:
        # Positions arrive in rising order in practice: one kernel call per epoch present.
        if np.all(epochs[1:] >= epochs[:-1]):
            bounds = [0, *(np.flatnonzero(np.diff(epochs)) + 1).tolist(), positions.size]
            groups = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        else:
            groups = [epochs == epoch for epoch in np.unique(epochs).tolist()]
        for group in groups:
            epoch = int(epochs[group][0])
            within[group] = kernels.index_shuffle(within[group], max_index=n - 1,
                                                  seed=(seed + epoch) % 2**32, rounds=SHUFFLE_ROUNDS)
    within += start
    return within
