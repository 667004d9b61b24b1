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

import bisect
import contextlib
import threading

import numpy as np

from . import _checks

NO_BIN = -1


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

    As in the compiled twin, only the first ``_allocated`` bins are held in memory (the
    rest are empty), doubled whenever all of them are in use; and a call made while
    another thread is inside this packer raises ``RuntimeError``.
    """

    _INITIAL_BINS = 256

    def __init__(self, capacities, alignments, num_bins, max_items_per_bin, best_fit):
        self.capacities = np.array(capacities, dtype=np.int64)
        self.alignments = np.array(alignments, dtype=np.int64)
        self.num_bins = int(num_bins)
        self.max_items_per_bin = int(max_items_per_bin)
        self.best_fit = bool(best_fit)
        self.num_features = len(self.capacities)
        self._capacity_list = self.capacities.tolist()
        self._alignment_list = self.alignments.tolist()
        self._lock = threading.Lock()
        self._allocated = min(self.num_bins, self._INITIAL_BINS)
        self.reset()

    @contextlib.contextmanager
    def _in_use(self):
        if not self._lock.acquire(blocking=False):
            _checks.raise_busy("BinPacker")
        try:
            yield
        finally:
            self._lock.release()

    def reset(self) -> None:
        """Empties every bin."""
        with self._in_use():
            self._empty_bins()

    def _empty_bins(self) -> None:
        shape = (self.num_features, self._allocated)
        self._used = np.zeros(shape, dtype=np.int64)
        self._room = np.repeat(self.capacities[:, None], self._allocated, axis=1)
        self._scores = np.zeros(self._allocated, dtype=np.int64)  # used cells, all features
        self._counts = np.zeros(self._allocated, dtype=np.int64)
        self._num_used_bins = 0

    def _grow(self) -> None:
        """Doubles the allocated bins once all are in use; the new ones are empty."""
        if self._num_used_bins < self._allocated or self._allocated == self.num_bins:
            return
        extra = min(2 * self._allocated, self.num_bins) - self._allocated
        self._allocated += extra
        self._used = np.pad(self._used, ((0, 0), (0, extra)))
        self._room = np.concatenate([self._room, np.repeat(self.capacities[:, None], extra, axis=1)], axis=1)
        self._scores = np.pad(self._scores, (0, extra))
        self._counts = np.pad(self._counts, (0, extra))

    @property
    def used(self) -> np.ndarray:
        """int64[F, num_bins]: next free cell of each bin per feature (a copy)."""
        used = np.zeros((self.num_features, self.num_bins), dtype=np.int64)
        used[:, : self._allocated] = self._used
        return used

    @property
    def counts(self) -> np.ndarray:
        """int64[num_bins]: items held by each bin (a copy)."""
        counts = np.zeros(self.num_bins, dtype=np.int64)
        counts[: self._allocated] = self._counts
        return counts

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
        self._grow()

    def _valid(self, lengths: list[int]) -> bool:
        return len(lengths) == self.num_features and all(
            0 <= n <= c for n, c in zip(lengths, self._capacity_list)
        )

    def place_one(self, lengths) -> int:
        """Places one item (F lengths: a tuple or list of ints, or an int when F is 1);
        returns its bin, or -1 if none fits. Checked by ``_checks.item_lengths``."""
        with self._in_use():
            if type(lengths) is int:
                lengths = (lengths,)
            if not (
                type(lengths) is tuple
                and all(type(n) is int for n in lengths)
                and self._valid(lengths)
            ):  # the packers' tuples skip this
                lengths = _checks.item_lengths(lengths, self.capacities)
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
          RuntimeError: another thread is using this packer.
        """
        _checks.check_place_args(lengths, out_bins, self.capacities)
        with self._in_use():
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


def _item_starts(lengths, bins, alignment, rows, row_length):
    """(each item's first cell in its row, failed): items go in order to their row's next
    free cell, which rounds up to a multiple of ``alignment`` after each item. ``failed``
    is the index of the first item that would leave its row, else -1."""
    starts, cursor = [], [0] * rows
    for i, (n, b) in enumerate(zip(lengths, bins)):
        start = cursor[b]
        if start + n > row_length:
            return starts, i
        starts.append(start)
        cursor[b] = (start + n + alignment - 1) // alignment * alignment
    return starts, -1


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
    rows, row_length = out_segment_ids.shape
    lengths, bins = lengths.tolist(), bins.tolist()
    starts, failed = _item_starts(lengths, bins, alignment, rows, row_length)
    if failed >= 0:
        return failed
    out_segment_ids[...] = 0
    out_positions[...] = 0
    positions = np.arange(row_length, dtype=np.int32)
    items_in_row = [0] * rows
    for n, b, start in zip(lengths, bins, starts):
        items_in_row[b] += 1
        out_segment_ids[b, start : start + n] = items_in_row[b]
        out_positions[b, start : start + n] = positions[:n]
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
    offsets = np.cumsum(lengths) - lengths
    items = [values[o : o + n] for o, n in zip(offsets.tolist(), lengths.tolist())]
    return _write_items(items, lengths, bins, alignment, out_values, padding)


def scatter_item_rows(items, lengths, bins, alignment, out_values, padding):
    """As :func:`scatter_rows`, with each item in its own array of ``items``.

    Every item must be a 1-d C-contiguous array of ``out_values``' dtype and of its
    length. Returns -1 on success, the index of the first item that does not fit its
    row, or ``-2 - i`` when item ``i`` is not such an array. An item before that one that
    shares memory with ``out_values`` raises ``ValueError``.
    """
    if len(items) != len(lengths):
        raise ValueError(f"items: expected {len(lengths)} arrays, one per item, got {len(items)}")
    for i, item in enumerate(items):  # every item checked before anything is written
        if not (
            type(item) is np.ndarray
            and item.dtype == out_values.dtype  # dtypes of other byte orders differ
            and item.ndim == 1
            and item.shape[0] == lengths[i]
            and item.flags.c_contiguous
        ):
            return -2 - i
        if np.may_share_memory(item, out_values):  # both contiguous: exactly an overlap
            _checks.raise_overlap(f"values (item {i})", "out_values")
    return _write_items(items, lengths, bins, alignment, out_values, padding)


