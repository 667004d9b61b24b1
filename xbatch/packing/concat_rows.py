"""Concat-then-split rows: EOD-terminated documents back to back, cut every ``seq_len`` cells.

The layout of grain's ``ConcatThenSplitIterDataset`` (``length_struct={"targets":
seq_len}``) on the EOD-terminated documents: no padding but at the very end of the
stream. A document that runs across a row border becomes one piece per row; every piece
is its own segment and its positions restart at 0 in each row (grain's rule). See
docs/layout.rst for what that means for borders and recurrent models.

Loss masks travel with the cells: a cell's 0/1 mask (its document's mask, then the EOD's)
is cut at the same borders as its token, exactly as grain's packer would cut a second
feature of the same length. ``max_documents_per_row=M`` closes a row after its ``M``-th
piece: the rest of the row is padding and the next piece starts the next row (whole, not
cut at the old border), so a row holds at most ``M`` segments.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable

import numpy as np

from .pieces import document_pieces, lay_out_rows
from .stats import PackingStats


@dataclasses.dataclass(frozen=True)
class Cells:
    """Documents with their EOD, back to back: one parent element or a whole corpus.

    Attributes:
      tokens: int32[cells], every document's tokens and EOD.
      ends: int64[documents], the cell after each document's last (cumulative).
      truncated: int64[documents], tokens ``long_documents="truncate"`` dropped.
      loss_mask: int32[cells] of 0/1 aligned with ``tokens``, or None (all 1).
    """

    tokens: np.ndarray
    ends: np.ndarray
    truncated: np.ndarray
    loss_mask: np.ndarray | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def starts(self) -> np.ndarray:
        """int64[documents], each document's first cell."""
        return np.concatenate([[0], self.ends[:-1]]).astype(np.int64)


def document_cells(tokens: np.ndarray, lengths: np.ndarray, *, seq_len: int, eod_token_id: int,
                   long_documents: str, source: str = "lengths",
                   document_ids: np.ndarray | None = None, cell_mask: np.ndarray | None = None) -> Cells:
    """The documents with their EOD back to back.

    ``"split"`` keeps every document whole (the row borders cut it); ``"truncate"``
    keeps each document's first ``seq_len`` cells and ``"error"`` raises for a document
    whose tokens plus EOD exceed ``seq_len``, as in :mod:`xbatch.packing.pieces`.
    ``cell_mask`` is the EOD-terminated documents' loss mask
    (:func:`~xbatch.packing.pieces.cell_loss_mask`), kept or dropped with its cells.
    """
    if long_documents == "split":
        cells = lengths + 1
        stream = np.insert(tokens, np.cumsum(lengths), np.int32(eod_token_id))
        truncated = np.zeros(lengths.shape[0], np.int64)
        mask = cell_mask
    else:  # one piece per document: truncated, or an error for a long one
        pieces = document_pieces(tokens, lengths, seq_len=seq_len, eod_token_id=eod_token_id,
                                 long_documents=long_documents, source=source,
                                 document_ids=document_ids, cell_mask=cell_mask)
        stream, cells, truncated, mask = pieces.tokens, pieces.lengths[:, 0], pieces.truncated, pieces.loss_mask
    return Cells(stream, np.cumsum(cells, dtype=np.int64), truncated, mask)


@dataclasses.dataclass(frozen=True)
class RowPieces:
    """Slices of documents cut into rows.

    Attributes:
      tokens: int32[cells], the slices back to back.
      lengths: int64[pieces], cells per piece; pieces never cross a row border.
      rows: int64[pieces], each piece's row.
      num_rows: rows (the last one may be partly padding).
      row_stats: int64[rows, 5] per row: tokens, pieces, documents started, documents
        started and cut at the row's end, truncated tokens of the documents started.
      loss_mask: int32[cells] of 0/1 aligned with ``tokens``, or None (all 1).
      cells: cells of the parts laid out (their total, less a last row held back).
    """

    tokens: np.ndarray
    lengths: np.ndarray
    rows: np.ndarray
    num_rows: int
    row_stats: np.ndarray
    loss_mask: np.ndarray | None = None
    cells: int = 0


def row_starts(document_starts: np.ndarray, total: int, seq_len: int, max_pieces: int | None) -> np.ndarray:
    """int64[rows]: the first cell of every row of ``total`` cells, document starts given.

    Without a cap a row starts every ``seq_len`` cells. With ``max_pieces=M`` a row that
    would hold more than ``M`` pieces ends where its ``M + 1``-th piece would start (at a
    document start); the next row starts there. One step per row.
    """
    if max_pieces is None or total == 0:
        return np.arange(0, total, seq_len, dtype=np.int64)
    starts, out, row = document_starts.tolist(), [], 0
    count = len(starts)
    while row < total:
        out.append(row)
        # Pieces of the row: the one at ``row`` and one per document starting inside it.
        nth = bisect.bisect_right(starts, row) + max_pieces - 1  # the (M + 1)-th piece's document
        end = row + seq_len
        row = starts[nth] if nth < count and starts[nth] < end else end
    return np.array(out, np.int64)


