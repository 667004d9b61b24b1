"""The kernels in NumPy: the fallback backend and the readable reference.

``xbatch/_kernels.pyx`` implements exactly these names with the same signatures and
results. Inputs here are already validated by :mod:`xbatch.kernels`; call that module,
not this one.

Placement follows grain's packers (``grain.experimental.FirstFitPackIterDataset`` /
``BestFitPackIterDataset``) bit for bit: an item of lengths ``l[f]`` fits bin ``b`` when
``used[f, b] + l[f] <= capacity[f]`` for every feature ``f`` and the bin holds fewer than
``max_items_per_bin`` items; after placement ``used[f, b]`` rounds up to a multiple of
``alignment[f]``.
"""

from __future__ import annotations

import numpy as np

from . import _checks

NO_BIN = -1


def _round_up(values: np.ndarray, alignments: np.ndarray) -> np.ndarray:
    return (values + alignments - 1) // alignments * alignments


class BinPacker:
    """Online placement of items into ``num_bins`` bins over ``F`` features.

    Args:
      capacities: int64[F], cells per bin for each feature (> 0).
      alignments: int64[F], a feature's next free cell rounds up to a multiple (>= 1).
      num_bins: number of bins (>= 1).
      max_items_per_bin: cap on items per bin; 0 means no cap.
      best_fit: place into the fitting bin with the most used cells (summed over
        features; ties to the lowest index) instead of the first fitting bin.

    An item fits bin ``b`` when ``lengths[f] <= room[f, b]`` for every feature, where
    ``room`` is the free cells ``capacity - used`` of a bin below the item cap. A bin at
    the cap takes nothing under first fit (room -1); under best fit grain adds the
    capacity to its used cells, so it still takes an item whose lengths and whose used
    cells are all zero (room ``-used``). Keeping ``room`` up to date makes a placement a
    few vector operations over the bins.
    """

    def __init__(self, capacities, alignments, num_bins, max_items_per_bin, best_fit):
        self.capacities = np.array(capacities, dtype=np.int64)
        self.alignments = np.array(alignments, dtype=np.int64)
        self.num_bins = int(num_bins)
        self.max_items_per_bin = int(max_items_per_bin)
        self.best_fit = bool(best_fit)
        self.num_features = len(self.capacities)
        self._capacity_list = self.capacities.tolist()
        self._alignment_list = self.alignments.tolist()
        self.reset()

    def reset(self) -> None:
        """Empties every bin."""
        self._used = np.zeros((self.num_features, self.num_bins), dtype=np.int64)
        self._room = np.repeat(self.capacities[:, None], self.num_bins, axis=1)
        self._scores = np.zeros(self.num_bins, dtype=np.int64)  # used cells, all features
        self._counts = np.zeros(self.num_bins, dtype=np.int64)
        self._num_used_bins = 0

    @property
    def used(self) -> np.ndarray:
        """int64[F, num_bins]: next free cell of each bin per feature (a copy)."""
        return self._used.copy()

    @property
    def counts(self) -> np.ndarray:
        """int64[num_bins]: items held by each bin (a copy)."""
        return self._counts.copy()

    @property
    def num_used_bins(self) -> int:
        """Bins holding at least one item; they are always bins ``0 .. n-1``."""
        return self._num_used_bins

    def _find_bin(self, lengths: list[int]) -> int:
        fits = self._room[0] >= lengths[0]
        for f in range(1, self.num_features):
            fits &= self._room[f] >= lengths[f]
        if self.best_fit:
            bin_index = int(np.argmax(np.where(fits, self._scores, -1)))
        else:
            bin_index = int(np.argmax(fits))
        return bin_index if fits[bin_index] else NO_BIN

    def _put(self, lengths: list[int], b: int) -> None:
        self._counts[b] += 1
        full = 0 < self.max_items_per_bin <= self._counts[b]
        for f in range(self.num_features):
            alignment = self._alignment_list[f]
            used = (int(self._used[f, b]) + lengths[f] + alignment - 1) // alignment * alignment
            self._used[f, b] = used
            if not full:
                self._room[f, b] = self._capacity_list[f] - used
            else:
                self._room[f, b] = -used if self.best_fit else -1
        self._scores[b] = self._used[:, b].sum()
        self._num_used_bins = max(self._num_used_bins, b + 1)

    def _valid(self, lengths: list[int]) -> bool:
        return len(lengths) == self.num_features and all(
            0 <= n <= c for n, c in zip(lengths, self._capacity_list)
        )

    def place_one(self, lengths) -> int:
        """Places one item (a sequence of F lengths); returns its bin, or -1 if none fits."""
        if not (type(lengths) is tuple and all(type(n) is int for n in lengths)):
            lengths = np.asarray(lengths).reshape(-1).tolist()  # the packers' tuples skip this
        if not (self._valid(lengths) and all(isinstance(n, int) for n in lengths)):
            _checks.raise_bad_item(lengths, self.capacities)
        bin_index = self._find_bin(lengths)
        if bin_index != NO_BIN:
            self._put(lengths, bin_index)
        return bin_index

    def place(self, lengths: np.ndarray, out_bins: np.ndarray) -> int:
        """Places items in order until one fits no bin.

        Args:
          lengths: int64[n, F], C-contiguous.
          out_bins: int64[n]; ``out_bins[i]`` receives item ``i``'s bin.

        Returns:
          How many items were placed (a prefix of ``lengths``).

        Raises:
          ValueError: at the first item with a length outside ``0..capacity`` (an item
            no empty bin takes), after placing the items before it -- as grain does.
        """
        _checks.check_place_args(lengths, out_bins, self.capacities)
        for i in range(lengths.shape[0]):
            item = lengths[i].tolist()  # per item: a call may place few of many items
            if not self._valid(item):
                _checks.raise_bad_item_at(i, lengths, self.capacities)
            bin_index = self._find_bin(item)
            if bin_index == NO_BIN:
                return i
            self._put(item, bin_index)
            out_bins[i] = bin_index
        return lengths.shape[0]


