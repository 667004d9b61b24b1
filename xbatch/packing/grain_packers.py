"""grain's ``FirstFitPackIterDataset`` and ``BestFitPackIterDataset``, bit for bit, fast.

Drop-in replacements for ``grain.experimental.FirstFitPackIterDataset`` /
``BestFitPackIterDataset``: same constructor, same rows in the same (shuffled) order, same
keys, dtypes and values, same errors. The difference is the work per element: grain runs
a dozen tree and NumPy operations over all bins for every element; here an element costs
one compiled placement call (``kernels.BinPacker.place_one``, O(log bins)) and a list
append, and each window of ``num_packing_bins`` rows is filled at once by the
``kernels.scatter_rows`` / ``kernels.pack_rows`` kernels.

Window rule (grain's): elements are placed in order; when one fits no bin, the non-empty
bins are emitted as rows (shuffled if asked) and a new window starts with that element.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from jax import tree_util

from .. import kernels
from .._checks import positive_int
from . import checkpoint
from .buffers import BufferPool
from .stats import PackingStats

__all__ = ["BestFitPackIterDataset", "FirstFitPackIterDataset"]

# Version of the iterators' state format (see checkpoint.py); bump it when it changes.
_STATE_VERSION = 1

# grain's wording of the over-long item error, per algorithm.
_TOO_LONG_PREFIX = {
    "first_fit": "Inputs to PackedBatch must be truncated to max length. ",
    "best_fit": "Inputs to packer must be truncated to max length. ",
}


def _prune(shallow: Any, structure: Any) -> Any:
    """``structure`` cut down to the nodes of ``shallow`` (grain's ``map_structure_up_to``)."""
    if isinstance(shallow, (list, tuple)):
        items = [_prune(a, b) for a, b in zip(shallow, structure)]
        return type(shallow)(*items) if hasattr(shallow, "_fields") else type(shallow)(items)
    if isinstance(shallow, dict):
        pruned = {key: _prune(value, structure[key]) for key, value in shallow.items()}
        return pruned if type(shallow) is dict else type(shallow)(pruned)
    return structure


def _leaf_length(value: Any) -> int:
    """Cells an element's feature occupies: its first dimension; a scalar takes 1."""
    return 1 if np.ndim(value) == 0 else len(value)


class _Layout:
    """What the constructor arguments say about features; shared by all iterators.

    Features are the leaves of ``length_struct`` in grain's (jax's) flattening order:
    sorted keys for a dict.
    """

    def __init__(
        self,
        length_struct: Any,
        meta_features: Sequence[str],
        pack_alignment_struct: Any,
        padding_struct: Any,
    ):
        if not isinstance(length_struct, dict):
            raise TypeError(
                "length_struct: expected a dict of feature name -> row length (tokens), "
                f"got {type(length_struct).__name__} {length_struct!r}"
            )
        self.length_struct = length_struct
        paths_and_capacities, self.treedef = tree_util.tree_flatten_with_path(length_struct)
        self.paths = [path for path, _ in paths_and_capacities]
        self.capacities = [int(capacity) for _, capacity in paths_and_capacities]
        self.alignments = (
            [1] * len(self.paths)
            if pack_alignment_struct is None
            else [int(a) for a in tree_util.tree_leaves(pack_alignment_struct)]
        )
        self.paddings = (
            [None] * len(self.paths)
            if padding_struct is None
            else self.treedef.flatten_up_to(padding_struct)
        )
        self.meta_features = tuple(meta_features)
        top_keys = [path[0].key for path in self.paths]
        self.non_sequence_meta = [k for k in self.meta_features if k not in length_struct]
        # Per feature: its top-level key if it gets segment ids and positions, else None.
        self.packed_keys = [None if k in self.meta_features else k for k in top_keys]
        for key, value in length_struct.items():
            if key not in self.meta_features and not tree_util.treedef_is_leaf(
                tree_util.tree_structure(value)
            ):
                raise ValueError(  # grain's message (grain raises it at the first row)
                    f"Failed to extract segment ids for '{key}', which has type"
                    f" {type(value)} rather than np.ndarray. Perhaps it should"
                    " be marked as a meta feature?"
                )
        # Fast path: a flat dict, where an element's features are element[key].
        self.flat_keys = (
            tuple(top_keys) if all(len(path) == 1 for path in self.paths) else None
        )

    def lengths(self, element: Any) -> tuple[int, ...]:
        """Lengths of an element's features, checked like grain (the slow, general path)."""
        return tuple(_leaf_length(v) for v in self.leaves(element))

    def leaves(self, element: Any) -> list:
        """An element's features in flattening order; grain's error if the structure differs."""
        packable = _prune(self.length_struct, element)
        leaves, treedef = tree_util.tree_flatten(packable)
        if treedef != self.treedef:
            raise ValueError(
                f"Structures are not the same: a = {treedef}, b = {self.treedef}"
            )
        return leaves

    def too_long_error(self, algorithm: str, lengths: Sequence[int]) -> ValueError:
        details = [
            (self.paths[i], int(length), self.capacities[i])
            for i, length in enumerate(lengths)
            if length > self.capacities[i]
        ]
        return ValueError(
            _TOO_LONG_PREFIX[algorithm]
            + f"Exceeds: (feature_path, feature_length, max_length) = {details}"
        )


class _PackedWindow:
    """One window's rows, built at once from the elements placed into its bins.

    Args:
      items: the window's elements, in placement order.
      lengths: their lengths, flattened: ``num_features`` per item.
      bins: each item's bin (row).
      rows: number of non-empty bins (bins ``0 .. rows-1``).
      pool: where the window's arrays come from.
    """

    def __init__(
        self, layout: _Layout, items: list, lengths: list, bins: list, rows: int, pool: BufferPool
    ):
        bins_array = np.array(bins, dtype=np.int64)
        lengths_array = np.array(lengths, dtype=np.int64).reshape(len(items), -1)
        if layout.flat_keys is not None:
            columns = [[item[key] for item in items] for key in layout.flat_keys]
        else:
            columns = list(zip(*(layout.leaves(item) for item in items)))
        values, segment_ids, positions = [], {}, {}
        for f, column in enumerate(columns):
            buffer = self._new_buffer(pool, column[0], rows, layout.capacities[f])
            feature_lengths = np.ascontiguousarray(lengths_array[:, f])
            alignment = layout.alignments[f]
            kernels.scatter_rows(
                column,
                feature_lengths,
                bins_array,
                buffer,
                alignment=alignment,
                padding=layout.paddings[f],
            )
            values.append(buffer)
            key = layout.packed_keys[f]
            if key is not None:
                segment_ids[key] = pool.empty((rows, layout.capacities[f]), np.int32)
                positions[key] = pool.empty((rows, layout.capacities[f]), np.int32)
                kernels.pack_rows(
                    feature_lengths,
                    bins_array,
                    segment_ids[key],
                    positions[key],
                    alignment=alignment,
                )
        # Assemble exactly as grain does: values (jax key order), non-sequence meta
        # features, then segment ids and positions of every non-meta key.
        batch = layout.treedef.unflatten(values)
        for key in layout.non_sequence_meta:
            per_row = [[] for _ in range(rows)]
            for item, b in zip(items, bins):
                per_row[b].append(item[key])
            batch[key] = np.empty(rows, dtype=object)
            for r, row_values in enumerate(per_row):
                batch[key][r] = row_values
        for key in list(batch):
            if key in segment_ids:
                batch[f"{key}_segment_ids"] = segment_ids[key]
                batch[f"{key}_positions"] = positions[key]
        self.batch = batch
        self.arrays = values + list(segment_ids.values()) + list(positions.values())
        self.rows = rows
        self.items_per_row = np.bincount(bins_array, minlength=rows)
        self.tokens_per_row = np.bincount(
            bins_array, weights=lengths_array[:, 0], minlength=rows
        ).astype(np.int64)

    @staticmethod
    def _new_buffer(pool: BufferPool, first: Any, rows: int, capacity: int) -> np.ndarray:
        """[rows, capacity, ...] to be written whole; dtype and trailing shape from the
        window's first element (grain's rule: a Python int is int64)."""
        if np.ndim(first) == 0:
            trailing, dtype = (), np.int64 if isinstance(first, int) else np.asarray(first).dtype
        else:
            trailing, dtype = first.shape[1:], first.dtype
        return pool.empty((rows, capacity, *trailing), dtype)

    def row_order(self, seed: int | None, group_by_feature: str | None) -> list:
        """The order rows are emitted in: as packed, or grain's shuffle for ``seed``."""
        if seed is None:
            return list(range(self.rows))
        order = np.random.default_rng(seed).permuted(range(self.rows))
        if group_by_feature is None:
            return order.tolist()
        unique_groups_in_row = [np.unique(row) for row in self.batch[group_by_feature]]
        average_group_per_row = [
            np.nan_to_num(np.sum(s) / np.count_nonzero(s), nan=0.0)
            for s in unique_groups_in_row
        ]
        keyed = [(average_group_per_row[i], order[i], i) for i in range(self.rows)]
        return [t[2] for t in sorted(keyed)]  # by average group, then shuffled position

    def emit(self, order: list) -> list:
        """Rows ``order`` as grain emits them: per row, every array's row (a view)."""
        leaves, treedef = tree_util.tree_flatten(self.batch)
        if type(self.batch) is dict and treedef.num_leaves == len(self.batch):
            keys = sorted(self.batch)  # jax's order for a flat dict, built faster
            return [dict(zip(keys, [leaf[r] for leaf in leaves])) for r in order]
        return [treedef.unflatten([leaf[r] for leaf in leaves]) for r in order]

    def add_stats(self, stats: PackingStats, rows: list, capacity: int) -> None:
        """Adds rows ``rows`` of this window to ``stats``; ``capacity`` is cells per row."""
        items = int(self.items_per_row[rows].sum())
        stats.rows += len(rows)
        stats.documents += items
        stats.pieces += items
        stats.tokens += int(self.tokens_per_row[rows].sum())
        stats.capacity += len(rows) * capacity


class _PackDatasetIterator(grain.DatasetIterator):
    """Packs the parent's elements window by window; see the module docstring.

    State: ``{"parent", "skip", "next_row", "counter", "stats"}`` and the dataset's
    arguments with a format version (:mod:`xbatch.packing.checkpoint`). Restoring checks
    the arguments (a ValueError names any that differ), sets the parent to ``parent``,
    pulls and discards ``skip`` elements (which puts it right before the first element of
    the current window), rebuilds the window and resumes at ``next_row``. The parent's
    state is read once per window, not once per element as grain does.
    """

    def __init__(self, parent: grain.DatasetIterator, dataset: _PackIterDataset):
        super().__init__(parent)
        self._layout = dataset._layout
        self._algorithm = dataset._algorithm
        self._seed = dataset._seed
        self._shuffle_bins = dataset._shuffle_bins
        self._group_by_feature = dataset._shuffle_bins_group_by_feature
        self._arguments = dataset._arguments
        self._name = type(dataset).__name__
        self._packer = kernels.BinPacker(
            self._layout.capacities,
            num_bins=dataset._num_packing_bins,
            alignments=self._layout.alignments,
            max_items_per_bin=dataset._max_sequences_per_bin,
            algorithm=self._algorithm,
        )
        self._finished_windows_stats = PackingStats()
        self._pool = BufferPool()
        self._counter = 0  # rows emitted so far, all windows; seeds the shuffle
        self._restart(self._parent.get_state(), 0, next_row=0)

    @property
    def stats(self) -> PackingStats:
        """A snapshot of the rows emitted, items packed and fill ratio (first feature)."""
        stats = dataclasses.replace(self._finished_windows_stats)
        if self._window is not None:
            emitted = self._order[self._first_row : self._next_row]
            self._window.add_stats(stats, emitted, self._layout.capacities[0])
        return stats

    def _restart(self, parent_state: Any, skip: int, next_row: int) -> None:
        self._window: _PackedWindow | None = None
        self._pending = None  # (element, lengths) that started the next window
        self._packer.reset()
        self._window_start = (parent_state, skip)
        self._next_start = None
        self._next_row = next_row

    def get_state(self) -> dict[str, Any]:
        parent_state, skip = self._window_start
        state = {
            "parent": parent_state,
            "skip": skip,
            "next_row": self._next_row,
            "counter": self._counter,
            "stats": dataclasses.asdict(self.stats),
        }
        return checkpoint.record_arguments(state, self._arguments, packer=self._name,
                                           version=_STATE_VERSION)

    def set_state(self, state: dict[str, Any]) -> None:
        checkpoint.check_arguments(state, self._arguments, packer=self._name,
                                   version=_STATE_VERSION)
        self._parent.set_state(state["parent"])
        for _ in range(state["skip"]):
            next(self._parent)
        self._restart(state["parent"], state["skip"], next_row=state["next_row"])
        self._counter = state["counter"]
        # Rows of the window emitted before the save are in these; the rebuilt window
        # counts from next_row on.
        self._finished_windows_stats = PackingStats(**state["stats"])

    def __next__(self) -> Any:
        if self._window is None:
            self._start_window()
        row = self._rows[self._next_row]
        self._next_row += 1
        self._counter += 1
        if self._next_row == self._window.rows:
            self._window.add_stats(
                self._finished_windows_stats,
                self._order[self._first_row :],
                self._layout.capacities[0],
            )
            self._pool.release(self._window.arrays)
            self._window = self._rows = None
            self._window_start = self._next_start
            self._next_row = 0
        return row

    def _start_window(self) -> None:
        window = self._fill_window()
        seed = self._seed + self._counter - self._next_row if self._shuffle_bins else None
        self._order = window.row_order(seed, self._group_by_feature)
        self._first_row = self._next_row
        # Rows before next_row were emitted before a restore; they stay unbuilt.
        self._rows = [None] * self._next_row + window.emit(self._order[self._next_row :])
        self._window = window

    def _fill_window(self) -> _PackedWindow:
        """Pulls elements until one fits no bin (kept for the next window) or the parent
        ends; returns the packed window. The hot loop: one length lookup per feature, one
        placement, three appends."""
        parent, layout = self._parent, self._layout
        place = self._packer.place_one
        keys = layout.flat_keys
        num_keys = 0 if keys is None else len(keys)
        first_key, last_key = (keys[0], keys[-1]) if keys else (None, None)
        items, lengths_log, bins = [], [], []
        anchor = parent.get_state()
        pending, self._pending = self._pending, None
        if pending is not None:  # already pulled: the anchor lies just after it
            items.append(pending[0])
            lengths_log.extend(pending[1])
            bins.append(place(pending[1]))
        pulled_before_anchor = len(items)
        while True:
            try:
                element = next(parent)
            except StopIteration:
                if not items:
                    raise
                self._next_start = (anchor, len(items) - pulled_before_anchor)
                break
            try:
                if num_keys == 2:
                    lengths = (element[first_key].shape[0], element[last_key].shape[0])
                elif num_keys == 1:
                    lengths = (element[first_key].shape[0],)
                elif num_keys:
                    lengths = tuple([element[key].shape[0] for key in keys])
                else:
                    lengths = layout.lengths(element)
            except (AttributeError, IndexError):  # a scalar or non-array feature
                lengths = layout.lengths(element)
            try:
                b = place(lengths)
            except ValueError:
                raise layout.too_long_error(self._algorithm, lengths) from None
            if b < 0:
                self._pending = (element, lengths)
                # The element that failed is the next window's first: restoring pulls
                # the elements before it, counted from the anchor.
                self._next_start = (anchor, len(items) - pulled_before_anchor)
                break
            items.append(element)
            lengths_log.extend(lengths)
            bins.append(b)
        window = _PackedWindow(
            layout, items, lengths_log, bins, self._packer.num_used_bins, self._pool
        )
        self._packer.reset()
        return window

    def __str__(self) -> str:
        return f"xbatch.{type(self).__name__}"


class _PackIterDataset(grain.IterDataset):
    """grain's packing dataset on xbatch's kernels; see the two public subclasses."""

    _algorithm = "first_fit"

    def __init__(
        self,
        parent: grain.IterDataset,
        *,
        length_struct: Any,
        num_packing_bins: int,
        seed: int = 0,
        shuffle_bins: bool = True,
        shuffle_bins_group_by_feature: str | None = None,
        meta_features: Sequence[str] = (),
        pack_alignment_struct: Any = None,
        padding_struct: Any = None,
        max_sequences_per_bin: int | None = None,
    ):
        super().__init__(parent)
        if max_sequences_per_bin is not None and max_sequences_per_bin <= 0:
            raise ValueError(  # grain's message
                "If specified, `max_sequences_per_bin` must be a positive integer,"
                f" but got {max_sequences_per_bin}."
            )
        positive_int("num_packing_bins", num_packing_bins)
        if shuffle_bins:  # grain would fail at the first window; NumPy takes seeds >= 0
            positive_int("seed", seed, minimum=0)
        self._layout = _Layout(length_struct, meta_features, pack_alignment_struct, padding_struct)
        # What a checkpoint state's restore depends on (checked by set_state).
        self._arguments = {
            "length_struct": length_struct,
            "num_packing_bins": num_packing_bins,
            "seed": seed,
            "shuffle_bins": shuffle_bins,
            "shuffle_bins_group_by_feature": shuffle_bins_group_by_feature,
            "meta_features": list(meta_features),
            "pack_alignment_struct": pack_alignment_struct,
            "padding_struct": padding_struct,
            "max_sequences_per_bin": max_sequences_per_bin,
        }
        self._num_packing_bins = int(num_packing_bins)
        self._seed = seed
        self._shuffle_bins = shuffle_bins
        self._shuffle_bins_group_by_feature = shuffle_bins_group_by_feature
        self._max_sequences_per_bin = max_sequences_per_bin

    def __iter__(self) -> _PackDatasetIterator:
        return _PackDatasetIterator(self._parent.__iter__(), self)

    def __str__(self) -> str:
        return f"xbatch.{type(self).__name__}"


class FirstFitPackIterDataset(_PackIterDataset):
    """grain's ``FirstFitPackIterDataset``, bit for bit: each element goes to the
    lowest-index bin where every feature fits (and that holds fewer than
    ``max_sequences_per_bin`` elements).

    Args:
      parent: dataset of dict elements with variable-length features ([tokens, ...]).
      length_struct: dict of feature -> row length (tokens).
      num_packing_bins: rows per window (>= 1).
      seed: seeds the per-window row shuffle (``seed + rows emitted before the window``).
      shuffle_bins: emit a window's rows in shuffled order.
      shuffle_bins_group_by_feature: output key whose average distinct value per row
        sorts the shuffled rows.
      meta_features: keys packed without ``_segment_ids``/``_positions``; those not in
        ``length_struct`` come out as one list per row of the packed elements' values.
      pack_alignment_struct: per feature, each element's end rounds up to a multiple.
      padding_struct: per feature, the padding value (default 0).
      max_sequences_per_bin: at most this many elements per row.

    The iterator's ``stats`` (:class:`~xbatch.packing.PackingStats`) counts rows, items and
    the fill ratio of the first feature; they are part of the checkpoint state, which
    also records these arguments: restoring it into a dataset built with different ones
    raises a ValueError naming them.
    """

    _algorithm = "first_fit"


class BestFitPackIterDataset(_PackIterDataset):
    """grain's ``BestFitPackIterDataset``, bit for bit: each element goes to the bin
    where it fits with the most used cells (summed over features), ties to the lowest
    index. Arguments as :class:`FirstFitPackIterDataset`."""

    _algorithm = "best_fit"
