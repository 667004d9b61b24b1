"""What varlen / packed attention kernels take, computed on the host from segment ids.

:func:`attention_metadata` turns the ``[B, L]`` segmentation of a packed batch (ids from
1 per row, 0 = padding) into the per-row lengths and offsets of cuDNN's packed layout and
Transformer Engine's THD layout, the flat ``cu_seqlens`` of FlashAttention's varlen
kernels, and the per-row lengths of ``jax.nn.dot_product_attention``, in one pass over
the tokens (compiled kernel, or its NumPy twin), so nothing is converted on the
accelerator. docs/layout.rst shows each format on an example.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _backend, _kernels_numpy
from .._checks import describe, positive_int

__all__ = ["add_varlen_metadata", "attention_metadata", "varlen_metadata"]

_COMPILED_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
# Every output is int32: offsets and lengths count cells of a row, cu_seqlens tokens of
# the batch; and the flat arrays are indexed by int32 too in the kernels that read them.
_INT32_MAX = int(np.iinfo(np.int32).max)


def _segmentation_rows(value: Any) -> np.ndarray:
    """``value`` as a 2-d integer array (no copy)."""
    array = np.asarray(value)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"segmentation: expected an integer array, got {describe(value)}")
    if array.ndim != 2:
        raise ValueError(f"segmentation: expected a 2-d array [batch, length], got {describe(value)}")
    return array


def _segmentation(value: Any) -> np.ndarray:
    array = _segmentation_rows(value)
    rows, length = array.shape
    if rows * length > _INT32_MAX:  # checked before any copy of a (broadcast) input
        raise ValueError(
            f"segmentation: at most {_INT32_MAX} tokens per batch (int32 cu_seqlens), "
            f"got {rows} x {length}"
        )
    if array.dtype not in _COMPILED_DTYPES:
        # uint64 ids above int64's range cannot be valid ids anyway; cast without wrapping.
        if array.size and array.dtype == np.uint64 and int(array.max()) > np.iinfo(np.int64).max:
            raise ValueError(
                f"segmentation: ids must be segment numbers 0..length, got {int(array.max())}"
            )
        array = array.astype(np.int64)
    return np.ascontiguousarray(array)


def attention_metadata(segmentation: Any, *, max_segments: int) -> dict[str, Any]:
    """The attention metadata of a packed batch, as NumPy int32 arrays.

    Args:
      segmentation: int[B, L], the batch's ``inputs_segmentation``: in each row, segment
        ``k`` (from 1) is one contiguous run of id ``k``, segments in order along the
        row, 0 marks padding (anywhere: between segments too, as aligned packing leaves
        it). Any integer dtype.
      max_segments: M, the static number of segment slots per row (>= 1), e.g. the
        packer's ``max_documents_per_row``.

    Returns:
      A dict:

      * ``seq_lengths`` int32[B, M]: tokens of segment ``k`` of row ``b`` at ``[b, k - 1]``,
        -1 in unused slots;
      * ``seq_offsets`` int32[B, M + 1]: the column where that segment starts, counted
        from the start of its row, -1 in unused slots (so at least the last entry is
        -1). These two are ``q_seqlen``/``q_offsets`` of JAX's cuDNN packed attention and
        the arguments of Transformer Engine's ``SequenceDescriptor.from_seqlens_and_offsets``;
      * ``cu_seqlens`` int32[B * M + 1]: FlashAttention's cumulative lengths over all
        segments of the batch in row-major order, starting at 0: offsets into the
        tokens with padding removed (``x.reshape(B * L, ...)[segmentation.ravel() != 0]``);
        entries past the last segment repeat the total (empty sequences);
      * ``max_seqlen`` int: tokens of the longest segment (0 if none);
      * ``query_seq_lengths`` int32[B], only when ``M == 1``: each row's tokens, for
        ``jax.nn.dot_product_attention(query_seq_lengths=..., key_value_seq_lengths=...)``,
        which counts them from column 0 (so the segment must start there).

    Raises:
      TypeError, ValueError: naming the argument; ``ValueError`` names the row and column
        where a row holds more than ``max_segments`` segments, where an id is not its
        segment's number (``[1, 1, 3]``, ``[2, 2]``), or where a segment resumes after a
        gap (``[1, 0, 1]``: which tokens attend to which would not fit the layout).
    """
    seg = _segmentation(segmentation)
    max_segments = positive_int("max_segments", max_segments)
    lengths, offsets, cu_seqlens, max_seqlen = _run(seg, max_segments)
    result = {
        "seq_lengths": lengths,
        "seq_offsets": offsets,
        "cu_seqlens": cu_seqlens,
        "max_seqlen": int(max_seqlen),
    }
    if max_segments == 1:
        _check_rows_start_at_zero(offsets)
        result["query_seq_lengths"] = np.maximum(lengths[:, 0], 0)
    return result


def _run(seg: np.ndarray, max_segments: int, first_row: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(lengths, offsets, cu_seqlens, max_seqlen) of a checked segmentation; errors name
    rows counted from ``first_row``."""
    rows = seg.shape[0]
    if rows * (max_segments + 1) + 1 > _INT32_MAX:
        raise ValueError(
            f"max_segments: {rows} rows x ({max_segments} + 1) slots exceed int32 "
            f"indexing; expected max_segments <= {(_INT32_MAX - 1) // max(rows, 1) - 1}"
        )
    lengths = np.empty((rows, max_segments), dtype=np.int32)
    offsets = np.empty((rows, max_segments + 1), dtype=np.int32)
    cu_seqlens = np.empty(rows * max_segments + 1, dtype=np.int32)
    impl = _backend.impl if seg.size else _kernels_numpy
    status, row, column, max_seqlen = impl.attention_metadata(
        seg, max_segments, lengths, offsets, cu_seqlens
    )
    if status:
        _raise_bad_row(seg, status, row, column, max_segments, first_row)
    return lengths, offsets, cu_seqlens, max_seqlen