def item_starts(lengths: np.ndarray, bins: np.ndarray, alignment: int, num_bins: int):
    """Where each item starts in its bin and its 1-based segment id there.

    Items are laid out in order: an item starts at its bin's next free cell, which after
    each item rounds up to a multiple of ``alignment``.

    Returns:
      (starts int64[n], segment_ids int64[n], ends int64[num_bins]) where ``ends`` is each
      bin's next free cell after the last item.
    """
    n = len(lengths)
    aligned = _round_up(lengths.astype(np.int64), np.int64(alignment))
    order = np.argsort(bins, kind="stable")
    sorted_bins = bins[order]
    cumulative = np.cumsum(aligned[order])
    group_first = np.ones(n, dtype=bool)
    group_first[1:] = sorted_bins[1:] != sorted_bins[:-1]
    first_index = np.maximum.accumulate(np.where(group_first, np.arange(n), 0))
    before_group = np.where(first_index > 0, cumulative[first_index - 1], 0) if n else cumulative
    starts = np.empty(n, dtype=np.int64)
    starts[order] = cumulative - aligned[order] - before_group
    segment_ids = np.empty(n, dtype=np.int64)
    segment_ids[order] = np.arange(n) - first_index + 1
    ends = np.zeros(num_bins, dtype=np.int64)
    np.add.at(ends, bins, aligned)
    return starts, segment_ids, ends


def _item_cells(lengths, bins, alignment, rows, row_length):
    """(flat cell of each item's first token, segment ids, failed item index or -1)."""
    starts, segment_ids, _ = item_starts(lengths, bins, alignment, rows)
    # An aligned end may pass the row by alignment padding only; real tokens may not.
    overflow = np.flatnonzero(starts + lengths > row_length)
    if overflow.size:
        return None, None, int(overflow[0])
    return bins * row_length + starts, segment_ids, -1