def _write_items(items, lengths, bins, alignment, out_values, padding):
    lengths, bins = lengths.tolist(), bins.tolist()
    starts, failed = _item_starts(lengths, bins, alignment, *out_values.shape[:2])
    if failed >= 0:
        return failed
    out_values[...] = padding
    for item, n, b, start in zip(items, lengths, bins, starts):
        out_values[b, start : start + n] = item
    return -1


def document_borders(segmentation: np.ndarray) -> np.ndarray:
    """bool[B, L]: True at column 0 and wherever the segment id differs from the previous."""
    borders = np.ones(segmentation.shape, dtype=bool)
    np.not_equal(segmentation[:, 1:], segmentation[:, :-1], out=borders[:, 1:])
    return borders


def shift_right(rows: np.ndarray, fill, out: np.ndarray) -> np.ndarray:
    """``out`` [B, L] := ``rows`` moved one cell right along L, ``fill`` in column 0."""
    out[:, 1:] = rows[:, :-1]
    out[:, :1] = fill
    return out


def shift_left(rows: np.ndarray, fill, out: np.ndarray) -> np.ndarray:
    """``out`` [B, L] := ``rows`` moved one cell left along L, ``fill`` in the last column."""
    out[:, :-1] = rows[:, 1:]
    out[:, -1:] = fill
    return out


# ---------------------------------------------------------------------------------------
# Attention metadata (issue 13): per-row segment lengths and offsets, flat cu_seqlens


def attention_metadata(segmentation, max_segments, out_lengths, out_offsets, out_cu_seqlens):
    """Writes the segments of every row: lengths and start columns (-1 where a row has
    fewer than ``max_segments``) and the cumulative lengths over all rows (the tail
    repeats the total).

    A segment is a run of one non-zero id; the ``k``-th run of a row (from 1) must have
    id ``k``. Returns ``(status, row, column, max_seqlen)``: status 0 on success (row and
    column -1), else the first run start in row-major order that breaks a rule: 1 when it
    is segment ``max_segments + 1`` of its row, 2 when its id is not its run number.
    """
    length = segmentation.shape[1]
    flat = segmentation.reshape(-1)
    # Runs of equal cells, cut at every row start: a few passes over the tokens, then
    # work per run only.
    change = np.ones(flat.shape, dtype=bool)
    np.not_equal(flat[1:], flat[:-1], out=change[1:])
    change[::max(length, 1)] = True
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], flat.size)
    keep = flat[starts] != 0
    starts, ends = starts[keep], ends[keep]
    values = flat[starts]
    row, column = np.divmod(starts, max(length, 1))
    # Runs are in row-major order: a run's number is its index minus its row's first.
    number = np.arange(1, len(starts) + 1) - np.searchsorted(row, row, side="left")
    bad = (values != number) | (number > max_segments)
    if bad.any():
        i = int(np.argmax(bad))
        status = 2 if values[i] != number[i] else 1
        return status, int(row[i]), int(column[i]), 0
    lengths = ends - starts
    out_lengths.fill(-1)
    out_lengths[row, number - 1] = lengths
    out_offsets.fill(-1)
    out_offsets[row, number - 1] = column
    total = np.cumsum(lengths)
    out_cu_seqlens[0] = 0
    out_cu_seqlens[1 : len(total) + 1] = total
    out_cu_seqlens[len(total) + 1 :] = total[-1] if len(total) else 0
    return 0, -1, -1, int(lengths.max()) if len(lengths) else 0

# Corpus sources (issue 12): grain's index shuffle, vectorized; gathering documents.
# ---------------------------------------------------------------------------------------

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _simon_rotl(x: np.ndarray, r: int, w: int, mask: np.uint64) -> np.ndarray:
    # r == w rotates by a full word (std::bitset semantics): the left shift drops out.
    left = (x << np.uint64(r)) if r < 64 else np.zeros_like(x)
    return (left | (x >> np.uint64(w - r))) & mask


def index_shuffle(indices, max_index, keys, word_bits, out):
    """``out[i]`` := grain's ``index_shuffle(indices[i], max_index, seed, rounds)``.

    grain's Simon-cipher cycle walk, on whole arrays: every pass encrypts the indices not
    yet inside ``[0, max_index]``. ``keys``: uint32 round keys from ``std::seed_seq{seed}``
    (even count); ``word_bits``: half the block size. Returns -1, or the position of the
    first index outside ``[0, max_index]`` (nothing is written then).
    """
    n = indices.shape[0]
    bad = np.flatnonzero((indices < 0) | (indices.astype(np.uint64) > np.uint64(max_index)))
    if bad.size:
        return int(bad[0])
    if max_index == 0:
        out[:n] = 0
        return -1
    w, mask = int(word_bits), np.uint64((1 << int(word_bits)) - 1)
    shift = np.uint64(w)
    keys = [np.uint64(int(k)) & mask for k in keys]

    def f(x):
        return (_simon_rotl(x, 1, w, mask) & _simon_rotl(x, 8, w, mask)) ^ _simon_rotl(x, 2, w, mask)

    def encrypt(value):
        left, right = (value >> shift) & mask, value & mask
        for k in range(0, len(keys), 2):
            left ^= f(right) ^ keys[k]
            right ^= f(left) ^ keys[k + 1]
        return (left << shift) | right

    # A small range in the smallest (16-bit) block walks up to thousands of steps per
    # index: encrypt the whole block once and walk by table lookups instead.
    step = encrypt
    if w == 8 and max_index < 4096:
        table = encrypt(np.arange(1 << 16, dtype=np.uint64))
        step = table.__getitem__
    values = indices.astype(np.uint64) & np.uint64((1 << (2 * w)) - 1 if w < 32 else 2**64 - 1)
    pending = np.arange(n)
    while pending.size:
        value = step(values[pending])
        values[pending] = value
        pending = pending[value > np.uint64(max_index)]
    out[:n] = values.astype(np.int64)
    return -1


