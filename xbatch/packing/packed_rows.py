"""Packed rows on demand: a random-access source over (corpus, packing index).

:class:`PackedRows` builds any requested rows from the (memory-mapped) corpus and a
:class:`~xbatch.packing.index.PackingIndex`, in the LLM layout, equal to the rows
:func:`~xbatch.packing.bulk.pack_documents` writes. Being random access, it works as a
``grain.MapDataset`` source: ``shuffle``, ``slice``, any number of workers and elastic
resharding (see :class:`xbatch.multihost.GlobalBatchIterator`) need no packing state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .index import PackingIndex, check_index, corpus_identity
from .pieces import llm_fields, pack_pieces

FIELDS = ("inputs", "targets", "inputs_position", "inputs_segmentation", "targets_position",
          "targets_segmentation")


class PackedRows:
    """Rows of a packing index, built from the corpus when asked for.

    Args:
      tokens: int32[total], the corpus's tokens back to back (e.g. a memory map).
      offsets: int64[documents + 1], where each document starts in ``tokens``.
      index: the corpus's :class:`PackingIndex` (e.g. from ``load_index``).
      verify: check that the index belongs to this corpus (document count, token count,
        digest of the lengths) and that every piece lies inside its document, once, here.
        With ``verify=False`` only the cheap counts are checked; reads may then return
        wrong tokens for a wrong corpus, but never read outside ``tokens``.

    ``rows[i]`` is a dict of the six int32 fields of row ``i`` (each ``[seq_len]``);
    :meth:`read_rows` builds many rows at once (``[n, seq_len]`` each), much faster per row.
    """

    def __init__(self, tokens: Any, offsets: Any, index: PackingIndex, *, verify: bool = True):
        tokens = np.asarray(tokens)
        offsets = np.asarray(offsets)
        if tokens.ndim != 1 or tokens.dtype != np.int32:
            raise ValueError(f"tokens: expected a 1-d int32 array, got dtype {tokens.dtype}, shape {tokens.shape}")
        if offsets.ndim != 1 or offsets.dtype.kind not in "iu" or offsets.shape[0] < 1:
            raise ValueError(f"offsets: expected a 1-d integer array of documents + 1 offsets, got {offsets.shape}")
        offsets = offsets.astype(np.int64, copy=False)
        if offsets[0] != 0 or offsets[-1] != tokens.shape[0]:
            raise ValueError(f"offsets: expected to run from 0 to the {tokens.shape[0]} tokens, got "
                             f"{int(offsets[0])} .. {int(offsets[-1])}")
        lengths = np.diff(offsets)
        if (lengths < 0).any():
            raise ValueError("offsets: expected non-decreasing offsets")
        corpus = index.corpus
        counts = (lengths.shape[0], tokens.shape[0])
        if corpus and (corpus.get("num_documents"), corpus.get("num_tokens")) != counts:
            raise ValueError(
                f"the index was built for {corpus.get('num_documents')} documents of {corpus.get('num_tokens')}"
                f" tokens; this corpus has {counts[0]} documents of {counts[1]} tokens"
            )
        if verify:
            if corpus and corpus_identity(lengths)["lengths_sha256"] != corpus.get("lengths_sha256"):
                raise ValueError("the index was built for another corpus: its document lengths differ")
            check_index(index, lengths)
        elif index.piece_document.shape[0] and int(index.piece_document.max()) >= lengths.shape[0]:
            raise ValueError("index: piece documents lie past the corpus's documents")
        self._tokens, self._offsets, self.index = tokens, offsets, index
        arguments = index.arguments
        self.seq_len = int(arguments["seq_len"])
        self._eod, self._pad, self._shift = arguments["eod_token_id"], arguments["pad_token_id"], arguments["shift"]

    @classmethod
    def from_corpus(cls, corpus: Any, index: PackingIndex, *, verify: bool = True) -> PackedRows:
        """Rows of ``index`` over an :class:`xbatch.sources.Corpus` with one contiguous shard
        (e.g. from ``open_corpus``); its tokens stay memory-mapped."""
        return cls(corpus.tokens, corpus.offsets, index, verify=verify)

    def __len__(self) -> int:
        return self.index.num_rows

    def __getitem__(self, row: int) -> dict[str, np.ndarray]:
        if not isinstance(row, (int, np.integer)) or isinstance(row, bool):
            raise TypeError(f"row: expected an integer row index, got {row!r}")
        fields = self.read_rows(np.array([row]))
        return {name: value[0] for name, value in fields.items()}

    def __getitems__(self, rows: Any) -> list[dict[str, np.ndarray]]:
        fields = self.read_rows(rows)
        return [{name: value[i] for name, value in fields.items()} for i in range(len(rows))]

    def __repr__(self) -> str:
        return f"PackedRows(rows={len(self)}, seq_len={self.seq_len}, documents={self._offsets.shape[0] - 1})"

    def read_rows(self, rows: Any) -> dict[str, np.ndarray]:
        """The six int32 fields ``[len(rows), seq_len]`` of the given rows, in that order.

        Negative indices count from the end, as for lists; others out of range raise.
        """
        rows = np.asarray(rows)
        if rows.dtype.kind not in "iu" or rows.ndim != 1:
            raise TypeError(f"rows: expected a 1-d array of integer row indices, got {rows.dtype} {rows.shape}")
        num_rows = len(self)
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < -num_rows or rows.max() >= num_rows):
            bad = rows[(rows < -num_rows) | (rows >= num_rows)][0]
            raise IndexError(f"row {int(bad)} out of range for {num_rows} rows")
        rows = np.where(rows < 0, rows + num_rows, rows)
        index = self.index
        first, last = index.row_offsets[rows], index.row_offsets[rows + 1]
        counts = last - first
        total = int(counts.sum())
        # Every requested piece, row by row, and the output row it goes to.
        before = np.cumsum(counts) - counts
        pieces = np.repeat(first - before, counts) + np.arange(total, dtype=np.int64)
        out_rows = np.repeat(np.arange(rows.shape[0], dtype=np.int64), counts)
        document = np.asarray(index.piece_document[pieces], dtype=np.int64)
        length = np.asarray(index.piece_length[pieces], dtype=np.int64)
        cell = np.asarray(index.piece_start[pieces], dtype=np.int64)
        # Token index of every cell; a piece's cell past its document's tokens is the EOD.
        cell_base = np.cumsum(length) - length
        source = np.repeat(self._offsets[document] + cell - cell_base, length) + np.arange(
            int(length.sum()), dtype=np.int64)
        is_eod = source == np.repeat(self._offsets[document + 1], length)
        if self._tokens.shape[0]:  # clip: an EOD cell may point one past the last token
            values = np.asarray(self._tokens[np.minimum(source, self._tokens.shape[0] - 1)])
        else:
            values = np.empty(source.shape[0], np.int32)
        values[is_eod] = self._eod
        shape = (rows.shape[0], self.seq_len)
        packed, segmentation, positions = (np.empty(shape, np.int32) for _ in range(3))
        pack_pieces(values, length, out_rows, packed, segmentation, positions, pad_token_id=self._pad)
        return llm_fields(packed, segmentation, positions, eod_token_id=self._eod, pad_token_id=self._pad,
                          shift=self._shift)
