"""Where every piece of a whole corpus goes: the placement that bulk packing and the
packing index share.

No JAX here: the packing index's workers (process pools, Ray) import only this, NumPy
and the kernels, so they start in a fraction of a second.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from .pieces import DECREASING, place_until_full


def place_corpus(lengths: np.ndarray, seq_len: int, algorithm: str, cap: int | None) -> tuple[np.ndarray, int]:
    """(row of every piece, rows) for one window over all pieces, at most ``cap`` per row."""
    num_pieces = lengths.shape[0]
    # Any two rows of a first-/best-fit packing below the cap hold more than seq_len
    # tokens together (the later row's first piece did not fit the earlier row), so at
    # most one of them is half full or less: they never exceed 2 * tokens / seq_len + 1.
    # At most pieces / cap rows are at the cap.
    at_cap = 0 if cap is None else num_pieces // cap
    num_bins = max(1, min(num_pieces, 2 * int(lengths.sum()) // seq_len + 1 + at_cap))
    packer = kernels.BinPacker(seq_len, num_bins=num_bins, max_items_per_bin=cap,
                               algorithm=DECREASING.get(algorithm, algorithm))
    bins = np.empty(num_pieces, dtype=np.int64)
    if algorithm in DECREASING:
        order = np.argsort(-lengths[:, 0], kind="stable")
        sorted_bins = np.empty(num_pieces, dtype=np.int64)
        placed, _ = place_until_full(packer, np.ascontiguousarray(lengths[order]), sorted_bins, 0)
        bins[order] = sorted_bins
    else:
        placed, _ = place_until_full(packer, lengths, bins, 0)
    assert placed == num_pieces, "the row bound above guarantees room for every piece"
    return bins, packer.num_used_bins


def place_windows(lengths: np.ndarray, seq_len: int, num_bins: int, algorithm: str,
                   cap: int | None) -> tuple[np.ndarray, int]:
    """(row of every piece, rows) with grain's windows of ``num_bins`` bins, at most ``cap`` per row."""
    packer = kernels.BinPacker(seq_len, num_bins=num_bins, max_items_per_bin=cap, algorithm=algorithm)
    bins = np.empty(lengths.shape[0], dtype=np.int64)
    start, rows = 0, 0
    while start < lengths.shape[0]:
        stop, _ = place_until_full(packer, lengths, bins, start)
        bins[start:stop] += rows
        rows += packer.num_used_bins
        packer.reset()
        start = stop
    return bins, rows
