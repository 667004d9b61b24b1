"""Concat-then-split rows: EOD-terminated documents back to back, cut every ``seq_len`` cells.

The layout of grain's ``ConcatThenSplitIterDataset`` (``length_struct={"targets":
seq_len}``) on the EOD-terminated documents: no padding but at the very end of the
stream. A document that runs across a row border becomes one piece per row; every piece
is its own segment and its positions restart at 0 in each row (grain's rule). See
docs/layout.rst for what that means for borders and recurrent models.
"""

from __future__ import annotations

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
    """

    tokens: np.ndarray
    ends: np.ndarray
    truncated: np.ndarray

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def starts(self) -> np.ndarray:
        """int64[documents], each document's first cell."""
        return np.concatenate([[0], self.ends[:-1]]).astype(np.int64)


def document_cells(tokens: np.ndarray, lengths: np.ndarray, *, seq_len: int, eod_token_id: int,
                   long_documents: str, source: str = "lengths",
                   document_ids: np.ndarray | None = None) -> Cells:
    """The documents with their EOD back to back.

    ``"split"`` keeps every document whole (the row borders cut it); ``"truncate"``
    keeps each document's first ``seq_len`` cells and ``"error"`` raises for a document
    whose tokens plus EOD exceed ``seq_len``, as in :mod:`xbatch.packing.pieces`.
    """
    if long_documents == "split":
        cells = lengths + 1
        stream = np.insert(tokens, np.cumsum(lengths), np.int32(eod_token_id))
        truncated = np.zeros(lengths.shape[0], np.int64)
    else:  # one piece per document: truncated, or an error for a long one
        pieces = document_pieces(tokens, lengths, seq_len=seq_len, eod_token_id=eod_token_id,
                                 long_documents=long_documents, source=source,
                                 document_ids=document_ids)
        stream, cells, truncated = pieces.tokens, pieces.lengths[:, 0], pieces.truncated
    return Cells(stream, np.cumsum(cells, dtype=np.int64), truncated)


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
    """

    tokens: np.ndarray
    lengths: np.ndarray
    rows: np.ndarray
    num_rows: int
    row_stats: np.ndarray


def cut_rows(parts: list[tuple[Cells, int, int]], seq_len: int) -> RowPieces:
    """Lays the cell slices ``cells[begin:end]`` back to back and cuts them into rows.

    Args:
      parts: ``(cells, begin, end)`` slices, the first starting a row.
      seq_len: cells per row.
    """
    offset, doc_starts, doc_ends, truncated, tokens = 0, [], [], [], []
    for cells, begin, end in parts:
        starts = cells.starts
        first, last = np.searchsorted(starts, [begin, end], side="left")
        doc_starts.append(starts[first:last] - begin + offset)
        truncated.append(cells.truncated[first:last])
        first, last = np.searchsorted(cells.ends, [begin, end], side="right")
        doc_ends.append(cells.ends[first:last] - begin + offset)
        tokens.append(cells.tokens[begin:end])
        offset += end - begin
    starts, ends = np.concatenate([np.zeros(0, np.int64), *doc_starts]), np.concatenate([np.zeros(0, np.int64), *doc_ends])
    borders = np.unique(np.concatenate([np.arange(0, offset, seq_len), starts, ends, [offset]])).astype(np.int64)
    piece_starts, lengths = borders[:-1], np.diff(borders)
    rows = piece_starts // seq_len
    num_rows = -(-offset // seq_len)
    starts_document = np.isin(piece_starts, starts, assume_unique=True)
    ends_document = np.isin(piece_starts + lengths, ends, assume_unique=True)
    piece_truncated = np.zeros(lengths.shape[0], np.int64)
    piece_truncated[starts_document] = np.concatenate([np.zeros(0, np.int64), *truncated])
    weights = (lengths, None, starts_document, starts_document & ~ends_document, piece_truncated)
    row_stats = np.stack([np.bincount(rows, w, minlength=num_rows) for w in weights], axis=1).astype(np.int64)
    return RowPieces(np.concatenate([np.zeros(0, np.int32), *tokens]), lengths, rows, num_rows,
                     row_stats.reshape(num_rows, 5))


def lay_out(pieces: RowPieces, *, seq_len: int, eod_token_id: int, pad_token_id: int, shift: str,
            empty: Callable[..., np.ndarray] = np.empty) -> dict[str, np.ndarray]:
    """The six LLM fields, int32 [rows, seq_len], of cut rows."""
    return lay_out_rows(pieces.tokens, pieces.lengths, pieces.rows, num_rows=pieces.num_rows, seq_len=seq_len,
                        eod_token_id=eod_token_id, pad_token_id=pad_token_id, shift=shift, empty=empty)


def pack_concat(tokens: np.ndarray, lengths: np.ndarray, *, seq_len: int, eod_token_id: int, pad_token_id: int,
                long_documents: str, shift: str) -> tuple[dict[str, np.ndarray], PackingStats]:
    """A whole corpus (validated tokens and lengths) as concat-then-split rows: the six
    LLM fields and the stats."""
    cells = document_cells(tokens, lengths, seq_len=seq_len, eod_token_id=eod_token_id,
                           long_documents=long_documents)
    pieces = cut_rows([(cells, 0, len(cells))], seq_len)
    fields = lay_out(pieces, seq_len=seq_len, eod_token_id=eod_token_id, pad_token_id=pad_token_id, shift=shift)
    tokens_in_rows, num_pieces, _, split, truncated = (int(n) for n in pieces.row_stats.sum(axis=0))
    stats = PackingStats(rows=pieces.num_rows, documents=lengths.shape[0], pieces=num_pieces, tokens=tokens_in_rows,
                         capacity=pieces.num_rows * seq_len, tokens_truncated=truncated, documents_split=split,
                         loss_tokens=tokens_in_rows - pieces.num_rows * (shift == "targets"))
    return fields, stats