def gather_ranges(tokens, starts, ends, out):
    """Copies ``tokens[starts[i]:ends[i]]`` for every ``i``, back to back, into ``out`` as int32.

    Returns -1; or ``i`` >= 0, the first range holding a token id outside int32; or
    ``-2 - i`` for the first range ``i`` outside ``tokens`` or ``out``.
    """
    lengths = ends - starts
    stops = np.cumsum(lengths)
    bad = np.flatnonzero((starts < 0) | (lengths < 0) | (ends > tokens.shape[0]) | (stops > out.shape[0]))
    if bad.size:
        return -2 - int(bad[0])
    total = int(stops[-1]) if stops.size else 0
    # Position p of the output reads token p + (start of its range - where the range lands).
    source = np.arange(total, dtype=np.int64)
    source += np.repeat(starts - (stops - lengths), lengths)
    values = tokens[source]
    if tokens.dtype.itemsize >= 4 and tokens.dtype != np.int32 and total:
        outside = (values > _INT32_MAX) if tokens.dtype.kind == "u" else (values > _INT32_MAX) | (values < _INT32_MIN)
        if outside.any():
            return int(np.searchsorted(stops, int(np.flatnonzero(outside)[0]), side="right"))
    out[:total] = values
    return -1


# Rolling best fit: bins that stay open (xbatch.packing.rolling)
# ---------------------------------------------------------------------------------------


