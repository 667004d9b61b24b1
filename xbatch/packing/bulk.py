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
from .attention import metadata_segments, row_metadata
from .concat_rows import pack_concat
from .rolling import pack_rolling
from .pieces import (
    BULK_ALGORITHMS,
    CONCAT,
    DECREASING,
    ROLLING,
    LONG_DOCUMENTS,
    SHIFTS,
    as_lengths,
    as_tokens,
    check_choice,
    check_token_id,
    document_pieces,
    cell_loss_mask,
    lay_out_rows,
)
from .placement import place_corpus, place_windows
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
    loss_mask: Any = None,
    prompt_lengths: Any = None,
    train_on_eod: bool = True,
    max_documents_per_row: int | None = None,
    attention_metadata: bool = False,
) -> LLMBatch | tuple[Any, ...]:
    """Packs a whole corpus into rows of ``seq_len`` tokens in the LLM layout.

    With ``num_packing_bins=B`` the rows are exactly those :class:`LLMPackIterDataset`
    yields for the same documents and arguments (``shuffle_bins=False``): windows of ``B``
    bins, grain's first-fit/best-fit rule. ``None`` packs the whole corpus as one window.
    ``"first_fit_decreasing"``/``"best_fit_decreasing"`` (only with ``None``) place the
    pieces longest first (a stable sort: equal lengths keep corpus order), the tightest
    packing; each row still lists its pieces in corpus order. ``"concat_then_split"``
    puts the documents back to back and cuts a row every ``seq_len`` cells (the bins
    are ignored; see :mod:`xbatch.packing.concat_rows`); ``"rolling_best_fit"`` needs
    ``num_packing_bins`` open bins (see :mod:`xbatch.packing.rolling`).

    Args:
      tokens: int[total], the documents' tokens back to back (any integer dtype; ids in
        ``[0, 2**31)``, token id 0 is a token like any other).
      lengths: int[documents] >= 0, tokens per document; must sum to ``len(tokens)``.
      seq_len: tokens per row (>= 1).
      eod_token_id: appended to every document.
      pad_token_id: fills cells no document covers.
      num_packing_bins: bins per window (>= 1), or None for one window over the corpus.
      algorithm: ``"first_fit"``, ``"best_fit"``, ``"concat_then_split"``,
        ``"rolling_best_fit"``, ``"first_fit_decreasing"`` or ``"best_fit_decreasing"``.
      long_documents: ``"split"``, ``"truncate"`` or ``"error"`` for documents whose
        tokens plus EOD exceed ``seq_len`` (see :mod:`xbatch.packing.pieces`).
      shift: ``"inputs"`` (inputs shifted right, the seed's layout) or ``"targets"``
        (targets shifted left; see :func:`xbatch.packing.pieces.llm_fields`).
      return_stats: also return the :class:`PackingStats` of this call.
      loss_mask: int or bool [total], 1 where a token is trained on, aligned with
        ``tokens``; or None.
      prompt_lengths: int[documents], tokens at the start of each document not trained on
        (``0 <= prompt_lengths <= lengths``); or None. At most one of the two; without
        either every token is trained on. A target not trained on has
        ``targets_segmentation == 0`` (see :class:`LLMPackIterDataset`).
      train_on_eod: whether each document's EOD target is trained on.
      max_documents_per_row: at most this many pieces (segments) per row (grain's
        ``max_sequences_per_bin``), or None for no cap. With ``"concat_then_split"`` a
        row is padded after its last allowed piece and the next piece starts the next row.
      attention_metadata: also return ``{"seq_lengths": int32[rows, M], "seq_offsets":
        int32[rows, M + 1]}`` (M = ``max_documents_per_row``, which it needs):
        :func:`~xbatch.packing.attention_metadata` of ``inputs_segmentation``. Slice it
        with the rows; :func:`~xbatch.packing.varlen_metadata` of a batch's
        ``seq_lengths`` gives its ``cu_seqlens`` and ``max_seqlen``.

    Returns:
      An :class:`LLMBatch` of int32 NumPy arrays [rows, seq_len]; with
      ``attention_metadata`` a tuple ``(batch, metadata)``; with ``return_stats`` the
      stats last: ``(batch, stats)`` or ``(batch, metadata, stats)``.
    """
    segments = metadata_segments(attention_metadata, max_documents_per_row)
    if segments is not None:  # the rows do not depend on it: pack, then describe them
        packed = pack_documents(
            tokens, lengths, seq_len=seq_len, eod_token_id=eod_token_id, pad_token_id=pad_token_id,
            num_packing_bins=num_packing_bins, algorithm=algorithm, long_documents=long_documents, shift=shift,
            return_stats=return_stats, loss_mask=loss_mask, prompt_lengths=prompt_lengths,
            train_on_eod=train_on_eod, max_documents_per_row=max_documents_per_row)
        batch = packed[0] if return_stats else packed
        metadata = row_metadata(batch.inputs_segmentation, max_segments=segments)
        return (batch, metadata, packed[1]) if return_stats else (batch, metadata)
    seq_len = positive_int("seq_len", seq_len)
    eod_token_id = check_token_id("eod_token_id", eod_token_id)
    pad_token_id = check_token_id("pad_token_id", pad_token_id)
    check_choice("algorithm", algorithm, BULK_ALGORITHMS)
    check_choice("long_documents", long_documents, LONG_DOCUMENTS)
    check_choice("shift", shift, SHIFTS)
    cap = None if max_documents_per_row is None else positive_int("max_documents_per_row", max_documents_per_row)
    if num_packing_bins is not None:
        num_packing_bins = positive_int("num_packing_bins", num_packing_bins)
        if algorithm in DECREASING:
            raise ValueError(
                f"algorithm: {algorithm!r} sorts the whole corpus and needs num_packing_bins=None, "
                f"got num_packing_bins={num_packing_bins}"
            )
    tokens = as_tokens("tokens", tokens)
    lengths = as_lengths(lengths, tokens.shape[0])
    mask = cell_loss_mask(lengths, loss_mask, prompt_lengths, eod_loss=int(bool(train_on_eod)))
    if algorithm == ROLLING:
        if num_packing_bins is None:
            raise ValueError("num_packing_bins: rolling_best_fit needs a number of open bins, got None")
        fields, stats = pack_rolling(tokens, lengths, seq_len=seq_len, eod_token_id=eod_token_id,
                                     pad_token_id=pad_token_id, num_bins=num_packing_bins,
                                     long_documents=long_documents, shift=shift, cell_mask=mask, max_pieces=cap)
        return (LLMBatch(**fields), stats) if return_stats else LLMBatch(**fields)
    if algorithm == CONCAT:
        fields, stats = pack_concat(tokens, lengths, seq_len=seq_len, eod_token_id=eod_token_id,
                                    pad_token_id=pad_token_id, long_documents=long_documents, shift=shift,
                                    cell_mask=mask, max_pieces=cap)
        return (LLMBatch(**fields), stats) if return_stats else LLMBatch(**fields)
    pieces = document_pieces(tokens, lengths, seq_len=seq_len, eod_token_id=eod_token_id,
                             long_documents=long_documents, cell_mask=mask)
    if num_packing_bins is None:
        bins, num_rows = place_corpus(pieces.lengths, seq_len, algorithm, cap)
    else:
        bins, num_rows = place_windows(pieces.lengths, seq_len, num_packing_bins, algorithm, cap)
    loss_tokens = np.empty(num_rows, np.int64)
    fields = lay_out_rows(pieces.tokens, pieces.lengths[:, 0], bins, num_rows=num_rows, seq_len=seq_len,
                          eod_token_id=eod_token_id, pad_token_id=pad_token_id, shift=shift,
                          loss_mask=pieces.loss_mask, out_loss_tokens=loss_tokens)
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
        loss_tokens=int(loss_tokens.sum()),
    )
    return batch, stats


