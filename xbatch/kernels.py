"""The packing kernels, validated: call these, not the backend modules.

Every function checks its arguments here, in Python, and only then hands them to the
active backend (``xbatch.BACKEND``): the compiled Cython kernels or their NumPy twins.
Bad input raises ``TypeError``/``ValueError`` naming the argument, its value and what was
expected; no input can make the compiled code read or write out of bounds. That rests
on three layers: these checks (every length within a row, sums computed without int64
wrap-around, sizes and alignments bounded, outputs that share memory with an input
refused), overflow-free index arithmetic in the kernels, and a bounds assertion per item
in the compiled loops that stays on in the optimized build (a violation is a
``RuntimeError`` naming an internal error, never a write).

Native-byte-order int32 and int64 arrays take the compiled path; other dtypes (e.g.
bfloat16, float32, big-endian integers) and N-d features take the NumPy path inside the
same call, with NumPy's casting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from . import _backend, _kernels_numpy
from ._checks import MAX_SIZE, describe, exact_sum, positive_int, raise_overlap

ALGORITHMS = ("first_fit", "best_fit")
_COMPILED_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
_INT32_MAX = int(np.iinfo(np.int32).max)

__all__ = [
    "ALGORITHMS",
    "BinPacker",
    "RollingPacker",
    "ConcatSplitPlan",
    "concat_then_split",
    "document_borders",
    "pack_rows",
    "scatter_rows",
    "shift_left",
    "shift_right",
    "gather_packed_rows",
    "element_lengths",
    "write_split_rows",
    "eod_cell_mask",
    "trained_segmentation",
]


def _int_array(name: str, value: Any, ndim: int) -> np.ndarray:
    """``value`` as a C-contiguous int64 array of ``ndim`` dimensions, or a clear error."""
    array = np.asarray(value)
    if array.size == 0 and array.dtype == np.float64 and not isinstance(value, np.ndarray):
        array = array.astype(np.int64)  # an empty list has no integer dtype of its own
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name}: expected an integer array, got {describe(value)}")
    if array.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got {describe(value)}")
    return np.ascontiguousarray(array, dtype=np.int64)


def _per_feature(name: str, value: Any, num_features: int, default: int) -> np.ndarray:
    if value is None:
        return np.full(num_features, default, dtype=np.int64)
    array = _int_array(name, np.atleast_1d(value), 1)
    if array.shape != (num_features,):
        raise ValueError(f"{name}: expected {num_features} values (one per feature), got {describe(value)}")
    return array


def BinPacker(  # noqa: N802 - a factory that stands for the backend's class
    capacities: Any,
    *,
    num_bins: int,
    alignments: Any = None,
    max_items_per_bin: int | None = None,
    algorithm: str = "first_fit",
):
    """An online first-fit or best-fit bin packer over one or more features.

    Args:
      capacities: cells per bin for each feature (an int, or one int per feature), > 0.
      num_bins: number of bins, >= 1.
      alignments: per feature, a bin's next free cell rounds up to a multiple of this
        after each item (default 1: no rounding). One above the feature's capacity acts
        as capacity + 1 (and ``alignments`` reports that): either way the bin takes
        nothing more after a non-empty item.
      max_items_per_bin: at most this many items per bin (default: no cap).
      algorithm: ``"first_fit"`` (lowest-index bin with room) or ``"best_fit"`` (the
        bin with room and the most used cells summed over features, ties to the lowest
        index) -- grain's two rules, bit for bit.

    Returns:
      The active backend's ``BinPacker``. ``place_one(lengths)`` places one item (a tuple
      or list of F ints, or an int when F is 1; floats and bools are refused) and
      returns its bin or -1; ``place(lengths[n, F], out_bins[n])`` places items in order
      until one fits no bin and returns how many were placed; ``reset()`` empties the
      bins; ``used``, ``counts`` and ``num_used_bins`` describe the bins. Single-feature
      placement costs O(log num_bins) per item on the compiled backend. Memory follows
      the bins in use (a packer doubles its bins as they fill), not ``num_bins``. A
      packer is for one thread at a time: a call while another thread is inside it
      raises ``RuntimeError``.
    """
    capacity_array = _int_array("capacities", np.atleast_1d(capacities), 1)
    if capacity_array.size == 0 or np.any(capacity_array <= 0) or np.any(capacity_array > MAX_SIZE):
        raise ValueError(
            f"capacities: expected one or more integers in 1..2**62, got {describe(capacities)}"
        )
    num_features = capacity_array.size
    alignment_array = _per_feature("alignments", alignments, num_features, 1)
    if np.any(alignment_array < 1):
        raise ValueError(f"alignments: expected integers >= 1, got {describe(alignments)}")
    # Keeps the kernels' int64 arithmetic (used cells rounded up) far from overflow.
    alignment_array = np.minimum(alignment_array, capacity_array + 1)
    num_bins = positive_int("num_bins", num_bins)
    cap = 0 if max_items_per_bin is None else positive_int("max_items_per_bin", max_items_per_bin)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {algorithm!r}")
    return _backend.impl.BinPacker(
        capacity_array, alignment_array, num_bins, cap, algorithm == "best_fit"
    )


def _check_placement(
    lengths: Any, bins: Any, out: np.ndarray, alignment: Any
) -> tuple[np.ndarray, np.ndarray, int]:
    """(lengths, bins, alignment) checked against the rows ``out`` [rows, row_length, ...]:
    every length fits a row on its own, so no sum of them wraps around int64."""
    rows, row_length = out.shape[:2]
    lengths = _int_array("lengths", lengths, 1)
    bins = _int_array("bins", bins, 1)
    alignment = positive_int("alignment", alignment, maximum=2**63 - 1)  # any: kernels saturate
    if lengths.shape != bins.shape:
        raise ValueError(
            f"bins: expected one bin per item ({lengths.shape[0]} items), got {describe(bins)}"
        )
    if lengths.size and lengths.min() < 0:
        raise ValueError(f"lengths: expected lengths >= 0, got minimum {lengths.min()}")
    if lengths.size and lengths.max() > row_length:
        first = int(np.argmax(lengths > row_length))
        raise ValueError(
            f"lengths: item {first} (length {lengths[first]}) is longer than a row of {row_length} cells"
        )
    if bins.size and (bins.min() < 0 or bins.max() >= rows):
        raise ValueError(
            f"bins: expected bin indices in [0, {rows}), got range [{bins.min()}, {bins.max()}]"
        )
    for name, array in (("lengths", lengths), ("bins", bins)):
        if np.may_share_memory(array, out):
            raise_overlap(name, "the output rows")
    return lengths, bins, alignment


def _check_rows(name: str, array: Any, dtype=None, min_ndim: int = 2) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.ndim < min_ndim:
        raise ValueError(f"{name}: expected a NumPy array with >= {min_ndim} dims (rows, row_length, ...), got {describe(array)}")
    if dtype is not None and array.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {array.dtype}")
    if not array.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array")
    return array


def _raise_overflow(failed: int, lengths: np.ndarray, bins: np.ndarray, row_length: int) -> None:
    if failed >= 0:
        raise ValueError(
            f"lengths: item {failed} (length {lengths[failed]}) does not fit row {bins[failed]} "
            f"of {row_length} cells after the items placed before it"
        )


def pack_rows(lengths, bins, out_segment_ids, out_positions, *, alignment: int = 1) -> None:
    """Writes segment ids (1-based per row) and positions (0-based per item) of items.

    Items are laid out in order, each at its row's next free cell (rounded up to a
    multiple of ``alignment`` after every item), as the packers place them. Every cell
    is written: cells no item covers get 0 (padding), so the rows may start uninitialized.

    Args:
      lengths: int[n], tokens per item, in placement order; each at most a row.
      bins: int[n], each item's row.
      out_segment_ids, out_positions: int32[rows, row_length], written in place; they
        must not share memory with each other or with ``lengths``/``bins``.
      alignment: cells (>= 1).
    """
    out_segment_ids = _check_rows("out_segment_ids", out_segment_ids, np.int32)
    out_positions = _check_rows("out_positions", out_positions, np.int32)
    if out_segment_ids.shape != out_positions.shape or out_segment_ids.ndim != 2:
        raise ValueError(
            f"out_positions: expected the 2-d shape of out_segment_ids {out_segment_ids.shape}, "
            f"got {out_positions.shape}"
        )
    if out_segment_ids.shape[1] > _INT32_MAX:
        raise ValueError(
            f"out_positions: rows of {out_segment_ids.shape[1]} cells have positions beyond int32"
        )
    lengths, bins, alignment = _check_placement(lengths, bins, out_segment_ids, alignment)
    if np.may_share_memory(out_segment_ids, out_positions):
        raise_overlap("out_positions", "out_segment_ids")
    for name, array in (("lengths", lengths), ("bins", bins)):
        if np.may_share_memory(array, out_positions):
            raise_overlap(name, "out_positions")
    if lengths.shape[0] > _INT32_MAX:
        raise ValueError(f"lengths: {lengths.shape[0]} items have segment ids beyond int32")
    compiled = (
        out_segment_ids.size
        and out_segment_ids.flags.c_contiguous
        and out_positions.flags.c_contiguous
    )
    impl = _backend.impl if compiled else _kernels_numpy
    failed = impl.pack_rows(lengths, bins, alignment, out_segment_ids, out_positions)
    _raise_overflow(failed, lengths, bins, out_segment_ids.shape[1])


def _padding_value(padding: Any, dtype: np.dtype) -> Any:
    """``padding`` in ``dtype``, converted as ``np.full`` would (default 0)."""
    try:
        return np.array(0 if padding is None else padding, dtype=dtype)[()]
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"padding: expected a value of dtype {dtype}, got {padding!r} ({exc})") from exc


def _join_items(items: Sequence[Any], lengths: np.ndarray, out_values: np.ndarray) -> np.ndarray:
    """The items back to back, each cast and broadcast to ``(length, ...)`` as a NumPy
    assignment into its cells would."""
    shapes = [(int(n), *out_values.shape[2:]) for n in lengths]
    try:
        return np.concatenate(
            [np.broadcast_to(np.asarray(v), shape) for v, shape in zip(items, shapes)]
            or [np.zeros((0, *out_values.shape[2:]))],
            dtype=out_values.dtype,
            casting="unsafe",
        )
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an int beyond int64
        raise ValueError(
            f"values: every item must fit its cells {shapes[:3]}...: {exc}"
        ) from exc


def scatter_rows(values, lengths, bins, out_values, *, alignment: int = 1, padding: Any = None) -> None:
    """Writes items into their rows of ``out_values`` and ``padding`` everywhere else.

    Every cell is written, so ``out_values`` may start uninitialized (``np.empty``).

    Args:
      values: the items' tokens, either back to back in one array [sum(lengths), ...] in
        placement order, or a sequence with one array per item (each cast and broadcast
        to its cells like a NumPy assignment; 1-d arrays of ``out_values``' dtype are
        copied straight from where they are, without joining them first).
      lengths, bins, alignment: as for :func:`pack_rows`.
      out_values: [rows, row_length, ...], written in place; must not share memory
        with ``values`` (or any item), ``lengths`` or ``bins``. 1-d native-byte-order
        int32/int64 features take the compiled path, anything else NumPy.
      padding: the value of cells no item covers (default 0).
    """
    out_values = _check_rows("out_values", out_values)
    lengths, bins, alignment = _check_placement(lengths, bins, out_values, alignment)
    fill = _padding_value(padding, out_values.dtype)
    compiled = (
        np.ndim(fill) == 0
        and out_values.ndim == 2
        and out_values.dtype in _COMPILED_DTYPES
        and out_values.flags.c_contiguous
        and out_values.size
    )
    if isinstance(values, (list, tuple)):
        if len(values) != lengths.shape[0]:
            raise ValueError(
                f"values: expected one array per item ({lengths.shape[0]} items), got {len(values)}"
            )
        if compiled:
            failed = _backend.impl.scatter_item_rows(list(values), lengths, bins, alignment, out_values, fill)
            if failed > -2:
                return _raise_overflow(failed, lengths, bins, out_values.shape[1])
        for i, item in enumerate(values):
            if isinstance(item, np.ndarray) and np.may_share_memory(item, out_values):
                raise_overlap(f"values (item {i})", "out_values")
        values = _join_items(values, lengths, out_values)
    values = np.asarray(values)
    if np.may_share_memory(values, out_values):
        raise_overlap("values", "out_values")
    if values.ndim != out_values.ndim - 1 or values.shape[1:] != out_values.shape[2:]:
        raise ValueError(
            f"values: expected shape (tokens, {', '.join(map(str, out_values.shape[2:]))}) "
            f"to match out_values {out_values.shape}, got {describe(values)}"
        )
    total = exact_sum(lengths, out_values.shape[1])
    if total != values.shape[0]:
        raise ValueError(
            f"lengths: expected lengths summing to the {values.shape[0]} tokens of values, "
            f"got a sum of {total}"
        )
    impl = _kernels_numpy
    if compiled:
        impl = _backend.impl
        values = np.ascontiguousarray(values, dtype=out_values.dtype)
    failed = impl.scatter_rows(values, lengths, bins, alignment, out_values, fill)
    _raise_overflow(failed, lengths, bins, out_values.shape[1])


def _token_rows(name: str, rows: Any) -> tuple[np.ndarray, Any]:
    """(rows as an array, the backend module to use for them)."""
    array = np.asarray(rows)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array (rows, row_length), got {describe(rows)}")
    if array.dtype in _COMPILED_DTYPES:
        return np.ascontiguousarray(array), _backend.impl
    return array, _kernels_numpy


def document_borders(segmentation: Any) -> np.ndarray:
    """bool[B, L] document borders of a segmentation matrix (seed 000's rule).

    ``borders[:, 0]`` is True and ``borders[:, i] = seg[:, i] != seg[:, i - 1]``: a
    recurrent model resets its state there. ``[1,1,2,2,2,3] -> [1,0,1,0,0,1]``; padding
    after the last document starts a border too: ``[1,1,1,1,2,2,2,0] -> [1,0,0,0,1,0,0,1]``.
    """
    array = np.asarray(segmentation)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"segmentation: expected an integer array, got {describe(segmentation)}")
    array, impl = _token_rows("segmentation", array)
    return impl.document_borders(array)


def _fill_scalar(name: str, fill: Any, dtype: np.dtype):
    value = np.asarray(fill)
    if value.ndim != 0 or not np.can_cast(np.min_scalar_type(value), dtype, casting="same_kind"):
        raise ValueError(f"{name}: expected a scalar that fits dtype {dtype}, got {fill!r}")
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if not info.min <= int(value) <= info.max:
            raise ValueError(f"{name}: {fill!r} does not fit dtype {dtype}")
    return value.astype(dtype)[()]


def _shift(rows: Any, fill: Any, out: np.ndarray | None, direction: str) -> np.ndarray:
    array, impl = _token_rows("rows", rows)
    if out is None:
        out = np.empty_like(array)
    elif not (
        isinstance(out, np.ndarray)
        and out.shape == array.shape
        and out.dtype == array.dtype
        and out.flags.writeable
    ):
        raise ValueError(
            f"out: expected a writeable array of shape {array.shape} and dtype {array.dtype}, "
            f"got {describe(out)}"
        )
    elif np.shares_memory(out, array):
        raise ValueError("out: must not overlap rows")
    if impl is not _kernels_numpy and not out.flags.c_contiguous:
        impl = _kernels_numpy
    shift = impl.shift_right if direction == "right" else impl.shift_left
    shift(array, _fill_scalar("fill", fill, array.dtype), out)
    return out


def shift_right(rows: Any, fill: Any = 0, *, out: np.ndarray | None = None) -> np.ndarray:
    """[B, L] rows moved one cell right along L, ``fill`` in column 0.

    Written into ``out`` (same shape and dtype, not overlapping ``rows``) if given, else
    into a new array; returns it.
    """
    return _shift(rows, fill, out, "right")


def shift_left(rows: Any, fill: Any = 0, *, out: np.ndarray | None = None) -> np.ndarray:
    """[B, L] rows moved one cell left along L, ``fill`` in the last column.

    Written into ``out`` (same shape and dtype, not overlapping ``rows``) if given, else
    into a new array; returns it.
    """
    return _shift(rows, fill, out, "left")


# ---------------------------------------------------------------------------------------
# Corpus sources (issue 12): grain's index shuffle, vectorized; gathering documents.
# ---------------------------------------------------------------------------------------

__all__ += ["gather_ranges", "index_shuffle", "index_shuffle_keys"]

_UINT32 = 2**32
_SEED_SEQ_INIT = 0x8B8B8B8B


def index_shuffle_keys(seed: int, rounds: int) -> np.ndarray:
    """uint32[rounds], the round keys grain derives from ``seed``: ``std::seed_seq{seed}``
    generating ``rounds`` values (the C++ standard's algorithm, [rand.util.seedseq])."""
    mask = _UINT32 - 1
    n, entropy = rounds, [seed & mask]
    out = [_SEED_SEQ_INIT] * n
    t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
    p = (n - t) // 2
    q = p + t
    m = max(len(entropy) + 1, n)

    def twist(x: int) -> int:
        return x ^ (x >> 27)

    for k in range(m):
        r1 = 1664525 * twist(out[k % n] ^ out[(k + p) % n] ^ out[(k - 1) % n]) & mask
        if k == 0:
            r2 = r1 + len(entropy)
        elif k <= len(entropy):
            r2 = r1 + k % n + entropy[k - 1]
        else:
            r2 = r1 + k % n
        r2 &= mask
        out[(k + p) % n] = (out[(k + p) % n] + r1) & mask
        out[(k + q) % n] = (out[(k + q) % n] + r2) & mask
        out[k % n] = r2
    for k in range(m, m + n):
        r3 = 1566083941 * twist((out[k % n] + out[(k + p) % n] + out[(k - 1) % n]) & mask) & mask
        r4 = (r3 - k % n) & mask
        out[(k + p) % n] ^= r3
        out[(k + q) % n] ^= r4
        out[k % n] = r4
    return np.array(out, dtype=np.uint32)


def _simon_word_bits(max_index: int) -> int:
    """Half grain's block size: ``max(ceil(log2(max_index)) rounded up to even, 16)``, <= 64.

    grain computes ``ceil(log2(max_index))`` in double precision, so ``max_index = 2**k``
    gets a k-bit block although it needs k + 1 bits: with k even and >= 16 the top index
    then maps like index 0 (grain's permutation repeats one element and drops one). We
    reproduce that, to give exactly grain's order.
    """
    bits = math.ceil(math.log2(max_index))
    bits = max(bits + bits % 2, 16)
    return min(bits, 64) // 2


def index_shuffle(indices: Any, *, max_index: int, seed: int, rounds: int = 4,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Each index's position in grain's pseudorandom permutation of ``[0, max_index]``.

    Equals ``[grain.experimental.index_shuffle(i, max_index=max_index, seed=seed,
    rounds=rounds) for i in indices]`` (a Simon block cipher with cycle walking; grain's
    ``MapDataset.shuffle`` uses ``rounds=4`` and ``seed=(seed + epoch) % 2**32``), at a
    few nanoseconds per index instead of microseconds.

    Args:
      indices: int[n], each in ``[0, max_index]``.
      max_index: the permutation's largest value, ``0 <= max_index < 2**63``.
      seed: ``0 <= seed < 2**32``.
      rounds: an even number in 4..1024.
      out: optional int64[n] to write into.

    Returns:
      int64[n], the shuffled indices (``out`` if given).
    """
    array = _int_array("indices", indices, 1)
    for name, value, low, high in (("max_index", max_index, 0, 2**63 - 1), ("seed", seed, 0, _UINT32 - 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
            raise ValueError(f"{name}: expected an integer in [{low}, {high}], got {value!r}")
    # The round keys are derived in Python, O(rounds): bound them (grain's shuffle uses 4).
    if (isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or not 4 <= rounds <= 1024
            or rounds % 2):
        raise ValueError(f"rounds: expected an even integer in 4..1024, got {rounds!r}")
    if out is None:
        out = np.empty(array.shape[0], dtype=np.int64)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.int64 and out.shape == array.shape
              and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"out: expected a writeable C-contiguous int64 array of shape {array.shape}, "
                         f"got {describe(out)}")
    max_index = int(max_index)
    keys = index_shuffle_keys(int(seed), int(rounds))
    word_bits = _simon_word_bits(max_index) if max_index else 8
    failed = _backend.impl.index_shuffle(array, max_index, keys, word_bits, out)
    if failed >= 0:
        raise ValueError(f"indices: index {failed} is {array[failed]}, expected a value in [0, {max_index}]")
    return out


_GATHER_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.int16, np.uint16, np.int32,
                                              np.uint32, np.int64, np.uint64))


def gather_ranges(tokens: np.ndarray, starts: Any, ends: Any, out: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Copies ``tokens[starts[i]:ends[i]]`` for every ``i``, back to back, as int32.

    The document gather of corpus sources: ``tokens`` may be a read-only memory map of
    any integer dtype up to 64 bits; only the ranges' pages are read.

    Args:
      tokens: 1-d integer array (C-contiguous).
      starts, ends: int[n], each range ``0 <= start <= end <= len(tokens)``.
      out: optional int32 array with room for the ranges' tokens.

    Returns:
      (int32[sum of lengths] tokens -- a view of ``out`` if given --, int64[n] lengths).

    Raises:
      ValueError: a range outside ``tokens``, or a token id that does not fit int32.
    """
    if not (isinstance(tokens, np.ndarray) and tokens.ndim == 1 and tokens.dtype in _GATHER_DTYPES):
        raise TypeError(f"tokens: expected a 1-d integer array of at most 64 bits, got {describe(tokens)}")
    starts = _int_array("starts", starts, 1)
    ends = _int_array("ends", ends, 1)
    if starts.shape != ends.shape:
        raise ValueError(f"ends: expected one end per start ({starts.shape[0]}), got {describe(ends)}")
    lengths = ends - starts
    bad = np.flatnonzero((starts < 0) | (lengths < 0) | (ends > tokens.shape[0]))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"starts, ends: range {i} is [{starts[i]}, {ends[i]}), expected "
                         f"0 <= start <= end <= {tokens.shape[0]} (the tokens)")
    total = int(lengths.sum())
    if out is None:
        out = np.empty(total, dtype=np.int32)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.int32 and out.ndim == 1
              and out.shape[0] >= total and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"out: expected a writeable C-contiguous int32 array of >= {total} tokens, "
                         f"got {describe(out)}")
    impl = _backend.impl if tokens.flags.c_contiguous else _kernels_numpy
    failed = impl.gather_ranges(tokens, starts, ends, out)
    if failed >= 0:
        values = tokens[starts[failed]:ends[failed]]
        raise ValueError(f"tokens: range {failed} holds token ids in [{values.min()}, {values.max()}], "
                         "which do not fit int32")
    if failed < -1:  # ruled out above; never silently
        raise ValueError(f"starts, ends: range {-2 - failed} lies outside tokens or out")
    return out[:total], lengths


# Rolling best fit: bins that stay open (xbatch.packing.rolling) -------------------------


MAX_ROLLING_BINS = 2**20  # open bins are allocated up front: ~100 bytes each
MAX_ROLLING_CAPACITY = 2**24  # tables per cell of capacity: ~9 bytes per cell
MAX_ROLLING_BUFFER = 2**30  # int32 buffer-node indices


class RollingPacker:
    """Online best fit whose bins stay open, with a look-ahead buffer and bounded waits.

    Items (lengths in cells) get ids 0, 1, ... in push order. An item enters a buffer of
    ``buffer_size`` items; the largest buffered item that fits some bin moves into the
    fullest bin with room (best fit); when none has room, the fullest bin is emitted
    first. A bin is emitted when an item fits nowhere else, when it holds ``max_items``
    items, or ``bin_wait`` pushes after it took its first item; before it leaves, the
    largest buffered items that fit top it up (up to ``max_items``). A buffered item moves
    into a bin at the latest ``buffer_wait`` pushes after its own, so every item is in an
    emitted row at most ``buffer_wait + bin_wait`` pushes after it was pushed
    (``max_wait``). The exact rule, ties included, is in ``xbatch/_kernels_numpy.py``.

    Cost: bins are bucketed by the cells they have left and buffered items by length,
    with a 64-ary bit tree over each, so a push costs O(log64 capacity) word reads
    (amortized: a push moves at most a few items), independent of ``num_bins`` and
    ``buffer_size``. Memory: about 9 bytes per cell of capacity, 100 per bin and 40 per
    buffered item.

    Args:
      capacity: cells per bin (1..2**24).
      num_bins: open bins (1..2**20).
      buffer_size: items held back to choose from (0..2**30).
      buffer_wait: pushes an item may wait in the buffer (>= 0).
      bin_wait: pushes a bin may stay open after its first item (>= 1).
      max_items: at most this many items per bin (>= 1), or None for no cap.
    """

    def __init__(self, capacity: int, *, num_bins: int, buffer_size: int, buffer_wait: int, bin_wait: int,
                 max_items: int | None = None):
        self.capacity = positive_int("capacity", capacity, maximum=MAX_ROLLING_CAPACITY)
        self.num_bins = positive_int("num_bins", num_bins, maximum=MAX_ROLLING_BINS)
        self.buffer_size = positive_int("buffer_size", buffer_size, minimum=0, maximum=MAX_ROLLING_BUFFER)
        self.buffer_wait = positive_int("buffer_wait", buffer_wait, minimum=0)
        self.bin_wait = positive_int("bin_wait", bin_wait)
        self.max_items = None if max_items is None else positive_int("max_items", max_items)
        self._impl = _backend.impl.RollingPacker(
            self.capacity, self.num_bins, self.buffer_size, self.buffer_wait, self.bin_wait, self.max_items or 0
        )

    @property
    def max_wait(self) -> int:
        """Pushes after its own by which an item is in an emitted row, at the latest."""
        return self.buffer_wait + self.bin_wait

    @property
    def clock(self) -> int:
        """Items pushed since the start or the last :meth:`drain` (the next item's id)."""
        return self._impl.clock

    @property
    def num_held(self) -> int:
        """Items pushed and not yet in an emitted row."""
        return self._impl.num_held

    def held_ids(self) -> np.ndarray:
        """int64[num_held], ascending: the ids of the items not yet emitted."""
        return self._impl.held_ids()

    def push(self, lengths: Any) -> None:
        """Pushes items of ``lengths`` (int[n], each in 1..capacity cells) in order."""
        lengths = _int_array("lengths", lengths, 1)
        bad = self._impl.push(lengths)
        if bad >= 0:
            raise ValueError(
                f"lengths: expected lengths in 1..{self.capacity} (capacity), got {lengths[bad]} for item "
                f"{bad}; the items before it were pushed"
            )

    def drain(self) -> None:
        """Emits every held item, best-fit-decreasing into new rows; ids restart at 0."""
        self._impl.drain()

    def take_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(int64[items] ids, int64[rows] items per row) of the rows emitted since the
        last call, in emission order, each row's items in placement order."""
        return self._impl.take_rows()
# --- Concat-then-split: grain's ConcatThenSplitIterDataset's cutting, as a plan ------


class ConcatSplitPlan(NamedTuple):
    """Where the pieces of a stream of items go; see :func:`concat_then_split`.

    - ``item``: int64[p], each piece's item (index into the call's ``lengths``).
    - ``row``: int64[p], each piece's output row, non-decreasing; pieces lie in a row back
      to back, in this order.
    - ``start``: int64[p, F], each piece's first cell within its item's feature.
    - ``length``: int64[p, F], cells the piece takes in its row, per feature.
    - ``rows``: number of rows (each holds at least one piece).
    - ``consumed``: items of the rows' steps; pass ``lengths[consumed:]`` (with the items
      after them) and ``carry`` to the next call. ``n`` when ``final``.
    - ``carry``: int64[F, 2], slices of item ``consumed`` left over ((-1, -1): whole).
    - ``status``: 0, or 1 when item ``consumed`` has a meta feature longer than its row.
    """

    item: np.ndarray
    row: np.ndarray
    start: np.ndarray
    length: np.ndarray
    rows: int
    consumed: int
    carry: np.ndarray
    status: int


def _flags(name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    if value is None:
        return np.zeros(shape, dtype=np.uint8)
    array = np.asarray(value)
    if array.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {describe(value)}")
    return np.ascontiguousarray(array, dtype=bool).view(np.uint8)


def concat_then_split(
    lengths: Any,
    capacities: Any,
    *,
    meta: Any = None,
    scalar: Any = None,
    split_full_length: bool = True,
    carry: Any = None,
    final: bool = True,
    max_rows: int | None = None,
) -> ConcatSplitPlan:
    """Cuts a stream of items into rows as grain's ``ConcatThenSplitIterDataset`` does.

    One feature, ``split_full_length`` true: the items back to back, cut every
    ``capacities`` cells, each row's pieces numbered from 1 (an item cut at a row end
    goes on at cell 0 of the next row). Several features: rows fill until one feature
    is full; the item that does not fit is cut in every non-meta feature at once. grain's
    rules are kept bit for bit, its quirks included (see ``_kernels_numpy``).

    Args:
      lengths: int[n, F] (or int[n] for one feature), cells of each item's feature (>= 0).
      capacities: int[F] (or an int), cells per row of each feature (>= 1).
      meta: bool[F], features never cut: whole in every piece of their item.
      scalar: bool[n, F], the value is a scalar: one cell in every piece.
      split_full_length: False: an item with a feature of exactly its capacity (none
        longer) is its own row, emitted after the row being filled.
      carry: int[F, 2], item 0's slices left over from the previous call (the previous
        plan's ``carry``); default: item 0 is whole.
      final: no item follows: the last row is emitted partly filled. Otherwise the plan
        stops before the first step that may need later items (see ``consumed``).
      max_rows: stop once this many rows are planned (at the end of a step, so a few
        more may come): grain's rules cut some items into rows without end.

    Returns:
      A :class:`ConcatSplitPlan`. Write rows with :func:`scatter_rows` and
      :func:`pack_rows`, giving them ``row`` as ``bins`` and ``length[:, f]`` as
      ``lengths`` (and ``items[item][start:start + length]`` as the values).
    """
    array = _int_array("lengths", lengths, np.ndim(lengths) if np.ndim(lengths) in (1, 2) else 2)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.size and array.min() < 0:
        raise ValueError(f"lengths: expected lengths >= 0, got minimum {array.min()}")
    n, num_features = array.shape
    caps = _int_array("capacities", np.atleast_1d(capacities), 1)
    if caps.shape != (num_features,) or (caps.size and caps.min() < 1):
        raise ValueError(
            f"capacities: expected {num_features} integers >= 1 (one per feature), got {describe(capacities)}"
        )
    meta_flags = _flags("meta", meta, (num_features,))
    scalar_flags = _flags("scalar", scalar, (n, num_features))
    if carry is None:
        carry_array = np.full((num_features, 2), -1, dtype=np.int64)
    else:
        carry_array = _int_array("carry", carry, 2)
        if carry_array.shape != (num_features, 2) or (carry_array.size and carry_array.min() < -1):
            raise ValueError(
                f"carry: expected int[{num_features}, 2] of slices >= 0 or (-1, -1), got {describe(carry)}"
            )
    row_cap = (1 << 62) if max_rows is None else positive_int("max_rows", max_rows)
    plan = _backend.impl.concat_then_split(
        array, scalar_flags, caps, meta_flags, int(bool(split_full_length)), carry_array, int(bool(final)), row_cap
    )
    return ConcatSplitPlan(*plan)


# --- Rows on demand: a packing index's rows gathered from the corpus -------------------

PACKED_ROW_FIELDS = ("inputs", "targets", "inputs_segmentation", "targets_segmentation", "inputs_position",
                     "targets_position")


def _exact(name: str, value: Any, dtype: Any) -> np.ndarray:
    """``value`` as a 1-d C-contiguous array of ``dtype`` without a copy where it already is
    one (e.g. a memory map); other integer dtypes are converted only if every value fits."""
    array = np.asarray(value)
    if array.size == 0 and array.dtype == np.float64 and not isinstance(value, np.ndarray):
        array = array.astype(dtype)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer) or array.ndim != 1:
        raise TypeError(f"{name}: expected a 1-d integer array, got {describe(value)}")
    if array.dtype != dtype:
        limits = np.iinfo(dtype)
        if array.size and (array.min() < limits.min or array.max() > limits.max):
            raise ValueError(f"{name}: values in [{array.min()}, {array.max()}] do not fit {np.dtype(dtype)}")
    return np.ascontiguousarray(array, dtype=dtype)


def gather_packed_rows(tokens: np.ndarray, document_starts: Any, document_ends: Any, piece_document: Any,
                       piece_start: Any, piece_length: Any, row_offsets: Any, rows: Any, *, seq_len: int,
                       eod_token_id: int, pad_token_id: int, shift: str = "inputs", first_document: int = 0,
                       out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The LLM fields of a packing index's rows ``rows``, written straight from the corpus.

    One pass per row: each piece's tokens are copied from the corpus into the row (the
    EOD where the piece reaches its document's end), with segment ids and positions, and
    the shifted fields are copies of that row (see :mod:`xbatch.packing.index` for the
    index and :func:`xbatch.packing.pieces.llm_fields` for the layout).

    Args:
      tokens: 1-d integer array of at most 64 bits (e.g. a read-only memory map); ids
        must lie in ``[0, 2**31)``.
      document_starts, document_ends: int64[documents], document ``d`` is
        ``tokens[document_starts[d]:document_ends[d]]``.
      piece_document (int64), piece_start (int32), piece_length (int32), row_offsets
        (int64): the index's arrays; memory maps of these dtypes are used in place.
      rows: int[n], row numbers in ``[0, rows in the index)`` (no negative indices).
      seq_len: cells per row; eod_token_id, pad_token_id: ids in ``[0, 2**31)``;
        shift: ``"inputs"`` or ``"targets"``.
      first_document: the number of document 0 of ``document_starts`` in the index (a
        corpus shard that starts later in the corpus).
      out: optional dict of the six int32 ``[n, seq_len]`` C-contiguous arrays to write.

    Returns:
      The six fields (``out`` if given), each int32 ``[n, seq_len]``.

    Raises:
      ValueError: a row outside the index, or one whose pieces lie outside the index,
        their documents (a wrong corpus or a damaged index), the corpus or the row; or a
        token id outside ``[0, 2**31)``. Every value read from the index is checked
        before use on both backends, whatever the arrays hold.
    """
    if not (isinstance(tokens, np.ndarray) and tokens.ndim == 1 and tokens.dtype in _GATHER_DTYPES):
        raise TypeError(f"tokens: expected a 1-d integer array of at most 64 bits, got {describe(tokens)}")
    seq_len = positive_int("seq_len", seq_len, maximum=_INT32_MAX)
    for name, value in (("eod_token_id", eod_token_id), ("pad_token_id", pad_token_id)):
        positive_int(name, value, minimum=0, maximum=_INT32_MAX)
    if shift not in ("inputs", "targets"):
        raise ValueError(f"shift: expected 'inputs' or 'targets', got {shift!r}")
    first_document = positive_int("first_document", first_document, minimum=0)
    starts = _exact("document_starts", document_starts, np.int64)
    ends = _exact("document_ends", document_ends, np.int64)
    if starts.shape != ends.shape:
        raise ValueError(f"document_ends: expected one per document ({starts.shape[0]}), got {describe(ends)}")
    documents = _exact("piece_document", piece_document, np.int64)
    starts_in = _exact("piece_start", piece_start, np.int32)
    lengths = _exact("piece_length", piece_length, np.int32)
    if not documents.shape == starts_in.shape == lengths.shape:
        raise ValueError(f"piece_start, piece_length: expected one per piece ({documents.shape[0]}), got "
                         f"{describe(piece_start)} and {describe(piece_length)}")
    offsets = _exact("row_offsets", row_offsets, np.int64)
    rows = _int_array("rows", rows, 1)
    num_rows = offsets.shape[0] - 1
    bad = np.flatnonzero((rows < 0) | (rows >= num_rows))
    if bad.size:
        raise ValueError(f"rows: row {rows[bad[0]]} is outside the index's {max(num_rows, 0)} rows")
    shape = (rows.shape[0], seq_len)
    if out is None:
        out = {name: np.empty(shape, np.int32) for name in PACKED_ROW_FIELDS}
    else:
        if not isinstance(out, dict) or sorted(out) != sorted(PACKED_ROW_FIELDS):
            raise ValueError(f"out: expected a dict of the fields {PACKED_ROW_FIELDS}")
        for name in PACKED_ROW_FIELDS:
            array = out[name]
            if not (isinstance(array, np.ndarray) and array.dtype == np.int32 and array.shape == shape
                    and array.flags.c_contiguous and array.flags.writeable):
                raise ValueError(f"out[{name!r}]: expected a writeable C-contiguous int32 array of shape {shape}, "
                                 f"got {describe(array)}")
        arrays = [out[name] for name in PACKED_ROW_FIELDS]
        for i, a in enumerate(arrays):
            for other, b in [*zip(PACKED_ROW_FIELDS[i + 1:], arrays[i + 1:]), ("tokens", tokens)]:
                if np.may_share_memory(a, b):
                    raise_overlap(f"out[{PACKED_ROW_FIELDS[i]!r}]", other if other == "tokens" else f"out[{other!r}]")
    impl = _backend.impl if tokens.flags.c_contiguous else _kernels_numpy  # the twin reads any strides
    failed = impl.gather_packed_rows(
        tokens, starts, ends, first_document, documents, starts_in, lengths, offsets, rows,
        int(eod_token_id), int(pad_token_id), int(shift == "targets"), *(out[name] for name in PACKED_ROW_FIELDS))
    if failed != -1:
        _raise_bad_row(failed, tokens, starts, ends, first_document, documents, starts_in, lengths, offsets, rows,
                       seq_len)
    return out


def _raise_bad_row(failed, tokens, starts, ends, first_document, documents, piece_start, piece_length, offsets,
                   rows, seq_len) -> None:
    """The error for the requested row a kernel refused, naming what is wrong with it."""
    position = failed if failed >= 0 else -2 - failed
    row = int(rows[position])
    if failed < -1:
        first, last = int(offsets[row]), int(offsets[row + 1])
        for p in range(first, last):
            d = int(documents[p]) - first_document
            begin = int(starts[d]) + int(piece_start[p])
            values = tokens[begin:min(begin + int(piece_length[p]), int(ends[d]))]
            outside = values[(values < 0) | (values > _INT32_MAX)]
            if outside.size:
                raise ValueError(f"tokens: row {row} holds token id {outside[0]} (document {documents[p]}), "
                                 "expected ids in [0, 2**31)")
    first, last = int(offsets[row]), int(offsets[row + 1])
    what = f"row_offsets: row {row} claims pieces {first}..{last}, outside the index's {documents.shape[0]} pieces"
    if 0 <= first <= last <= documents.shape[0]:
        fill = 0
        for p in range(first, last):
            d, start, length = int(documents[p]) - first_document, int(piece_start[p]), int(piece_length[p])
            if not 0 <= d < starts.shape[0]:
                what = (f"index: row {row}, piece {p}: document {documents[p]} is not among this corpus's documents "
                        f"{first_document}..{first_document + starts.shape[0] - 1}")
                break
            begin, end = int(starts[d]), int(ends[d])
            if not 0 <= begin <= end <= tokens.shape[0]:
                what = (f"document_starts, document_ends: document {documents[p]} is [{begin}, {end}), outside the "
                        f"{tokens.shape[0]} tokens")
                break
            if start < 0 or length < 1 or start + length > end - begin + 1 or length > seq_len - fill:
                what = (f"index: row {row}, piece {p} (document {documents[p]}, cells {start}..{start + length - 1})"
                        f" lies outside its document's {end - begin} tokens + EOD or past the row's {seq_len} cells; "
                        "a damaged index, or one built for another corpus")
                break
            fill += length
    raise ValueError(what)


# --- Concat-then-split: one feature's rows in one pass (values, segment ids, positions) --


def write_split_rows(
    elements: list,
    key: Any,
    items: Any,
    rows: Any,
    starts: Any,
    cells: Any,
    out_values: np.ndarray,
    out_ids: np.ndarray | None = None,
    *,
    first_row: int = 0,
) -> int:
    """Writes one feature's rows of a :func:`concat_then_split` plan in one pass.

    Piece ``p`` is ``elements[items[p]][key][starts[p] : starts[p] + cells[p]]``. The
    pieces lie back to back in their rows, from cell 0, in order. ``out_values[r]`` gets
    row ``first_row + r``'s pieces and zeros after them; ``out_ids[r, 0]`` the pieces'
    segment ids (1-based per row, an empty piece takes one too) and ``out_ids[r, 1]``
    their positions (0-based per piece), zeros after them. Every cell is written.

    Args:
      elements: list of the items (dicts).
      key: the feature's key in them (a str or int).
      items, rows, starts, cells: int[p] each: a plan's ``item``, ``row`` (non-decreasing),
        ``start[:, f]`` and ``length[:, f]``, or a range of them (pieces of whole rows).
      out_values: C-contiguous [rows, cells, ...] array of a dtype without Python objects.
      out_ids: None (a meta feature), or int32[rows, 2, cells], C-contiguous; must not
        share memory with ``out_values``.
      first_row: the plan's row that ``out_values[0]`` holds.

    Returns:
      -1, or the first piece whose element is not a ``dict`` holding, under ``key``, a
      C-contiguous ``np.ndarray`` of ``out_values``' dtype and cell shape with the
      piece's cells, or whose cells do not fit its row, or that shares memory with
      ``out_values``. The rows are then partly written: write the feature another way
      (:func:`scatter_rows`, :func:`pack_rows`), which casts as NumPy does.

    Raises:
      ValueError: a piece names an element outside ``elements`` or a row outside
        ``out_values`` (or before the previous piece's), or has a negative start or
        cells; checked piece by piece as the rows are written (rows before it written).
    """
    if not isinstance(elements, list):
        raise TypeError(f"elements: expected a list of dicts, got {describe(elements)}")
    if type(key) not in (str, int):  # hashed without running Python code
        raise TypeError(f"key: expected a str or int, got {describe(key)}")
    if (
        not isinstance(out_values, np.ndarray)
        or out_values.ndim < 2
        or not out_values.flags.c_contiguous
        or not out_values.flags.writeable
        or out_values.dtype.hasobject
    ):
        raise ValueError(
            "out_values: expected a writeable C-contiguous array [rows, cells, ...] of a dtype"
            f" without Python objects, got {describe(out_values)}"
        )
    num_rows, capacity = out_values.shape[:2]
    if out_ids is not None:
        if (
            not isinstance(out_ids, np.ndarray)
            or out_ids.dtype != np.int32
            or out_ids.shape != (num_rows, 2, capacity)
            or not out_ids.flags.c_contiguous
            or not out_ids.flags.writeable
        ):
            raise ValueError(
                f"out_ids: expected a writeable C-contiguous int32 array of shape {(num_rows, 2, capacity)},"
                f" got {describe(out_ids)}"
            )
        if capacity > _INT32_MAX:
            raise ValueError(f"out_ids: rows of {capacity} cells have positions beyond int32")
        if np.may_share_memory(out_ids, out_values):
            raise_overlap("out_ids", "out_values")
    first_row = positive_int("first_row", first_row, minimum=0)
    # The per-piece checks (indices in range, rows in order) are the kernel's, in its one pass.
    arrays = []
    for name, value in (("items", items), ("rows", rows), ("starts", starts), ("cells", cells)):
        array = value if type(value) is np.ndarray and value.dtype == np.int64 and value.ndim == 1 else _int_array(name, value, 1)
        if np.may_share_memory(array, out_values) or (out_ids is not None and np.may_share_memory(array, out_ids)):
            raise_overlap(name, "the output rows")
        arrays.append(np.ascontiguousarray(array))
    n = arrays[0].shape[0]
    for name, array in zip(("rows", "starts", "cells"), arrays[1:]):
        if array.shape[0] != n:
            raise ValueError(f"{name}: expected {n} entries (one per piece), got {array.shape[0]}")
    if n > _INT32_MAX and out_ids is not None:
        raise ValueError(f"items: {n} pieces have segment ids beyond int32")
    return _backend.impl.write_split_rows(elements, key, *arrays, first_row, out_values, out_ids)


def element_lengths(elements: list, keys: Sequence[Any], start: int = 0) -> list[int]:
    """Reads the lengths of a stream's elements for :func:`concat_then_split`, in one pass.

    Args:
      elements: list of the elements (dicts of feature -> array).
      keys: the features (str or int keys), in ``lengths`` column order.
      start: the first element to read.

    Returns:
      A flat list of ints, ``len(keys)`` per element: ``element[key].shape[0]`` for
      ``elements[start:]`` up to (not including) the first element that is not a
      ``dict`` of exactly ``len(keys)`` entries holding, under every key, a plain
      ``np.ndarray`` of >= 1 dims (scalars, lists, other mappings, missing or extra
      keys): read that one another way.
    """
    if not isinstance(elements, list):
        raise TypeError(f"elements: expected a list of dicts, got {describe(elements)}")
    keys = list(keys)
    for key in keys:
        if type(key) not in (str, int):  # hashed without running Python code
            raise TypeError(f"keys: expected str or int keys, got {describe(key)}")
    start = positive_int("start", start, minimum=0)
    return _backend.impl.element_lengths(elements, keys, start)


# ---------------------------------------------------------------------------------------
# Loss masks (issue 13): a document mask with its EOD cells, and the targets
# segmentation of the targets trained on with the loss tokens per row.


def eod_cell_mask(mask: Any, lengths: Any, *, eod_loss: int, name: str = "loss_mask") -> np.ndarray:
    """The 0/1 mask of documents back to back, each followed by one ``eod_loss`` cell.

    Args:
      mask: 0/1 or bool [sum(lengths)], one value per token (1: trained on).
      lengths: int[documents] >= 0, tokens per document.
      eod_loss: 0 or 1, the mask of every EOD cell.
      name: names ``mask`` in errors.

    Returns:
      int32[sum(lengths) + documents]; checked and written in one pass on int32 input.

    Raises:
      TypeError/ValueError naming ``name`` (and the first bad token) or ``lengths``.
    """
    lengths = _int_array("lengths", lengths, 1)
    if lengths.size and lengths.min() < 0:
        raise ValueError(f"lengths: expected lengths >= 0, got minimum {lengths.min()}")
    if isinstance(eod_loss, bool) or eod_loss not in (0, 1):
        raise ValueError(f"eod_loss: expected 0 or 1, got {eod_loss!r}")
    array = np.asarray(mask)
    if array.size == 0 and array.dtype == np.float64 and not isinstance(mask, np.ndarray):
        array = array.astype(np.int32)
    if array.dtype != bool and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name}: expected a mask of bools or 0/1 integers, got {describe(mask)}")
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d mask, one value per token, got {describe(mask)}")
    if lengths.size and lengths.max() > array.shape[0]:
        raise ValueError(
            f"{name}: expected one value per token, got {describe(mask)}, shorter than a document of "
            f"{lengths.max()} tokens"
        )
    total = exact_sum(lengths, array.shape[0])
    if total != array.shape[0]:
        raise ValueError(f"{name}: expected one value per token ({total} tokens in lengths), got {describe(mask)}")
    if array.dtype != np.int32:
        if array.dtype != bool and array.size and (array.min() < 0 or array.max() > 1):
            bad = int(np.flatnonzero((array < 0) | (array > 1))[0])
            raise ValueError(f"{name}: expected 0 or 1 per token, got {array[bad]} at token {bad}")
        array = array.astype(np.int32)
    array = np.ascontiguousarray(array)
    out = np.empty(array.shape[0] + lengths.shape[0], np.int32)
    bad = _backend.impl.eod_cell_mask(array, lengths, int(eod_loss), out)
    if bad >= 0:
        raise ValueError(f"{name}: expected 0 or 1 per token, got {array[bad]} at token {bad}")
    return out


def trained_segmentation(loss_mask: Any, lengths: Any, bins: Any, out: np.ndarray, *, shift: int = 0) -> np.ndarray:
    """Writes the targets segmentation of the targets trained on; returns the loss tokens
    per row.

    Items (``lengths``, ``bins``) are placed as for :func:`pack_rows` (alignment 1). A
    placed cell gets its item's 1-based segment id in the row where ``loss_mask`` is
    non-zero and 0 where it is zero; cells no item covers get 0. With ``shift=1`` the
    rows move one cell left (``shift="targets"``: column ``c`` describes cell ``c + 1``;
    the last column is 0). Every cell of ``out`` is written in one pass.

    Args:
      loss_mask: int32[sum(lengths)], the items' masks back to back (non-zero: trained on).
      lengths, bins: int[n], the items in placement order and their rows.
      out: int32[rows, row_length], C-contiguous, written in place; must not share memory
        with the inputs.
      shift: 0 or 1.

    Returns:
      The non-zero cells of each row of ``out``, int64 [rows].
    """
    out = _check_rows("out", out, np.int32)
    if out.ndim != 2 or not out.flags.c_contiguous:
        raise ValueError(f"out: expected a C-contiguous 2-d array, got {describe(out)}")
    if out.shape[1] > _INT32_MAX:
        raise ValueError(f"out: rows of {out.shape[1]} cells have segment ids beyond int32")
    if isinstance(shift, bool) or shift not in (0, 1):
        raise ValueError(f"shift: expected 0 or 1, got {shift!r}")
    lengths, bins, _ = _check_placement(lengths, bins, out, 1)
    if lengths.shape[0] > _INT32_MAX:
        raise ValueError(f"lengths: {lengths.shape[0]} items have segment ids beyond int32")
    mask = np.asarray(loss_mask)
    if mask.dtype != np.int32 or mask.ndim != 1:
        raise TypeError(f"loss_mask: expected a 1-d int32 array, got {describe(loss_mask)}")
    total = exact_sum(lengths, out.shape[1])
    if total != mask.shape[0]:
        raise ValueError(f"lengths: expected lengths summing to the {mask.shape[0]} cells of loss_mask, got a sum of {total}")
    if np.may_share_memory(mask, out):
        raise_overlap("loss_mask", "out")
    counts = np.empty(out.shape[0], np.int64)
    failed = _backend.impl.trained_segmentation(np.ascontiguousarray(mask), lengths, bins, int(shift), out, counts)
    _raise_overflow(failed, lengths, bins, out.shape[1])
    return counts