def _raise_bad_row(seg: np.ndarray, status: int, row: int, column: int, max_segments: int,
                   first_row: int = 0) -> None:
    shown = seg[row, max(column - 3, 0) : column + 4].tolist()
    value = int(seg[row, column])
    previous = int(seg[row, :column].max(initial=0))
    row += first_row
    if status == 1:
        raise ValueError(
            f"segmentation: row {row} holds more than max_segments={max_segments} segments "
            f"(segment {max_segments + 1} starts at column {column}); raise max_segments or "
            "pack with max_documents_per_row"
        )
    if value == previous:
        problem = f"segment {value} resumes after a gap"
    else:
        problem = f"id {value} where segment {previous + 1} (or padding 0) was expected"
    raise ValueError(
        f"segmentation: row {row}, column {column}: {problem} (cells around it: {shown}); "
        "expected segments numbered 1, 2, ... in order along the row, each one contiguous "
        "run, 0 for padding"
    )


def _check_rows_start_at_zero(offsets: np.ndarray) -> None:
    late = np.flatnonzero(offsets[:, 0] > 0)
    if late.size:
        row = int(late[0])
        raise ValueError(
            f"segmentation: row {row} starts its segment at column {int(offsets[row, 0])}; "
            "query_seq_lengths (max_segments=1) counts tokens from column 0"
        )


# The packers' opt-in output (``attention_metadata=True``): per-row arrays on every row,
# batch-level ones after batching.
# ---------------------------------------------------------------------------------------

#: The per-row keys a packer adds with ``attention_metadata=True``.
ROW_METADATA = ("seq_lengths", "seq_offsets")
# Cells per attention_metadata call when a whole corpus is described: the call's int32
# cu_seqlens bounds a call to 2**31 - 1 cells; a few MiB per call keep its passes in cache.
_BLOCK_CELLS = 1 << 22


def metadata_segments(attention_metadata: Any, max_documents_per_row: int | None) -> int | None:
    """M, the static segment slots of the packer's per-row metadata, or None without it.

    Raises a ValueError naming ``max_documents_per_row`` when metadata is asked for
    without the cap: the slots must be a bound the packer keeps, or a row could hold more
    segments than the arrays have room for.
    """
    if not attention_metadata:
        return None
    if max_documents_per_row is None:
        raise ValueError(
            "max_documents_per_row: attention_metadata=True needs max_documents_per_row=M, the static number "
            "of segment slots per row (seq_lengths [M], seq_offsets [M + 1]); got None"
        )
    return positive_int("max_documents_per_row", max_documents_per_row)