class RollingPacker:
    """Online best fit into ``num_bins`` bins that stay open, with a look-ahead buffer.

    Items (lengths 1..capacity) get ids 0, 1, ... in push order; ``clock`` counts the
    items pushed. Each push:

    1. puts the item into the buffer;
    2. while the oldest buffered item has waited ``buffer_wait`` pushes
       (``clock - (id + 1) >= buffer_wait``), moves it into a bin;
    3. while the buffer holds more than ``buffer_size`` items, moves the largest item
       that fits some bin, or the largest if none fits, into a bin (ties between equal
       lengths: the newest);
    4. while a bin has been open ``bin_wait`` pushes (``clock - opened >= bin_wait``,
       ``opened`` the clock when it took its first item), closes it: the oldest first,
       bins opened at the same clock lowest index first.

    An item moves into the fullest bin with room (best fit); when no bin has room, the
    fullest bin is closed first and takes it. Ties between bins with the same room: the
    lowest-index bin if they are empty, else the bin that got that room last. A bin that
    reaches ``max_items`` items (0: no cap) is closed at once. Closing a bin tops it up
    from the buffer (the largest item that fits the room left, newest first, while it
    holds fewer than ``max_items``), emits it as a row and empties it. So an item is in an
    emitted row at the latest ``buffer_wait + bin_wait`` pushes after its own. ``drain()``
    places every held item best-fit-decreasing into new rows (at most ``max_items``
    each), emits them and starts over with id 0.

    Dicts (insertion-ordered) stand in for the compiled backend's per-room and
    per-length lists and sorted lists for its bit trees: the same choices, the same rows.
    """

    def __init__(self, capacity, num_bins, buffer_size, buffer_wait, bin_wait, max_items):
        self.capacity = int(capacity)
        self.num_bins = int(num_bins)
        self.buffer_size = int(buffer_size)
        self.buffer_wait = int(buffer_wait)
        self.bin_wait = int(bin_wait)
        self.max_items = int(max_items)  # 0: no cap
        self._out_items: list[int] = []
        self._out_row_sizes: list[int] = []
        self._lock = threading.Lock()
        self._reset()

    @contextlib.contextmanager
    def _in_use(self):
        if not self._lock.acquire(blocking=False):
            _checks.raise_busy("RollingPacker")
        try:
            yield
        finally:
            self._lock.release()

    def _reset(self) -> None:
        self.clock = 0
        self._room = [self.capacity] * self.num_bins
        self._opened = [-1] * self.num_bins
        self._contents: list[list[tuple[int, int]]] = [[] for _ in range(self.num_bins)]  # (id, length)
        self._empty_bins = list(range(self.num_bins))  # sorted
        self._bins_by_room: dict[int, dict[int, None]] = {}  # room < capacity -> bins, the last in last
        self._rooms: list[int] = [self.capacity]  # sorted: rooms some bin has
        self._open: dict[int, int] = {}  # open bin -> opening clock, the oldest first
        self._by_length: dict[int, dict[int, None]] = {}  # length -> buffered ids, the newest last
        self._lengths: list[int] = []  # sorted: lengths some buffered item has
        self._age: dict[int, int] = {}  # buffered id -> length, the oldest first

    @property
    def num_held(self) -> int:
        return len(self._age) + sum(len(items) for items in self._contents)

    def held_ids(self) -> np.ndarray:
        ids = list(self._age) + [item for items in self._contents for item, _ in items]
        return np.array(sorted(ids), dtype=np.int64)

    def push(self, lengths: np.ndarray) -> int:
        with self._in_use():
            for i, length in enumerate(lengths.tolist()):
                if not 1 <= length <= self.capacity:
                    return i
                self._push_one(length)
            return -1

    def drain(self) -> None:
        with self._in_use():
            self._drain()

    def _drain(self) -> None:
        items = sorted([(-length, item) for item, length in self._age.items()]
                       + [(-length, item) for items in self._contents for item, length in items])
        rows: list[list[tuple[int, int]]] = []
        room: list[int] = []
        by_room: list[tuple[int, int]] = []  # rows that take more: (room, row), sorted
        for negative, item in items:
            length = -negative
            i = bisect.bisect_left(by_room, (length, -1))
            if i == len(by_room):
                row = len(rows)
                rows.append([])
                room.append(self.capacity)
            else:
                row = by_room.pop(i)[1]
            room[row] -= length
            rows[row].append((item, length))
            if not self.max_items or len(rows[row]) < self.max_items:
                bisect.insort(by_room, (room[row], row))
        for row_items in rows:
            self._emit(row_items)
        self._reset()

    def take_rows(self) -> tuple[np.ndarray, np.ndarray]:
        result = np.array(self._out_items, dtype=np.int64), np.array(self._out_row_sizes, dtype=np.int64)
        self._out_items, self._out_row_sizes = [], []
        return result

    def _emit(self, items: list[tuple[int, int]]) -> None:
        self._out_items.extend(item for item, _ in items)
        self._out_row_sizes.append(len(items))

    # The bins' rooms.

    def _bin_with_room(self, room: int) -> int:
        if room == self.capacity:
            return self._empty_bins[0]
        return next(reversed(self._bins_by_room[room]))

    def _move_bin(self, b: int, room: int) -> None:
        old = self._room[b]
        if old == self.capacity:
            self._empty_bins.remove(b)
            empty = not self._empty_bins
        else:
            del self._bins_by_room[old][b]
            empty = not self._bins_by_room[old]
            if empty:
                del self._bins_by_room[old]
        if empty:
            self._rooms.remove(old)
        if room == self.capacity:
            bisect.insort(self._empty_bins, b)
            added = len(self._empty_bins) == 1
        else:
            added = room not in self._bins_by_room
            self._bins_by_room.setdefault(room, {})[b] = None
        if added:
            bisect.insort(self._rooms, room)
        self._room[b] = room

    # The buffer.

    def _largest_buffered(self, room: int) -> int | None:
        """The newest buffered item of the largest length <= room, or None."""
        i = bisect.bisect_right(self._lengths, room)
        return None if i == 0 else next(reversed(self._by_length[self._lengths[i - 1]]))

    def _unbuffer(self, item: int) -> int:
        length = self._age.pop(item)
        del self._by_length[length][item]
        if not self._by_length[length]:
            del self._by_length[length]
            self._lengths.remove(length)
        return length

    # The rule.

    def _push_one(self, length: int) -> None:
        item = self.clock
        self.clock += 1
        self._age[item] = length
        if length not in self._by_length:
            bisect.insort(self._lengths, length)
        self._by_length.setdefault(length, {})[item] = None
        while self._age and self.clock - (next(iter(self._age)) + 1) >= self.buffer_wait:
            self._take(next(iter(self._age)))
        while len(self._age) > self.buffer_size:
            item = self._largest_buffered(self._rooms[-1])
            self._take(self._largest_buffered(self.capacity) if item is None else item)
        while self._open and self.clock - next(iter(self._open.values())) >= self.bin_wait:
            opened = next(iter(self._open.values()))
            for b in sorted(b for b, clock in self._open.items() if clock == opened):
                self._close(b)

    def _take(self, item: int) -> None:
        length = self._unbuffer(item)
        i = bisect.bisect_left(self._rooms, length)
        if i == len(self._rooms):  # fits no bin: close the fullest (none is empty)
            self._close(self._bin_with_room(self._rooms[0]))
            i = bisect.bisect_left(self._rooms, length)
        room = self._rooms[i]
        b = self._bin_with_room(room)
        self._move_bin(b, room - length)
        if self._opened[b] < 0:
            self._opened[b] = self.clock
            self._open[b] = self.clock
        self._contents[b].append((item, length))
        if len(self._contents[b]) == self.max_items:  # at the cap: nothing else goes in
            self._close(b)

    def _close(self, b: int) -> None:
        room = self._room[b]
        while room > 0 and (not self.max_items or len(self._contents[b]) < self.max_items):
            item = self._largest_buffered(room)
            if item is None:
                break
            length = self._unbuffer(item)
            self._contents[b].append((item, length))
            room -= length
        self._emit(self._contents[b])
        self._contents[b] = []
        self._move_bin(b, self.capacity)
        if self._opened[b] >= 0:
            del self._open[b]
            self._opened[b] = -1


# --- Concat-then-split: grain's ConcatThenSplitIterDataset's cutting, as a plan ------

EMPTY_SLICE = -1  # a (start, stop) of (-1, -1): the whole feature, never cut


