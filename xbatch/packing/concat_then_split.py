"""grain's ``ConcatThenSplitIterDataset`` on xbatch's kernels, bit for bit.

The parent's elements (flat dicts of ``[tokens, ...]`` arrays or scalars) are
concatenated per feature and cut into rows of ``length_struct[key]`` cells; see
:func:`xbatch.kernels.concat_then_split` for the rules, grain's quirks included.

The iterator pulls a window of elements (about :data:`WINDOW_ITEMS`) back to back,
reads their lengths in one kernel pass (:func:`xbatch.kernels.element_lengths`), plans
all their rows in one kernel call, and writes the rows a chunk at a time as they are
asked for: one :func:`xbatch.kernels.write_split_rows` pass per feature writes values,
segment ids and positions of a chunk (about :data:`CHUNK_CELLS` cells, which stay in
cache) into recycled blocks, and rows are views of those. Rows of other dtypes, casts and
scalars take the general path (``scatter_rows``, ``pack_rows``). Elements of the last,
unfinished row wait for the next window. The state is where the window starts plus the
rows emitted from it: ``{"parent", "skip", "slices", "next_row"}`` -- the parent's state
read once per window, elements to pull after it, the first element's slices left over
from a cut, and rows to drop. Restoring replays at most one window.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from itertools import islice
from operator import itemgetter
from typing import Any

import grain
import numpy as np

from .. import kernels
from . import checkpoint
from .buffers import BufferPool

BOSHandling = grain.experimental.BOSHandling
# Elements per window: pulled back to back, then planned and written. Large windows
# amortize the per-window calls, and the parent runs measurably slower when its pulls
# interleave with row writing (caches). Restoring replays at most one window.
WINDOW_ITEMS = 8192
# Rows per window at most (grain's rules can cut one element into rows without end).
WINDOW_ROWS = 4096
# Pulling stops early once the window's elements fill about this many rows (their summed
# cells over a row's, the fullest feature): long documents keep less memory alive.
WINDOW_PULL_ROWS = 1024
# Elements pulled per islice call (each batch's lengths are read before the next).
PULL_BATCH = 1024
# Cells (summed over features) of the rows written at a time: 64 Ki cells are 768 KiB of
# values, segment ids and positions for int32 features, which stay in a core's L2 cache.
CHUNK_CELLS = 1 << 16
_SCALAR = -1  # in the length log: the feature is a scalar (one cell in every piece)
# Version of the iterator's state format (see checkpoint.py); bump it when it changes.
_STATE_VERSION = 1
_PACKER = "ConcatThenSplitIterDataset"


class _Config:
    """The constructor's arguments, checked once, in the forms the iterator uses."""

    def __init__(
        self,
        length_struct: Mapping[str, int],
        meta_features: Collection[str],
        split_full_length_features: bool,
        bos_handling: Any,
        bos_features: Collection[str],
        bos_token_id: int | None,
    ):
        # grain's checks and messages (its _CtsConfig).
        if bos_handling == BOSHandling.DO_NOTHING and (bos_token_id is not None or bos_features):
            raise ValueError(
                f"bos_handling={bos_handling} indicates that BOS handling is not"
                " used. So bos_token_id and bos_features should not be set."
            )
        if bos_handling != BOSHandling.DO_NOTHING and bos_token_id is None:
            raise ValueError(f"bos_token_id must be set if bos_handling is {bos_handling}.")
        if not set(meta_features).isdisjoint(set(bos_features)):
            raise ValueError(
                "bos_features and meta_features should not overlap. bos_features: "
                f"{bos_features}, meta_features: {meta_features}"
            )
        if bos_handling not in (BOSHandling.DO_NOTHING, BOSHandling.REPLACE_FIRST_TOKEN_WITH_BOS):
            raise ValueError(
                f"bos_handling: expected a grain.experimental.BOSHandling, got {bos_handling!r}"
            )
        # xbatch's own: grain fails later (a row of 0 cells packs nothing).
        if not isinstance(length_struct, Mapping) or not length_struct:
            raise ValueError(
                f"length_struct: expected a non-empty dict of feature -> cells, got {length_struct!r}"
            )
        for key, cells in length_struct.items():
            if isinstance(cells, bool) or not isinstance(cells, (int, np.integer)) or cells < 1:
                raise ValueError(
                    f"length_struct[{key!r}]: expected an integer >= 1 (cells per row), got {cells!r}"
                )
        self.length_struct = dict(length_struct)
        self.keys = list(length_struct)
        self.capacities = np.array([int(length_struct[k]) for k in self.keys], dtype=np.int64)
        self.meta = np.array([k in set(meta_features) for k in self.keys])
        self.split_full_length = bool(split_full_length_features)
        replace = bos_handling == BOSHandling.REPLACE_FIRST_TOKEN_WITH_BOS
        self.bos = [replace and k in set(bos_features) for k in self.keys]
        self.bos_token_id = bos_token_id
        # Output keys in grain's order: per feature its values, segment ids, positions.
        self.names = []
        for key, is_meta in zip(self.keys, self.meta.tolist()):
            self.names.append(key)
            if not is_meta:
                self.names += [f"{key}_segment_ids", f"{key}_positions"]
        self.empty_slices = [[-1, -1] for _ in self.keys]
        # Keys the fused writer looks up in C (hashing them runs no Python code).
        self.plain_keys = all(type(k) in (str, int) for k in self.keys)
        # What a checkpoint state's restore depends on (checked by set_state).
        self.arguments = {
            "length_struct": self.length_struct,
            "meta_features": sorted(meta_features),
            "split_full_length_features": self.split_full_length,
            "bos_handling": bos_handling.name,
            "bos_features": sorted(bos_features),
            "bos_token_id": bos_token_id,
        }