def row_metadata(segmentation: Any, *, max_segments: int) -> dict[str, np.ndarray]:
    """``seq_lengths`` int32[B, M] and ``seq_offsets`` int32[B, M + 1] of
    :func:`attention_metadata`, for any number of rows: ``B * L`` may exceed int32 (the
    rows are described in blocks), and ``M == 1`` does not ask rows to start at column 0."""
    seg = _segmentation_rows(segmentation)
    max_segments = positive_int("max_segments", max_segments)
    step = max(1, _BLOCK_CELLS // max(seg.shape[1], 1))
    if seg.shape[0] <= step:
        lengths, offsets, _, _ = _run(_segmentation(seg), max_segments)
        return {"seq_lengths": lengths, "seq_offsets": offsets}
    lengths = np.empty((seg.shape[0], max_segments), dtype=np.int32)
    offsets = np.empty((seg.shape[0], max_segments + 1), dtype=np.int32)
    for start in range(0, seg.shape[0], step):
        block = _run(_segmentation(seg[start:start + step]), max_segments, first_row=start)
        lengths[start:start + step], offsets[start:start + step] = block[0], block[1]
    return {"seq_lengths": lengths, "seq_offsets": offsets}


def varlen_metadata(seq_lengths: Any) -> dict[str, Any]:
    """``cu_seqlens`` and ``max_seqlen`` of a batch, from its per-row ``seq_lengths``.

    Packers with ``attention_metadata=True`` put ``seq_lengths`` [M] and ``seq_offsets``
    [M + 1] on every row, so batching stacks them; the flat FlashAttention arrays describe
    a whole batch and are made after batching, without reading the tokens again. Equal
    to :func:`attention_metadata` of the batch's ``inputs_segmentation``.

    Args:
      seq_lengths: int[B, M], tokens per segment, -1 (or 0) in unused slots.

    Returns:
      ``{"cu_seqlens": int32[B * M + 1], "max_seqlen": int}`` (see :func:`attention_metadata`).
    """
    lengths = np.asarray(seq_lengths)
    if lengths.dtype == bool or not np.issubdtype(lengths.dtype, np.integer) or lengths.ndim != 2:
        raise TypeError(f"seq_lengths: expected an integer array [batch, max_segments], got {describe(seq_lengths)}")
    if lengths.size and int(lengths.min()) < -1:
        raise ValueError(f"seq_lengths: expected tokens per segment or -1, got {int(lengths.min())}")
    used = lengths[lengths > 0].astype(np.int64)  # row-major: the batch's segments in order
    cu_seqlens = np.empty(lengths.size + 1, dtype=np.int32)
    total = np.cumsum(used)
    if total.size and total[-1] > _INT32_MAX:
        raise ValueError(f"seq_lengths: {int(total[-1])} tokens in the batch exceed int32 cu_seqlens")
    cu_seqlens[0] = 0
    cu_seqlens[1:total.size + 1] = total
    cu_seqlens[total.size + 1:] = total[-1] if total.size else 0
    return {"cu_seqlens": cu_seqlens, "max_seqlen": int(used.max()) if used.size else 0}


def add_varlen_metadata(batch: Mapping[str, Any]) -> dict[str, Any]:
    """``batch`` (a mapping with ``seq_lengths`` [B, M], e.g. grain's ``.batch`` of a
    packer's rows) plus ``cu_seqlens`` and ``max_seqlen`` (:func:`varlen_metadata`): a
    grain ``.map`` after ``.batch``::

        rows = LLMPackIterDataset(..., max_documents_per_row=M, attention_metadata=True)
        batches = rows.batch(batch_size).map(add_varlen_metadata)
    """
    if not isinstance(batch, Mapping) or "seq_lengths" not in batch:
        keys = sorted(batch) if isinstance(batch, Mapping) else describe(batch)
        raise ValueError(
            "batch: expected a mapping with 'seq_lengths' (rows of a packer with attention_metadata=True, "
            f"batched), got {keys}"
        )
    return {**batch, **varlen_metadata(batch["seq_lengths"])}