def concat_then_split(lengths, scalar, capacities, meta, split_full_length, carry, final, max_rows):
    """Cuts a stream of items into rows exactly as grain's ``ConcatThenSplitIterDataset``.

    The items' features are concatenated, one buffer row at a time, per feature up to
    ``capacities[f]`` cells; the item that no longer fits is cut (every non-meta feature
    at the same item) and its rest starts the next row. With ``split_full_length`` false
    an item with a feature of exactly its capacity (none longer) is its own row, emitted
    after the row being filled. grain's quirks are kept on purpose (bit-identical rows):
    a feature of a cut item that did not need cutting gets grain's cut points (its slice
    can come back whole in a later row), scalars are one cell in every piece, meta
    features are whole in every piece, an item added to a full row costs a segment.

    Args:
      lengths: int64[n, F], cells of each item's feature (1 for a scalar).
      scalar: uint8[n, F], the feature is a scalar (one cell in every piece).
      capacities: int64[F], cells per row of each feature.
      meta: uint8[F], meta features: never cut, must fit whole.
      split_full_length: 0 or 1, grain's ``split_full_length_features``.
      carry: int64[F, 2], the slices (start, stop) of item 0 left over from an earlier
        call, (-1, -1) for "whole" (all (-1, -1): item 0 is fresh).
      final: 1 when no item follows item ``n - 1`` (the stream ends: pack what is left).
      max_rows: stop after the first step that brings the rows to at least this many
        (grain's rule can cut one item into rows forever; this bounds one call).

    Returns:
      ``(item, row, start, length, rows, consumed, next_carry, status)``: pieces in
      emission order (int64[p] item index and output row, int64[p, F] first cell in the
      item's feature and cells written), the number of rows, the first item of the step
      that could not be finished (``n`` when ``final``) with its slices ``next_carry``
      (pass both to the next call), and ``status`` 0, or 1 when item ``consumed`` has a
      meta feature longer than its row (grain raises there; ``rows`` come before it).
    """
    n, num_features = lengths.shape
    if num_features == 1 and split_full_length and not meta.any() and not scalar.any():
        plan = _split_one_feature(lengths[:, 0], int(capacities[0]), carry[0].tolist(), final, max_rows)
        if plan is not None:
            return plan
    return _concat_then_split_steps(lengths, scalar, capacities, meta, split_full_length, carry, final, max_rows)