def _spec(value: Any) -> tuple[np.dtype, tuple[int, ...]]:
    """dtype and trailing shape of a row holding ``value`` first (grain's rule)."""
    if type(value) is not np.ndarray:
        value = np.asarray(value)
    return value.dtype, value.shape[1:]


def _structure_error(element: Any, length_struct: Mapping[str, int]) -> ValueError:
    """grain's errors (and wording, which its tests match) for an element it cannot pack."""
    if not isinstance(element, Mapping):
        return ValueError(
            f"Parent elements must be unnested dictionaries but got {type(element).__name__}"
            f"{list(np.shape(element))}."
        )
    structure = {k: f"{type(v).__name__}{list(np.shape(v))}" for k, v in element.items()}
    return ValueError(
        f"Parent element has structure {structure} but target sequence length is"
        f" {length_struct}. There must be a sequence length for each feature."
    )


class _Window:
    """The rows of one window's plan, written a chunk of rows at a time as they are asked
    for: a chunk's arrays (recycled) stay in the CPU's cache while the kernel writes them,
    where a whole window's would go out to memory."""

    def __init__(
        self,
        config: _Config,
        elements: list,
        lengths: np.ndarray,
        plan: kernels.ConcatSplitPlan,
        pool: BufferPool,
        scalar_in_window: bool,
    ):
        self._config, self._elements, self._lengths, self._pool = config, elements, lengths, pool
        self.arrays: list[np.ndarray] = []  # the general path's, whole window
        first_piece = np.flatnonzero(plan.row[1:] != plan.row[:-1]) + 1
        first_piece = np.concatenate([np.zeros(min(1, plan.rows), np.int64), first_piece])
        self.error = piece_starts = None
        # Only BOS writes and non-meta scalars (one cell, counted as none) can fail.
        if any(config.bos) or scalar_in_window:
            piece_starts = _piece_starts(plan.length, first_piece, plan.row)
            plan, self.error = _first_failing_row(config, plan, piece_starts)
            piece_starts = piece_starts[: len(plan.item)]
            first_piece = first_piece[: plan.rows]
        self._plan, self._first_piece, self._piece_starts = plan, first_piece, piece_starts
        self.num_rows = plan.rows
        self._chunk_rows = max(1, CHUNK_CELLS // int(config.capacities.sum()))
        self._chunk_start = self._chunk_end = 0
        self._chunk: list[dict] = []
        self._chunk_arrays: list[np.ndarray] = []
        # Per feature: its columns (per-row lists) from the general path, once needed.
        self._general: dict[int, list[list]] = {}

    def row(self, i: int) -> dict[str, np.ndarray]:
        """Row ``i`` (< num_rows) of the window."""
        if not self._chunk_start <= i < self._chunk_end:
            self._write_chunk(i - i % self._chunk_rows)
        return self._chunk[i - self._chunk_start]

    def release(self) -> None:
        """Offers the arrays of the window for reuse (rows handed out keep theirs)."""
        # Only non-empty lists: the pool keeps the arrays of its last few releases, and an
        # empty one would push out arrays the next window can reuse.
        for arrays in (self._chunk_arrays, self.arrays):
            if arrays:
                self._pool.release(arrays)
        self._chunk_arrays, self.arrays, self._chunk = [], [], []

    def _write_chunk(self, start: int) -> None:
        config, plan = self._config, self._plan
        if self._chunk_arrays:
            self._pool.release(self._chunk_arrays)
        self._chunk_arrays = []
        end = min(start + self._chunk_rows, plan.rows)
        piece_begin, piece_end = np.searchsorted(plan.row, (start, end)).tolist()
        pieces = slice(piece_begin, piece_end)
        columns: list[list] = []
        for f in range(len(config.keys)):
            written = None if f in self._general else self._write_fused(f, pieces, start, end)
            if written is None:  # other dtypes, casts, scalars: the whole window, once
                if f not in self._general:
                    self._general[f] = self._write_general(f)
                columns += [column[start:end] for column in self._general[f]]
                continue
            out, ids = written
            if config.bos[f]:  # grain writes it at every piece's first cell, empty ones too
                out[plan.row[pieces] - start, self._piece_starts[pieces, f]] = config.bos_token_id
            columns.append(list(out))
            if ids is not None:
                columns += [list(ids[:, 0]), list(ids[:, 1])]
        names = config.names
        self._chunk = [dict(zip(names, row)) for row in zip(*columns)]
        self._chunk_start, self._chunk_end = start, end

    def _write_fused(self, f: int, pieces: slice, start: int, end: int):
        """(values, ids) of feature ``f`` in rows ``start:end`` written by one kernel
        pass, or None where some piece is not a plain array of the chunk's first one's
        dtype and cell shape (a row takes its first element's dtype, as in grain)."""
        config, plan, pool = self._config, self._plan, self._pool
        key = config.keys[f]
        first = self._elements[plan.item[pieces.start]][key]
        if type(first) is not np.ndarray or first.ndim == 0 or first.dtype.hasobject or not config.plain_keys:
            return None
        capacity, rows = int(config.capacities[f]), end - start
        # Whole chunks' shapes, so that the last, shorter chunk of a window reuses them.
        blocks = [pool.empty((self._chunk_rows, capacity, *first.shape[1:]), first.dtype)]
        if not config.meta[f]:
            blocks.append(pool.empty((self._chunk_rows, 2, capacity), np.int32))
        out = blocks[0][:rows]
        ids = blocks[1][:rows] if len(blocks) == 2 else None
        failed = kernels.write_split_rows(
            self._elements,
            key,
            plan.item[pieces],
            plan.row[pieces],
            plan.start[pieces, f],
            plan.length[pieces, f],
            out,
            ids,
            first_row=start,
        )
        if failed >= 0:
            pool.release(blocks)
            return None
        self._chunk_arrays += blocks
        return out, ids

    def _write_general(self, f: int) -> list[list]:
        """Feature ``f``'s columns for every row of the window, through ``scatter_rows``
        and ``pack_rows`` (NumPy's casts, rows of several dtypes, scalars)."""
        config, plan, pool, elements = self._config, self._plan, self._pool, self._elements
        rows, row_of, key = plan.rows, plan.row, config.keys[f]
        items = plan.item.tolist()
        values = list(map(itemgetter(key), map(elements.__getitem__, items)))
        cells, starts = plan.length[:, f], plan.start[:, f]
        # Pieces that are not their element's whole value (about one a row): sliced.
        cut = (starts != 0) | (cells != self._lengths[plan.item, f])
        for p in np.flatnonzero(cut).tolist():
            values[p] = values[p][starts[p] : starts[p] + cells[p]]
        # A row takes the dtype and trailing shape of its first element (unsliced).
        specs = [_spec(elements[items[p]][key]) for p in self._first_piece.tolist()]
        groups = _row_groups(specs)
        per_row: list[Any] = [None] * rows
        for spec, group_rows in groups:
            out = self._write(config, f, spec, values, cells, row_of, group_rows, rows, pool)
            if len(groups) == 1:
                per_row = list(out)
            else:
                for local, r in enumerate(group_rows):
                    per_row[r] = out[local]
        if config.bos[f]:  # grain writes it at every piece's first cell, empty ones too
            if len(groups) == 1:
                out[row_of, self._piece_starts[:, f]] = config.bos_token_id
            else:
                for r, start in zip(row_of.tolist(), self._piece_starts[:, f].tolist()):
                    per_row[r][start] = config.bos_token_id
        columns = [per_row]
        if not config.meta[f]:
            segment_ids = pool.empty((rows, int(config.capacities[f])), np.int32)
            positions = pool.empty((rows, int(config.capacities[f])), np.int32)
            kernels.pack_rows(cells, row_of, segment_ids, positions)
            self.arrays += [segment_ids, positions]
            columns += [list(segment_ids), list(positions)]
        return columns

    def _write(self, config, f, spec, values, cells, row_of, group_rows, rows, pool):
        """Rows ``group_rows`` of feature ``f`` (all of one dtype and trailing shape)."""
        dtype, trailing = spec
        capacity = int(config.capacities[f])
        if len(group_rows) == rows:
            out = pool.empty((rows, capacity, *trailing), dtype)
            kernels.scatter_rows(values, cells, row_of, out)
            self.arrays.append(out)
            return out
        local = np.full(rows, -1, dtype=np.int64)
        local[group_rows] = np.arange(len(group_rows))
        mask = local[row_of] >= 0
        out = np.empty((len(group_rows), capacity, *trailing), dtype)
        picked = [v for v, keep in zip(values, mask.tolist()) if keep]
        kernels.scatter_rows(picked, cells[mask], local[row_of[mask]], out)
        return out


def _first_failing_row(config: _Config, plan: kernels.ConcatSplitPlan, piece_starts: np.ndarray):
    """(the plan cut before the first row grain fails to write, the error or None).

    grain writes a row feature by feature, piece by piece, and fails where a piece ends
    past the row (a scalar that is not a meta feature is one cell in every piece of a
    cut element, counted as none) or where the BOS token goes to the cell after the row
    (an empty piece at the row's end).
    """
    ends = piece_starts + plan.length
    overflow = ends > config.capacities
    bad = overflow | ((piece_starts >= config.capacities) & np.array(config.bos, dtype=bool))
    failing = np.flatnonzero(bad.any(axis=1))
    if failing.size == 0:
        return plan, None
    row = int(plan.row[failing[0]])
    in_row = np.flatnonzero(plan.row == row)
    f, p = next((f, p) for f in range(len(config.keys)) for p in in_row.tolist() if bad[p, f])
    key, capacity = config.keys[f], int(config.capacities[f])
    if overflow[p, f]:
        error = ValueError(
            f"Feature {key!r}: a piece of {int(plan.length[p, f])} cells does not fit cells"
            f" [{int(piece_starts[p, f])}:{int(ends[p, f])}] of a row of {capacity}: a scalar"
            " that is not a meta feature takes one cell in every piece of a cut element"
            " (grain fails here with an internal error)"
        )
    else:  # numpy's message for grain's write
        error = IndexError(f"index {capacity} is out of bounds for axis 0 with size {capacity}")
    keep = plan.row < row
    cut = plan._replace(item=plan.item[keep], row=plan.row[keep], start=plan.start[keep], length=plan.length[keep], rows=row)
    return cut, error


def _row_groups(specs: list) -> list[tuple[Any, list[int]]]:
    """Rows grouped by the (dtype, trailing shape) of their first piece."""
    if all(s == specs[0] for s in specs):
        return [(specs[0], list(range(len(specs))))]
    groups: dict[Any, list[int]] = {}
    for r, spec in enumerate(specs):
        groups.setdefault((spec[0].str, spec[0], spec[1]), []).append(r)
    return [((key[1], key[2]), rows) for key, rows in groups.items()]


def _piece_starts(lengths: np.ndarray, first_piece: np.ndarray, row_of: np.ndarray) -> np.ndarray:
    """int64[p, F]: each piece's first cell in its row."""
    ends = np.cumsum(lengths, axis=0)
    starts = ends - lengths
    return starts - starts[first_piece][row_of]


class _ConcatThenSplitDatasetIterator(grain.DatasetIterator):
    """Packs window by window; see the module docstring."""

    def __init__(self, parent: grain.DatasetIterator, config: _Config):
        super().__init__(parent)
        self._config = config
        self._pool = BufferPool()
        self._restart((self._parent.get_state(), 0, config.empty_slices), next_row=0)

    def _restart(self, start: tuple, next_row: int) -> None:
        self._start = start  # (parent state, elements to skip, slices of the next one)
        self._next_row = next_row
        self._carry: list = []  # pulled elements that start the next window
        self._carry_lengths: list = []
        self._carry_slices = start[2]
        self._exhausted = False
        self._window: _Window | None = None
        self._next_start = None
        self._error: Exception | None = None

    def get_state(self) -> dict[str, Any]:
        parent, skip, slices = self._start
        state = {
            "parent": parent,
            "skip": skip,
            "slices": [list(s) for s in slices],
            "next_row": self._next_row,
        }
        return checkpoint.record_arguments(
            state, self._config.arguments, packer=_PACKER, version=_STATE_VERSION
        )

    def set_state(self, state: dict[str, Any]) -> None:
        checkpoint.check_arguments(state, self._config.arguments, packer=_PACKER, version=_STATE_VERSION)
        self._parent.set_state(state["parent"])
        for _ in range(state["skip"]):
            next(self._parent)
        slices = [list(s) for s in state["slices"]]
        self._restart((state["parent"], state["skip"], slices), next_row=state["next_row"])

    def __next__(self) -> dict[str, np.ndarray]:
        while self._window is None or self._next_row >= self._window.num_rows:
            if self._window is not None:  # a window ended on an error: raise it again
                raise self._error
            self._window = self._build_window()
            if self._next_row >= self._window.num_rows and self._error is None:
                # After a restore, rows past this window's: a restored window holds no
                # carried elements, so it may plan fewer rows than the one saved from.
                left = self._next_row - self._window.num_rows
                self._finish_window()
                self._next_row = left
        row = self._window.row(self._next_row)
        self._next_row += 1
        if self._next_row == self._window.num_rows and self._error is None:
            self._finish_window()
        return row

    def _finish_window(self) -> None:
        self._window.release()
        self._window = None
        self._start = self._next_start
        self._next_row = 0

    def _pull(self, elements: list, lengths: list, target: int, row_budget: bool) -> None:
        """Pulls elements until ``target`` are held or the parent ends (or, with
        ``row_budget``, the held elements fill about :data:`WINDOW_PULL_ROWS` rows)."""
        parent, config = self._parent, self._config
        keys = config.keys
        num_keys = len(keys)
        capacities = config.capacities.tolist()
        filled = [sum(lengths[f::num_keys]) for f in range(num_keys)] if row_budget else None
        while len(elements) < target and not self._exhausted:
            begin, logged_before = len(elements), len(lengths)
            batch = min(PULL_BATCH, target - begin)
            # islice pulls in C; list.extend keeps the elements pulled before an error.
            elements.extend(islice(parent, batch))
            if len(elements) < begin + batch:
                self._exhausted = True
            # Dicts of exactly the keys, arrays: read in one kernel pass; anything else
            # (scalars, lists, other mappings, errors) one element at a time.
            read = begin
            while read < len(elements):
                if config.plain_keys:
                    logged = kernels.element_lengths(elements, keys, read)
                    lengths.extend(logged)
                    read += len(logged) // num_keys
                    if read == len(elements):
                        break
                one, error = self._lengths_one_by_one(elements[read : read + 1])
                lengths.extend(one)
                if error is not None:  # held: the elements before it, as their lengths
                    del elements[read:]
                    raise error
                read += 1
            if filled is not None:  # scalars count -1 here: an estimate is all it needs
                for f in range(num_keys):
                    filled[f] += sum(lengths[logged_before + f :: num_keys])
                if max(cells / capacity for cells, capacity in zip(filled, capacities)) >= WINDOW_PULL_ROWS:
                    return

    def _lengths_one_by_one(self, pulled: list) -> tuple[list[int], ValueError | None]:
        """(the elements' lengths, ``_SCALAR`` for scalars, up to the first element of
        another structure; grain's error for that one or None)."""
        config = self._config
        keys = config.keys
        logged: list[int] = []
        for element in pulled:
            # grain requires exactly the keys of length_struct: as many keys, each found.
            if type(element) is not dict and not isinstance(element, Mapping) or len(element) != len(keys):
                return logged, _structure_error(element, config.length_struct)
            try:
                values = [element[key] for key in keys]
            except KeyError:
                return logged, _structure_error(element, config.length_struct)
            logged += [_SCALAR if np.ndim(v) == 0 else len(v) for v in values]
        return logged, None

    def _build_window(self) -> _Window:
        """Plans and writes the next window; StopIteration when no row is left."""
        config = self._config
        elements, lengths = self._carry, self._carry_lengths
        anchor = self._parent.get_state()
        before = len(elements)
        target = max(WINDOW_ITEMS, before)
        row_budget = True
        while True:
            if not self._exhausted:
                self._pull(elements, lengths, target, row_budget)
            log = np.array(lengths, dtype=np.int64).reshape(len(elements), len(config.keys))
            scalar = log == _SCALAR
            if scalar.any():
                log[scalar] = 1
            plan = kernels.concat_then_split(
                log,
                config.capacities,
                meta=config.meta,
                scalar=scalar,
                split_full_length=config.split_full_length,
                carry=self._carry_slices,
                final=self._exhausted,
                max_rows=WINDOW_ROWS,
            )
            if plan.rows or plan.status or self._exhausted:
                break
            # No row finished yet: its elements span more than this window (the row
            # budget included), so pull on.
            target, row_budget = 2 * target, False
        if plan.status:
            cells = log[plan.consumed].tolist()
            too_long = [
                f"{k!r} has {c} cells, length_struct[{k!r}] is {config.length_struct[k]}"
                for k, m, c in zip(config.keys, config.meta.tolist(), cells)
                if m and c > config.length_struct[k]
            ]
            self._error = ValueError(
                f"Meta feature of an element longer than its row ({'; '.join(too_long)}):"
                " meta features are never split, so the element fits no row"
            )
        if plan.rows == 0:
            if self._error is not None:
                raise self._error
            raise StopIteration
        window = _Window(config, elements, log, plan, self._pool, bool(scalar.any()))
        if window.error is not None:
            self._error = window.error  # raised after the rows before it, as grain does
        consumed = plan.consumed
        if consumed >= before:
            self._next_start = (anchor, consumed - before, plan.carry.tolist())
        else:  # the row cap stopped among the carried elements, which follow our start
            parent, skip, _ = self._start
            self._next_start = (parent, skip + consumed, plan.carry.tolist())
        self._carry = elements[consumed:]
        self._carry_lengths = lengths[consumed * len(config.keys) :]
        self._carry_slices = plan.carry.tolist()
        return window

    def __str__(self) -> str:
        return f"xbatch.{type(self).__name__}"


class ConcatThenSplitIterDataset(grain.IterDataset):
    """grain's ``ConcatThenSplitIterDataset`` (0.2.18), bit for bit: the elements'
    features concatenated and cut into rows of ``length_struct`` cells, no padding but
    where a row must end (the stream's end, meta features, several features).

    Args:
      parent: dataset of flat dicts with exactly the keys of ``length_struct``: arrays
        ``[tokens, ...]`` (or scalars, one cell).
      length_struct: dict of feature -> cells per row (>= 1). A row is emitted when one
        feature is full; an element that does not fit is cut in all non-meta features.
      meta_features: features never cut (whole in every piece of their element; an
        element waits for the next row if one does not fit), without ``_segment_ids`` /
        ``_positions``.
      split_full_length_features: False: an element with a feature of exactly its row
        length (none longer) is emitted as its own row, right after the row being filled.
      bos_handling: ``grain.experimental.BOSHandling``; ``REPLACE_FIRST_TOKEN_WITH_BOS``
        writes ``bos_token_id`` at the first cell of every piece of ``bos_features``.
      bos_features, bos_token_id: as grain.

    Rows are dicts, per feature (in ``length_struct`` order) its values, then int32
    ``{key}_segment_ids`` (1-based per row, 0 = padding) and ``{key}_positions``
    (restarting at 0 in every piece). They are views of per-window arrays. Errors where
    grain raises: a ``ValueError`` for elements of another structure, a ``ValueError``
    (grain: an internal error) for a meta feature longer than its row, ``IndexError``
    where grain's BOS write fails.
    """

    def __init__(
        self,
        parent: grain.IterDataset,
        *,
        length_struct: Mapping[str, int],
        meta_features: Collection[str] = (),
        split_full_length_features: bool = True,
        bos_handling: Any = BOSHandling.DO_NOTHING,
        bos_features: Collection[str] = (),
        bos_token_id: int | None = None,
    ):
        super().__init__(parent)
        self._config = _Config(
            length_struct,
            meta_features,
            split_full_length_features,
            bos_handling,
            bos_features,
            bos_token_id,
        )

    def __iter__(self) -> _ConcatThenSplitDatasetIterator:
        return _ConcatThenSplitDatasetIterator(self._parent.__iter__(), self._config)

    def __str__(self) -> str:
        return f"xbatch.{type(self).__name__}"
