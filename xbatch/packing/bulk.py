"""Packing whole token arrays at once: offline preprocessing and evaluation sets.

Both functions take the corpus as flat ``tokens`` with per-document ``lengths`` (as read
from ``.npy``, Parquet or ArrayRecord) and return NumPy batches; no Python loop runs per
document or per row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import kernels
from .._checks import positive_int
from ..batch import LLMBatch, LLMIndexedBatch
from .concat_rows import pack_concat
from .pieces import (
    BULK_ALGORITHMS,
    CONCAT,
    DECREASING,
    LONG_DOCUMENTS,
    SHIFTS,
    as_lengths,
    as_tokens,
    check_choice,
    check_token_id,
    document_pieces,
    lay_out_rows,
    place_until_full,
)
from .stats import PackingStats


def pack_documents(
    tokens: Any,
    lengths: Any,
    *,
    seq_len: int,
    eod_token_id: int,
    pad_token_id: int = 0,
    num_packing_bins: int | None = None,
    algorithm: str = "first_fit",
    long_documents: str = "split",
    shift: str = "inputs",
    return_stats: bool = False,
) -> LLMBatch | tuple[LLMBatch, PackingStats]:
    """Packs a whole corpus into rows of ``seq_len`` tokens in the LLM layout.

    With ``num_packing_bins=B`` the rows are exactly those :class:`LLMPackIterDataset`
    yields for the same documents and arguments (``shuffle_bins=False``): windows of ``B``
    bins, grain's first-fit/best-fit rule. ``None`` packs the whole corpus as one window.
    ``"first_fit_decreasing"``/``"best_fit_decreasing"`` (only with ``None``) place the
    pieces longest first (a stable sort: equal lengths keep corpus order), the tightest
    packing; each row still lists its pieces in corpus order. ``"concat_then_split"``
    puts the documents back to back and cuts a row every ``seq_len`` cells (the bins
    are ignored; see :mod:`xbatch.packing.concat_rows`).

    Args:
      tokens: int[total], the documents' tokens back to back (any integer dtype that fits
        int32; token id 0 is a token like any other).
      lengths: int[documents] >= 0, tokens per document; must sum to ``len(tokens)``.
      seq_len: tokens per row (>= 1).
      eod_token_id: appended to every document.
      pad_token_id: fills cells no document covers.
      num_packing_bins: bins per window (>= 1), or None for one window over the corpus.
      algorithm: ``"first_fit"``, ``"best_fit"``, ``"concat_then_split"``,
        ``"first_fit_decreasing"`` or ``"best_fit_decreasing"``.
      long_documents: ``"split"``, ``"truncate"`` or ``"error"`` for documents whose
        tokens plus EOD exceed ``seq_len`` (see :mod:`xbatch.packing.pieces`).
      shift: ``"inputs"`` (inputs shifted right, the seed's layout) or ``"targets"``
        (targets shifted left; see :func:`xbatch.packing.pieces.llm_fields`).
      return_stats: also return the :class:`PackingStats` of this call.

    Returns:
      An :class:`LLMBatch` of int32 NumPy arrays [rows, seq_len] (and the stats).
    """
    seq_len = positive_int("seq_len", seq_len)
    eod_token_id = check_token_id("eod_token_id", eod_token_id)
    pad_token_id = check_token_id("pad_token_id", pad_token_id)
    check_choice("algorithm", algorithm, BULK_ALGORITHMS)
    check_choice("long_documents", long_documents, LONG_DOCUMENTS)
    check_choice("shift", shift, SHIFTS)
    if num_packing_bins is not None:
        num_packing_bins = positive_int("num_packing_bins", num_packing_bins)
        if algorithm in DECREASING:
            raise ValueError(
                f"algorithm: {algorithm!r} sorts the whole corpus and needs num_packing_bins=None, "
                f"got num_packing_bins={num_packing_bins}"
            )
    tokens = as_tokens("tokens", tokens)
    lengths = as_lengths(lengths, tokens.shape[0])
    if algorithm == CONCAT:
        fields, stats = pack_concat(tokens, lengths, seq_len=seq_len, eod_token_id=eod_token_id,
                                    pad_token_id=pad_token_id, long_documents=long_documents, shift=shift)
        return (LLMBatch(**fields), stats) if return_stats else LLMBatch(**fields)
    pieces = document_pieces(tokens, lengths, seq_len=seq_len, eod_token_id=eod_token_id,
                             long_documents=long_documents)
    if num_packing_bins is None:
        bins, num_rows = _place_corpus(pieces.lengths, seq_len, algorithm)
    else:
        bins, num_rows = _place_windows(pieces.lengths, seq_len, num_packing_bins, algorithm)
    fields = lay_out_rows(pieces.tokens, pieces.lengths[:, 0], bins, num_rows=num_rows, seq_len=seq_len,
                          eod_token_id=eod_token_id, pad_token_id=pad_token_id, shift=shift)
    batch = LLMBatch(**fields)
    if not return_stats:
        return batch
    stats = PackingStats(
        rows=num_rows,
        documents=pieces.num_documents,
        pieces=len(pieces),
        tokens=pieces.tokens.shape[0],
        capacity=num_rows * seq_len,
        tokens_truncated=int(pieces.truncated.sum()),
        documents_split=int(pieces.starts_split_document.sum()),
    )
    return batch, stats


def _place_corpus(lengths: np.ndarray, seq_len: int, algorithm: str) -> tuple[np.ndarray, int]:
    """(row of every piece, rows) for one window over all pieces."""
    num_pieces = lengths.shape[0]
    # Any two rows of a first-/best-fit packing hold more than seq_len tokens together
    # (the later row's first piece did not fit the earlier row), so at most one row is
    # half full or less: the rows never exceed 2 * tokens / seq_len + 1.
    num_bins = max(1, min(num_pieces, 2 * int(lengths.sum()) // seq_len + 1))
    packer = kernels.BinPacker(seq_len, num_bins=num_bins, algorithm=DECREASING.get(algorithm, algorithm))
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


def _place_windows(lengths: np.ndarray, seq_len: int, num_bins: int, algorithm: str) -> tuple[np.ndarray, int]:
    """(row of every piece, rows) with grain's windows of ``num_bins`` bins."""
    packer = kernels.BinPacker(seq_len, num_bins=num_bins, algorithm=algorithm)
    bins = np.empty(lengths.shape[0], dtype=np.int64)
    start, rows = 0, 0
    while start < lengths.shape[0]:
        stop, _ = place_until_full(packer, lengths, bins, start)
        bins[start:stop] += rows
        rows += packer.num_used_bins
        packer.reset()
        start = stop
    return bins, rows


def window_documents(
    tokens: Any,
    lengths: Any,
    *,
    seq_len: int,
    eod_token_id: int,
    pad_token_id: int = 0,
    batch_size: int | None = None,
    return_stats: bool = False,
) -> LLMIndexedBatch | tuple[LLMIndexedBatch, PackingStats]:
    """Cuts every document into consecutive windows of ``seq_len`` tokens, one per row.

    For recurrent models that carry their state through long documents. Each document's
    targets (its tokens + EOD) and inputs (EOD + its tokens) are cut at the same cells, so
    window ``k + 1`` continues window ``k`` exactly; the last window is padded with
    ``pad_token_id`` (segmentation 0, position 0). Rows follow the documents, then their
    windows, in order.

    - ``document_idx``: 1-based index of the row's document in ``lengths``; 0 marks a
      padding row (all cells padding, ``sequence_idx`` 0).
    - ``sequence_idx``: the window's index within its document (0, 1, ...).
    - segmentations: 1 on the document's cells, 0 on padding; positions count cells within
      the whole document (window ``k``, column ``c`` is position ``k * seq_len + c``).
    - ``_document_borders``: column 0 is True only for a document's first window (and for
      padding rows), so a recurrent state is reset where a document starts, not where a
      window continues it; within a row, the start of the padding after a document's last
      cell is a border too, as :meth:`LLMBatch.get_document_borders` marks it.

    Args:
      tokens, lengths, seq_len, eod_token_id, pad_token_id: as for :func:`pack_documents`.
      batch_size: if given (>= 1), padding rows make the number of rows a multiple of it.
      return_stats: also return the :class:`PackingStats` (capacity includes padding rows).

    Returns:
      An :class:`LLMIndexedBatch` of NumPy arrays: int32 [rows, seq_len] fields, int32
      [rows] indices, bool [rows, seq_len] borders (and the stats).
    """
    seq_len = positive_int("seq_len", seq_len)
    eod_token_id = check_token_id("eod_token_id", eod_token_id)
    pad_token_id = check_token_id("pad_token_id", pad_token_id)
    multiple = 1 if batch_size is None else positive_int("batch_size", batch_size)
    tokens = as_tokens("tokens", tokens)
    lengths = as_lengths(lengths, tokens.shape[0])
    pieces = document_pieces(tokens, lengths, seq_len=seq_len, eod_token_id=eod_token_id,
                             long_documents="split")
    num_pieces = len(pieces)
    num_rows = -(-num_pieces // multiple) * multiple
    piece_lengths, rows = pieces.lengths[:, 0], np.arange(num_pieces, dtype=np.int64)
    targets, inputs, segmentation, positions = (
        np.empty((num_rows, seq_len), dtype=np.int32) for _ in range(4)
    )
    kernels.scatter_rows(pieces.tokens, piece_lengths, rows, targets, padding=pad_token_id)
    eod_first = np.insert(tokens, np.cumsum(lengths) - lengths, np.int32(eod_token_id))
    kernels.scatter_rows(eod_first, piece_lengths, rows, inputs, padding=pad_token_id)
    kernels.pack_rows(piece_lengths, rows, segmentation, positions)

    document_idx = np.zeros(num_rows, dtype=np.int32)
    document_idx[:num_pieces] = np.cumsum(pieces.starts_document)
    first_window = np.flatnonzero(pieces.starts_document)
    sequence_idx = np.zeros(num_rows, dtype=np.int32)
    sequence_idx[:num_pieces] = rows - first_window[document_idx[:num_pieces] - 1]
    positions[:num_pieces] += (sequence_idx[:num_pieces, None] * seq_len) * (segmentation[:num_pieces] > 0)
    borders = kernels.document_borders(segmentation)
    borders[:, 0] = sequence_idx == 0
    batch = LLMIndexedBatch(
        inputs=inputs,
        targets=targets,
        inputs_position=positions,
        inputs_segmentation=segmentation,
        targets_position=positions.copy(),
        targets_segmentation=segmentation.copy(),
        _document_borders=borders,
        document_idx=document_idx,
        sequence_idx=sequence_idx,
    )
    if not return_stats:
        return batch
    stats = PackingStats(
        rows=num_rows,
        documents=pieces.num_documents,
        pieces=num_pieces,
        tokens=pieces.tokens.shape[0],
        capacity=num_rows * seq_len,
        documents_split=int(pieces.starts_split_document.sum()),
    )
    return batch, stats