def _split_one_feature(lengths, capacity, carry, final, max_rows):
    """:func:`concat_then_split` for one plain feature, vectorized (or None for a carry
    that is not a slice ``0 <= start < stop <= length`` of item 0).

    Then grain's steps reduce to positions: the items lie back to back at ``begin`` (item
    0 from its carried slice on), row ``r`` holds cells ``[r * capacity, (r + 1) *
    capacity)`` of that stream, and an empty item at a row border belongs to the row
    before it (it joins the full row, which only the next non-empty item closes). A
    non-final plan emits only the rows some later cell closes.
    """
    n = len(lengths)
    sizes = lengths.astype(np.int64)
    offset0, end0 = 0, None
    if carry != [EMPTY_SLICE, EMPTY_SLICE]:
        if not n or not 0 <= carry[0] < carry[1] <= sizes[0]:
            return None
        offset0, end0 = carry
        sizes = sizes.copy()
        sizes[0] = end0 - offset0
    ends = np.cumsum(sizes)
    begin = ends - sizes
    total = int(ends[-1]) if n else 0
    if final:
        available = -(-total // capacity) if total else min(n, 1)
    else:
        available = max(0, -(-total // capacity) - 1)
    rows = min(available, max_rows)
    if final and rows == available:
        consumed, next_carry = n, [EMPTY_SLICE, EMPTY_SLICE]
    elif rows == 0:
        consumed, next_carry = 0, list(carry)
    else:
        border = rows * capacity
        consumed = int(np.searchsorted(ends, border, side="right"))  # the item holding cell `border`
        if begin[consumed] == border:
            next_carry = [EMPTY_SLICE, EMPTY_SLICE]
        else:
            offset = offset0 if consumed == 0 else 0
            stop = end0 if consumed == 0 and end0 is not None else int(lengths[consumed])
            next_carry = [offset + border - int(begin[consumed]), stop]
    empty = sizes == 0
    at_border = empty & (begin > 0) & (begin % capacity == 0)
    first_row = begin // capacity - at_border
    last_row = np.where(empty, first_row, (ends - 1) // capacity)
    last_row = np.minimum(last_row, rows - 1)
    count = np.maximum(last_row - first_row + 1, 0)
    item = np.repeat(np.arange(n, dtype=np.int64), count)
    within = np.arange(len(item), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    row = np.repeat(first_row, count) + within
    piece_begin = np.maximum(begin[item], row * capacity)
    piece_end = np.minimum(ends[item], (row + 1) * capacity)
    start = piece_begin - begin[item]
    if offset0 and len(item):
        start[item == 0] += offset0
    return (
        item,
        row.astype(np.int64),
        start.reshape(-1, 1),
        (piece_end - piece_begin).reshape(-1, 1),
        rows,
        consumed,
        np.array(next_carry, dtype=np.int64).reshape(1, 2),
        0,
    )


def _concat_then_split_steps(lengths, scalar, capacities, meta, split_full_length, carry, final, max_rows):
    """:func:`concat_then_split` step by step, as grain runs (every case; the reference)."""
    n, num_features = lengths.shape
    caps = capacities.tolist()
    is_meta = [bool(m) for m in meta.tolist()]
    lens, scal = lengths.tolist(), scalar.tolist()
    items, rows_of, starts, cells = [], [], [], []
    rows = 0

    def whole(e, f):
        return (0, 1 if scal[e][f] else lens[e][f])

    def sliced_length(e, f, sl):
        if scal[e][f]:
            return 1
        if is_meta[f] or sl[f][0] == EMPTY_SLICE:
            return lens[e][f]
        size = lens[e][f]
        return max(0, min(sl[f][1], size) - min(sl[f][0], size))

    def add(e, sl, tokens, buffer):
        """grain's _maybe_add_to_buffer: None (all added), or the slices left over."""
        new, points, cut = [0] * num_features, [0] * num_features, False
        for f in range(num_features):
            length = sliced_length(e, f, sl)
            available = caps[f] - tokens[f]
            if is_meta[f]:
                if length > available:
                    return sl  # unchanged: a meta feature must fit whole
                new[f] = length
            elif length > available:
                cut = True
                points[f] = (0 if sl[f][0] == EMPTY_SLICE else sl[f][0]) + available
                new[f] = available
            else:
                points[f] = new[f] = length
        rest = None
        if not cut:
            buffer.append((e, sl))
        elif any(points[f] for f in range(num_features) if not is_meta[f]):
            left, rest = list(sl), list(sl)
            for f in range(num_features):
                if not is_meta[f]:
                    begin, end = whole(e, f) if sl[f][0] == EMPTY_SLICE else sl[f]
                    left[f], rest[f] = (begin, points[f]), (points[f], end)
            buffer.append((e, left))
        else:
            rest = sl  # cut at the very start: nothing of it goes into this row
        for f in range(num_features):
            tokens[f] += new[f]
        return rest

    def emit(row_pieces):
        nonlocal rows
        for e, sl in row_pieces:
            items.append(e)
            rows_of.append(rows)
            first, size = [], []
            for f in range(num_features):
                if scal[e][f]:
                    first.append(0), size.append(1)
                elif is_meta[f] or sl[f][0] == EMPTY_SLICE:
                    first.append(0), size.append(lens[e][f])
                else:
                    first.append(min(sl[f][0], lens[e][f]))
                    size.append(sliced_length(e, f, sl))
            starts.append(first)
            cells.append(size)
        rows += 1

    empty = [(EMPTY_SLICE, EMPTY_SLICE)] * num_features
    carried = [tuple(pair) for pair in carry.tolist()]
    remainder = (0, carried) if n and carried != empty else None
    fresh = 1 if remainder is not None else 0  # next item to pull
    consumed, next_carry, status = 0, carried, 0
    while True:
        step_start = remainder if remainder is not None else (fresh, empty)
        tokens, buffer, whole_rows = [0] * num_features, [], []
        stopped = broke = False
        while True:
            if remainder is not None:
                rest = add(*remainder, tokens, buffer)
                if rest is not None:
                    remainder, broke = (remainder[0], rest), True
                    break
                remainder = None
            if fresh == n:
                stopped = True
                break
            e = fresh
            fresh += 1
            if not split_full_length:
                full = [1 if scal[e][f] else lens[e][f] for f in range(num_features)]
                if all(full[f] <= caps[f] for f in range(num_features)) and any(
                    full[f] == caps[f] for f in range(num_features)
                ):
                    whole_rows.append(e)
                    continue
            rest = add(e, empty, tokens, buffer)
            if rest is not None:
                remainder, broke = (e, rest), True
                break
        if stopped and not final:
            consumed, next_carry = step_start[0], list(step_start[1])
            break
        if buffer:
            emit(buffer)
        for e in whole_rows:
            emit([(e, empty)])
        if stopped:
            consumed, next_carry = n, empty
            break
        if broke and not buffer and not whole_rows:
            consumed, next_carry, status = remainder[0], list(remainder[1]), 1
            break
        if rows >= max_rows:
            consumed, next_carry = remainder if remainder is not None else (fresh, empty)
            next_carry = list(next_carry)
            break
    p = len(items)
    return (
        np.array(items, dtype=np.int64),
        np.array(rows_of, dtype=np.int64),
        np.array(starts, dtype=np.int64).reshape(p, num_features),
        np.array(cells, dtype=np.int64).reshape(p, num_features),
        rows,
        consumed,
        np.array(next_carry, dtype=np.int64).reshape(num_features, 2),
        status,
    )


# Rows on demand: a packing index's rows gathered from the corpus (xbatch.packing.packed_rows)
# ---------------------------------------------------------------------------------------


def gather_packed_rows(tokens, document_starts, document_ends, first_document, piece_document, piece_start,
                       piece_length, row_offsets, rows, eod_token_id, pad_token_id, shift_targets,
                       out_inputs, out_targets, out_inputs_segmentation, out_targets_segmentation,
                       out_inputs_position, out_targets_position):
    """Writes the LLM fields of index rows ``rows`` straight from the corpus.

    Row ``rows[i]`` of the index holds pieces ``row_offsets[r] .. row_offsets[r + 1]``,
    laid out from cell 0 in that order. Piece ``p`` is cells ``piece_start[p] ..
    piece_start[p] + piece_length[p] - 1`` of document ``piece_document[p] -
    first_document``'s cells: its tokens ``tokens[document_starts[d]:document_ends[d]]``
    followed by the EOD. Each piece gets the next segment id (from 1) and positions from
    0; the rest of the row is padding with segment id and position 0. The packed row goes
    to the unshifted fields (``targets*`` for shift inputs, ``inputs*`` for shift
    targets); the others are it shifted by one cell (see
    :func:`xbatch.packing.pieces.llm_fields`).

    Returns -1; or ``i`` >= 0, the first requested row that is not in the index or whose
    pieces lie outside it, their documents, the corpus or the row; or ``-2 - i`` for the
    first requested row holding a token id outside ``[0, 2**31)`` (a row's pieces are
    checked in order, each piece's place before its tokens). The outputs are unspecified
    after a failure.
    """
    n, seq_len = out_targets.shape
    size, num_documents = tokens.shape[0], document_starts.shape[0]
    num_pieces, num_rows = piece_document.shape[0], row_offsets.shape[0] - 1
    # Each requested row: in the index, its piece range inside the pieces.
    row_ok = (rows >= 0) & (rows < num_rows)
    safe = np.where(row_ok, rows, 0)
    first = np.where(row_ok, row_offsets[safe], 0) if num_rows >= 1 else np.zeros(n, np.int64)
    last = np.where(row_ok, row_offsets[safe + 1], 0) if num_rows >= 1 else np.zeros(n, np.int64)
    row_ok &= (first >= 0) & (last >= first) & (last <= num_pieces)
    counts = np.where(row_ok, last - first, 0)
    # Every piece of those rows in order, and its place: fill_before cells into its row.
    total = int(counts.sum())
    before = np.cumsum(counts) - counts
    request = np.repeat(np.arange(n, dtype=np.int64), counts)
    piece = np.arange(total, dtype=np.int64) + np.repeat(np.where(row_ok, first, 0) - before, counts)
    raw = np.asarray(piece_document[piece], dtype=np.int64)
    start = np.asarray(piece_start[piece], dtype=np.int64)
    length = np.asarray(piece_length[piece], dtype=np.int64)
    # (raw - first_document may wrap for raw < first_document; those are refused anyway.)
    doc_ok = (raw >= first_document) & (raw - first_document < num_documents)
    document = np.where(doc_ok, raw - first_document, 0)
    if num_documents:
        begin, end = document_starts[document], document_ends[document]
    else:
        begin = end = np.zeros(total, np.int64)
    cumulative = np.cumsum(length)
    fill_before = cumulative - length - np.repeat(np.concatenate([[0], cumulative])[before], counts)
    piece_ok = (doc_ok & (begin >= 0) & (end >= begin) & (end <= size) & (start >= 0) & (length >= 1)
                & (length <= seq_len - fill_before) & (start + length <= end - begin + 1))
    # Token ids of the pieces whose place is good.
    token_cells = np.where(piece_ok, np.where(start + length <= end - begin, length, length - 1), 0)
    token_base = np.cumsum(token_cells) - token_cells
    source = np.repeat(begin + start - token_base, token_cells) + np.arange(int(token_cells.sum()), dtype=np.int64)
    values = tokens[source]
    bad_value = (values < 0) | (values > _INT32_MAX)
    token_bad = np.zeros(total, dtype=bool)
    token_bad[np.repeat(np.arange(total), token_cells)[bad_value]] = True
    # The first failure in request order (a bad row has no pieces).
    events = np.flatnonzero(~piece_ok | token_bad)
    bad_rows = np.flatnonzero(~row_ok)
    first_row = int(bad_rows[0]) if bad_rows.size else n
    if events.size and int(request[events[0]]) < first_row:
        p = int(events[0])
        return int(request[p]) if not piece_ok[p] else -2 - int(request[p])
    if first_row < n:
        return first_row
    # Lay out every cell: tokens, then the EOD where a piece reaches its document's end.
    if shift_targets:
        packed, segmentation, positions = out_inputs, out_inputs_segmentation, out_inputs_position
    else:
        packed, segmentation, positions = out_targets, out_targets_segmentation, out_targets_position
    packed[...] = pad_token_id
    segmentation[...] = 0
    positions[...] = 0
    num_cells = int(cumulative[-1]) if total else 0
    cell = np.arange(num_cells, dtype=np.int64) - np.repeat(cumulative - length, length)
    where = np.repeat(request * seq_len + fill_before, length) + cell
    cell_values = np.full(num_cells, eod_token_id, dtype=np.int32)
    cell_values[cell < np.repeat(token_cells, length)] = values
    packed.reshape(-1)[where] = cell_values
    segmentation.reshape(-1)[where] = np.repeat(np.arange(total, dtype=np.int64) - np.repeat(before, counts) + 1,
                                                length)
    positions.reshape(-1)[where] = cell
    if shift_targets:  # targets: the next cell's token, segment and position
        for out, source_field, fill in ((out_targets, packed, pad_token_id), (out_targets_segmentation, segmentation, 0),
                                        (out_targets_position, positions, 0)):
            out[:, :-1] = source_field[:, 1:]
            out[:, -1] = fill
    else:  # inputs: the EOD, then the tokens one cell later; the same segments
        out_inputs[:, 0] = eod_token_id
        out_inputs[:, 1:] = packed[:, :-1]
        out_inputs_segmentation[...] = segmentation
        out_inputs_position[...] = positions
    return -1


# --- Concat-then-split: one feature's rows in one pass (values, segment ids, positions) --


def write_split_rows(elements, key, items, rows_of, starts, cells, first_row, out_values, out_ids):
    """Writes every cell of one feature's rows of a concat-then-split plan.

    Piece ``p`` is ``elements[items[p]][key][starts[p] : starts[p] + cells[p]]``; the pieces
    lie back to back in their rows (``rows_of``, non-decreasing; row ``first_row`` is
    ``out_values[0]``), from cell 0, in order.
    ``out_values[r]`` gets the pieces, zeros after them; unless ``out_ids`` is None,
    ``out_ids[r, 0]`` gets each piece's segment id (1-based per row; an empty piece takes
    one too) and ``out_ids[r, 1]`` its positions (0-based per piece), zeros after them.

    Returns -1, or the first piece whose element is not a dict holding, under ``key``, a
    plain C-contiguous array of ``out_values``' dtype and cell shape (``out_values.shape[2:]``)
    with those cells, or that does not fit its row or shares memory with ``out_values``.
    The rows are then partly written (the caller writes the feature another way).
    Pieces naming an element or a row outside the arrays, rows out of order, or negative
    starts or cells raise ``ValueError`` (the rows before them possibly written).
    """
    if out_values.ndim < 2 or not out_values.flags.c_contiguous or out_values.dtype.hasobject:
        raise ValueError("write_split_rows: out_values must be a C-contiguous [rows, cells, ...] array without objects")
    n = len(items)
    if not len(rows_of) == len(starts) == len(cells) == n:
        raise ValueError("write_split_rows: items, rows_of, starts and cells must have one entry per piece")
    rows, capacity = out_values.shape[:2]
    if out_ids is not None and out_ids.shape != (rows, 2, capacity):
        raise ValueError("write_split_rows: out_ids must be int32[rows, 2, cells]")
    out_dtype, cell_shape, ndim = out_values.dtype, out_values.shape[2:], out_values.ndim - 1
    ids = out_ids is not None
    iota = np.arange(capacity, dtype=np.int32)
    row, cursor, segment = 0, 0, 0
    # The compiled kernel's loop, piece by piece: checks, then three slice writes.
    for p, (e, r, s, c) in enumerate(zip(items.tolist(), (rows_of - first_row).tolist(), starts.tolist(), cells.tolist())):
        if not 0 <= e < len(elements):
            raise ValueError(f"items: piece {p} names element {e}, expected [0, {len(elements)})")
        if r < row or r >= rows:
            raise ValueError(
                f"rows: piece {p} has row {r + first_row}, expected non-decreasing rows in"
                f" [{first_row + row}, {first_row} + {rows})"
            )
        if s < 0 or c < 0:
            raise ValueError(f"starts, cells: piece {p} has start {s} and {c} cells, expected >= 0")
        while row < r:  # rows are written in order: close the ones before this piece
            _close_split_row(out_values, out_ids, row, cursor)
            row, cursor, segment = row + 1, 0, 0
        element = elements[e]
        value = element.get(key) if type(element) is dict else None
        if not (
            type(value) is np.ndarray
            and value.ndim == ndim
            and value.dtype == out_dtype
            and value.shape[1:] == cell_shape
            and value.flags.c_contiguous
            and s <= value.shape[0]
            and c <= value.shape[0] - s
            and c <= capacity - cursor
        ):
            return p
        if c:
            if np.may_share_memory(value, out_values) and np.shares_memory(value[s : s + c], out_values):
                return p
            out_values[row, cursor : cursor + c] = value[s : s + c]
        if ids:
            segment += 1
            out_ids[row, 0, cursor : cursor + c] = segment
            out_ids[row, 1, cursor : cursor + c] = iota[:c]
        cursor += c
    while row < rows:
        _close_split_row(out_values, out_ids, row, cursor)
        row, cursor = row + 1, 0
    return -1


def _close_split_row(out_values, out_ids, row, cursor):
    """Zeroes a row's cells from ``cursor`` on (values and, unless None, both id rows)."""
    out_values[row, cursor:] = 0
    if out_ids is not None:
        out_ids[row, :, cursor:] = 0


def element_lengths(elements, keys, start):
    """The lengths (``value.shape[0]``, key by key) of ``elements[start:]`` up to the first
    that is not a ``dict`` of exactly ``len(keys)`` entries holding, under every key, a
    plain ``np.ndarray`` of >= 1 dims; a flat list of ints (``len(keys)`` per element)."""
    if start < 0:
        raise ValueError(f"start: expected >= 0, got {start}")
    out = []
    for element in elements[start:]:
        if type(element) is not dict or len(element) != len(keys):
            break
        values = [element.get(key) for key in keys]
        if not all(type(v) is np.ndarray and v.ndim >= 1 for v in values):
            break
        out += [v.shape[0] for v in values]
    return out


# ---------------------------------------------------------------------------------------
# Loss masks (issue 13): a document mask with its EOD cells, and the targets
# segmentation of the targets trained on with the loss tokens per row.


def eod_cell_mask(mask, lengths, eod_loss, out):
    """Writes each document's mask followed by one ``eod_loss`` cell, document after
    document. Returns -1, else the index in ``mask`` of the first value that is not 0 or
    1 (nothing is written then)."""
    bad = np.flatnonzero(mask.view(np.uint32) > 1)  # a negative value is huge as uint32
    if bad.size:
        return int(bad[0])
    ends = np.cumsum(lengths)
    eod_cells = ends + np.arange(lengths.shape[0])  # each document's EOD, in out
    keep = np.ones(out.shape[0], bool)
    keep[eod_cells] = False
    out[keep] = mask
    out[eod_cells] = eod_loss
    return -1


def trained_segmentation(loss_mask, lengths, bins, shift, out, out_counts):
    """Writes every cell of ``out``: a placed cell's 1-based segment id in its row where
    its mask is non-zero, 0 elsewhere; with ``shift`` 1 everything moves one cell left (a
    row's first cell drops out, its last column is 0). ``out_counts[b]`` gets the
    non-zero cells of row ``b``. Returns -1, else the index of the first item that does
    not fit its row (nothing is written then)."""
    rows, row_length = out.shape
    n = lengths.shape[0]
    # Items of a row lie back to back in placement order: a stable sort by row gives each
    # item's rank in its row and its first column there, without a loop.
    order = np.argsort(bins, kind="stable")
    sorted_bins, sorted_lengths = bins[order], lengths[order]
    group_start = np.ones(n, bool)
    group_start[1:] = sorted_bins[1:] != sorted_bins[:-1]
    first_of_group = np.flatnonzero(group_start)
    group = np.cumsum(group_start) - 1
    ends = np.cumsum(sorted_lengths)
    row_ends = ends - (ends - sorted_lengths)[first_of_group][group]  # each item's end in its row
    over = np.flatnonzero(row_ends > row_length)
    if over.size:
        return int(order[over].min())  # the first item, in placement order, that leaves its row
    ranks = np.empty(n, np.int32)
    ranks[order] = np.arange(n) - first_of_group[group] + 1
    values = np.repeat(ranks, lengths)
    values *= loss_mask != 0
    out[...] = 0
    if n and (order == np.arange(n)).all():
        # Rows in order (concat-then-split, whole-corpus windows): one copy per row.
        firsts = (ends - sorted_lengths)[first_of_group].tolist()
        totals = row_ends[np.r_[first_of_group[1:], n] - 1].tolist()
        for b, first, total in zip(sorted_bins[first_of_group].tolist(), firsts, totals):
            if total > shift:
                out[b, :total - shift] = values[first + shift:first + total]
    else:
        starts = np.empty(n, np.int64)
        starts[order] = row_ends - sorted_lengths
        offsets = np.cumsum(lengths) - lengths
        for offset, length, b, start in zip(offsets.tolist(), lengths.tolist(), bins.tolist(), starts.tolist()):
            skip = 1 if shift and start == 0 else 0  # no target for a row's first cell
            if length > skip:
                out[b, start + skip - shift:start + length - shift] = values[offset + skip:offset + length]
    if shift:
        out[:, -1] = 0
    out_counts[...] = np.count_nonzero(out, axis=1)
    return -1