def _token_cells(first_cells, lengths):
    """Flat cell of every token: its item's first cell plus its offset in the item."""
    source_starts = np.cumsum(lengths) - lengths
    return np.repeat(first_cells - source_starts, lengths) + np.arange(int(lengths.sum()))


def _assign(out, cells, values):
    """``out`` viewed as [rows * row_length, ...] gets ``values`` at ``cells``."""
    if out.flags.c_contiguous:
        out.reshape(-1, *out.shape[2:])[cells] = values
    else:
        out[cells // out.shape[1], cells % out.shape[1]] = values


def pack_rows(lengths, bins, alignment, out_segment_ids, out_positions):
    """Writes every cell of the rows: 1-based segment ids and per-item positions of the
    placed items, 0 wherever no item lies.

    Args:
      lengths: int64[n] item lengths (tokens), in placement order.
      bins: int64[n] each item's row, in ``[0, rows)``.
      alignment: an item's start rounds up to a multiple of this (cells).
      out_segment_ids, out_positions: int32[rows, row_length].

    Returns:
      -1 on success, else the index of the first item that does not fit its row (nothing
      is written then).
    """
    first_cells, segment_ids, failed = _item_cells(lengths, bins, alignment, *out_segment_ids.shape)
    if failed >= 0:
        return failed
    cells = _token_cells(first_cells, lengths)
    out_segment_ids[...] = 0
    out_positions[...] = 0
    _assign(out_segment_ids, cells, np.repeat(segment_ids, lengths))
    _assign(out_positions, cells, cells - np.repeat(first_cells, lengths))
    return -1


def scatter_rows(values, lengths, bins, alignment, out_values, padding):
    """Writes every cell of the rows: the items where they are placed, ``padding`` elsewhere.

    Args:
      values: [sum(lengths), ...] the items' tokens back to back, in placement order.
      lengths, bins, alignment: as for :func:`pack_rows`.
      out_values: [rows, row_length, ...].
      padding: a scalar of ``out_values``' dtype.

    Returns:
      -1 on success, else the index of the first item that does not fit its row.
    """
    first_cells, _, failed = _item_cells(lengths, bins, alignment, *out_values.shape[:2])
    if failed >= 0:
        return failed
    out_values[...] = padding
    _assign(out_values, _token_cells(first_cells, lengths), values)
    return -1


def scatter_item_rows(items, lengths, bins, alignment, out_values, padding):
    """As :func:`scatter_rows`, with each item in its own array of ``items``.

    Every item must be a 1-d C-contiguous array of ``out_values``' dtype and of its
    length. Returns -1 on success, the index of the first item that does not fit its
    row, or ``-2 - i`` when item ``i`` is not such an array.
    """
    if len(items) != len(lengths):
        raise ValueError(f"items: expected {len(lengths)} arrays, one per item, got {len(items)}")
    for i, item in enumerate(items):
        if not (
            type(item) is np.ndarray
            and item.dtype == out_values.dtype
            and item.ndim == 1
            and item.shape[0] == lengths[i]
            and item.flags.c_contiguous
        ):
            return -2 - i
    values = np.concatenate(items) if items else np.zeros(0, out_values.dtype)
    return scatter_rows(values, lengths, bins, alignment, out_values, padding)


def document_borders(segmentation: np.ndarray) -> np.ndarray:
    """bool[B, L]: True at column 0 and wherever the segment id differs from the previous."""
    borders = np.ones(segmentation.shape, dtype=bool)
    np.not_equal(segmentation[:, 1:], segmentation[:, :-1], out=borders[:, 1:])
    return borders


def shift_right(rows: np.ndarray, fill) -> np.ndarray:
    """[B, L] rows moved one cell right along L; column 0 becomes ``fill``."""
    out = np.empty_like(rows)
    out[:, 1:] = rows[:, :-1]
    out[:, :1] = fill
    return out


def shift_left(rows: np.ndarray, fill) -> np.ndarray:
    """[B, L] rows moved one cell left along L; the last column becomes ``fill``."""
    out = np.empty_like(rows)
    out[:, :-1] = rows[:, 1:]
    out[:, -1:] = fill
    return out