def window_documents(
    tokens: Any,
    lengths: Any,
    *,
    seq_len: int,
    eod_token_id: int,
    pad_token_id: int = 0,
    batch_size: int | None = None,
    return_stats: bool = False,
    loss_mask: Any = None,
    prompt_lengths: Any = None,
    train_on_eod: bool = True,
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
      loss_mask, prompt_lengths, train_on_eod: which targets are trained on, as for
        :func:`pack_documents`: a target not trained on has ``targets_segmentation == 0``.

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
    mask = cell_loss_mask(lengths, loss_mask, prompt_lengths, eod_loss=int(bool(train_on_eod)))
    pieces = document_pieces(tokens, lengths, seq_len=seq_len, eod_token_id=eod_token_id,
                             long_documents="split", cell_mask=mask)
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
    targets_segmentation = np.empty_like(segmentation)
    if pieces.loss_mask is None:
        np.copyto(targets_segmentation, segmentation)
    else:
        kernels.scatter_rows(pieces.loss_mask, piece_lengths, rows, targets_segmentation, padding=0)
        np.multiply(targets_segmentation, segmentation, out=targets_segmentation)
    batch = LLMIndexedBatch(
        inputs=inputs,
        targets=targets,
        inputs_position=positions,
        inputs_segmentation=segmentation,
        targets_position=positions.copy(),
        targets_segmentation=targets_segmentation,
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
        loss_tokens=int(np.count_nonzero(targets_segmentation)),
    )
    return batch, stats