def cut_rows(parts: list[tuple[Cells, int, int]], seq_len: int, *, max_pieces: int | None = None,
             final: bool = True) -> RowPieces:
    """Lays the cell slices ``cells[begin:end]`` back to back and cuts them into rows.

    Args:
      parts: ``(cells, begin, end)`` slices, the first starting a row.
      seq_len: cells per row.
      max_pieces: at most this many pieces per row (None: no cap); see the module docstring.
      final: no cells follow the parts. Otherwise a last row shorter than ``seq_len`` is
        held back (more cells could still join it): ``cells`` says where it starts.
    """
    offset, doc_starts, doc_ends, truncated, tokens, masks = 0, [], [], [], [], []
    masked = any(cells.loss_mask is not None for cells, _, _ in parts)
    for cells, begin, end in parts:
        starts = cells.starts
        first, last = np.searchsorted(starts, [begin, end], side="left")
        doc_starts.append(starts[first:last] - begin + offset)
        truncated.append(cells.truncated[first:last])
        first, last = np.searchsorted(cells.ends, [begin, end], side="right")
        doc_ends.append(cells.ends[first:last] - begin + offset)
        tokens.append(cells.tokens[begin:end])
        if masked:
            masks.append(np.ones(end - begin, np.int32) if cells.loss_mask is None else cells.loss_mask[begin:end])
        offset += end - begin
    starts, ends = np.concatenate([np.zeros(0, np.int64), *doc_starts]), np.concatenate([np.zeros(0, np.int64), *doc_ends])
    truncated = np.concatenate([np.zeros(0, np.int64), *truncated])
    first_cells = row_starts(starts, offset, seq_len, max_pieces)
    if not final and first_cells.size and offset - first_cells[-1] < seq_len:
        # Hold the last row back: later cells may still join it (or end its last piece).
        offset = int(first_cells[-1])
        first_cells = first_cells[:-1]
        kept = np.searchsorted(starts, offset, side="left")
        starts, truncated = starts[:kept], truncated[:kept]
        ends = ends[:np.searchsorted(ends, offset, side="right")]
    borders = np.unique(np.concatenate([first_cells, starts, ends, [offset]])).astype(np.int64)
    piece_starts, lengths = borders[:-1], np.diff(borders)
    rows = np.searchsorted(first_cells, piece_starts, side="right") - 1
    num_rows = first_cells.shape[0]
    starts_document = np.isin(piece_starts, starts, assume_unique=True)
    ends_document = np.isin(piece_starts + lengths, ends, assume_unique=True)
    piece_truncated = np.zeros(lengths.shape[0], np.int64)
    piece_truncated[starts_document] = truncated
    weights = (lengths, None, starts_document, starts_document & ~ends_document, piece_truncated)
    row_stats = np.stack([np.bincount(rows, w, minlength=num_rows) for w in weights], axis=1).astype(np.int64)
    flat = np.concatenate([np.zeros(0, np.int32), *tokens])[:offset]
    mask = np.concatenate(masks)[:offset] if masked else None
    return RowPieces(flat, lengths, rows.astype(np.int64), num_rows, row_stats.reshape(num_rows, 5), mask, offset)


def lay_out(pieces: RowPieces, *, seq_len: int, eod_token_id: int, pad_token_id: int, shift: str,
            empty: Callable[..., np.ndarray] = np.empty,
            out_loss_tokens: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The six LLM fields, int32 [rows, seq_len], of cut rows (and, in ``out_loss_tokens``
    if given, the targets trained on per row)."""
    return lay_out_rows(pieces.tokens, pieces.lengths, pieces.rows, num_rows=pieces.num_rows, seq_len=seq_len,
                        eod_token_id=eod_token_id, pad_token_id=pad_token_id, shift=shift,
                        loss_mask=pieces.loss_mask, empty=empty, out_loss_tokens=out_loss_tokens)


def pack_concat(tokens: np.ndarray, lengths: np.ndarray, *, seq_len: int, eod_token_id: int, pad_token_id: int,
                long_documents: str, shift: str, cell_mask: np.ndarray | None = None,
                max_pieces: int | None = None) -> tuple[dict[str, np.ndarray], PackingStats]:
    """A whole corpus (validated tokens and lengths) as concat-then-split rows: the six
    LLM fields and the stats. ``cell_mask``: the EOD-terminated documents' loss mask
    (or None); ``max_pieces``: at most this many pieces per row (or None)."""
    cells = document_cells(tokens, lengths, seq_len=seq_len, eod_token_id=eod_token_id,
                           long_documents=long_documents, cell_mask=cell_mask)
    pieces = cut_rows([(cells, 0, len(cells))], seq_len, max_pieces=max_pieces)
    loss_tokens = np.empty(pieces.num_rows, np.int64)
    fields = lay_out(pieces, seq_len=seq_len, eod_token_id=eod_token_id, pad_token_id=pad_token_id, shift=shift,
                     out_loss_tokens=loss_tokens)
    tokens_in_rows, num_pieces, _, split, truncated = (int(n) for n in pieces.row_stats.sum(axis=0))
    stats = PackingStats(rows=pieces.num_rows, documents=lengths.shape[0], pieces=num_pieces, tokens=tokens_in_rows,
                         capacity=pieces.num_rows * seq_len, tokens_truncated=truncated, documents_split=split,
                         loss_tokens=int(loss_tokens.sum()))
    return fields, stats
