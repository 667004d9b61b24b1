"""Packed rows on demand: a random-access source over (corpus, packing index).

:class:`PackedRows` builds any requested rows from the (memory-mapped) corpus and a
:class:`~xbatch.packing.index.PackingIndex`, in the LLM layout, equal to the rows
:func:`~xbatch.packing.bulk.pack_documents` writes, with one compiled gather
(:func:`xbatch.kernels.gather_packed_rows`: one pass per row from the corpus tokens and
the index). Being random access, it works as a ``grain.MapDataset`` source: ``shuffle``,
``slice``, any number of workers and elastic resharding (see
:class:`xbatch.multihost.GlobalBatchIterator`) need no packing state.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .. import kernels
from .index import PackingIndex, check_index, corpus_identity

FIELDS = ("inputs", "targets", "inputs_position", "inputs_segmentation", "targets_position",
          "targets_segmentation")


@dataclasses.dataclass(frozen=True)
class _Part:
    """The documents of one corpus shard and the index rows built from them alone."""

    tokens: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    first_document: int
    first_row: int


class PackedRows:
    """Rows of a packing index, built from the corpus when asked for.

    Args:
      tokens: the corpus's tokens back to back (e.g. a memory map), a 1-d integer array
        of any width up to 64 bits (``uint16`` corpora are read as they are); ids must
        lie in ``[0, 2**31)``.
      offsets: int64[documents + 1], where each document starts in ``tokens``.
      index: the corpus's :class:`PackingIndex` (e.g. from ``load_index``).
      verify: check that the index belongs to this corpus (document count, token count,
        digest of the lengths) and that every piece lies inside its document, once, here
        (reads the whole index). With ``verify=False`` only the counts are checked; a read
        of a row whose pieces lie outside their documents raises, and no read ever leaves
        the corpus or the index either way (the gather checks every value it uses).

    ``rows[i]`` is a dict of the six int32 fields of row ``i`` (each ``[seq_len]``);
    :meth:`read_rows` builds many rows at once (``[n, seq_len]`` each), much faster per row.
    """

    def __init__(self, tokens: Any, offsets: Any, index: PackingIndex, *, verify: bool = True):
        tokens = np.asarray(tokens)
        offsets = np.asarray(offsets)
        if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            raise ValueError(f"tokens: expected a 1-d integer array, got dtype {tokens.dtype}, shape {tokens.shape}")
        if offsets.ndim != 1 or offsets.dtype.kind not in "iu" or offsets.shape[0] < 1:
            raise ValueError(f"offsets: expected a 1-d integer array of documents + 1 offsets, got {offsets.shape}")
        offsets = offsets.astype(np.int64, copy=False)
        if offsets[0] != 0 or offsets[-1] != tokens.shape[0]:
            raise ValueError(f"offsets: expected to run from 0 to the {tokens.shape[0]} tokens, got "
                             f"{int(offsets[0])} .. {int(offsets[-1])}")
        self._setup([_Part(tokens, offsets[:-1], offsets[1:], 0, 0)], np.diff(offsets), index, verify)

    def _setup(self, parts: list[_Part], lengths: np.ndarray, index: PackingIndex, verify: bool) -> None:
        if (lengths < 0).any():
            raise ValueError("offsets: expected non-decreasing offsets (document lengths >= 0)")
        corpus = index.corpus
        counts = (lengths.shape[0], int(lengths.sum()))
        if corpus and (corpus.get("num_documents"), corpus.get("num_tokens")) != counts:
            raise ValueError(
                f"the index was built for {corpus.get('num_documents')} documents of {corpus.get('num_tokens')}"
                f" tokens; this corpus has {counts[0]} documents of {counts[1]} tokens"
            )
        if verify:
            if corpus and corpus_identity(lengths)["lengths_sha256"] != corpus.get("lengths_sha256"):
                raise ValueError("the index was built for another corpus: its document lengths differ")
            check_index(index, lengths)
        self._parts, self.index = parts, index
        self._part_rows = np.array([part.first_row for part in parts[1:]], dtype=np.int64)
        arguments = index.arguments
        self.seq_len = int(arguments["seq_len"])
        self._eod, self._pad, self._shift = arguments["eod_token_id"], arguments["pad_token_id"], arguments["shift"]
        self._num_documents = lengths.shape[0]

    @classmethod
    def from_corpus(cls, corpus: Any, index: PackingIndex, *, verify: bool = True) -> PackedRows:
        """Rows of ``index`` over an :class:`xbatch.sources.Corpus` (e.g. from
        ``open_corpus``), its tokens memory-mapped and read in their own dtype.

        A corpus of several shards (e.g. several files) needs an index whose shards each
        lie inside one corpus shard, as ``xbatch pack FILES --index-out`` writes over the
        same files: a row's pieces then come from one file.
        """
        shard_starts = np.asarray(corpus.shard_starts, dtype=np.int64)
        last_shard = len(corpus.shards) - 1
        parts, first_row = [], 0
        for shard in index.shards:
            first, stop = shard["first_document"], shard["first_document"] + shard["num_documents"]
            # The corpus shard holding document `first` (past empty shards).
            s = min(max(int(np.searchsorted(shard_starts, first, side="right")) - 1, 0), last_shard)
            if not shard_starts[s] <= first <= stop <= shard_starts[s + 1]:
                raise ValueError(
                    f"index shard of documents {first}..{stop - 1} spans corpus shards (files); index the files "
                    "one task each (xbatch pack FILES --index-out) to serve rows from several shards"
                )
            if not parts or parts[-1].first_document != shard_starts[s]:
                piece = corpus.shards[s]
                parts.append(_Part(piece.tokens, piece.starts, piece.ends, int(shard_starts[s]), first_row))
            first_row += shard["rows"]
        if not parts:
            raise ValueError("index: lists no shards")
        rows = cls.__new__(cls)
        rows._setup(parts, corpus.lengths(), index, verify)
        return rows

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
        return f"PackedRows(rows={len(self)}, seq_len={self.seq_len}, documents={self._num_documents})"

    def read_rows(self, rows: Any, out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The six int32 fields ``[len(rows), seq_len]`` of the given rows, in that order.

        Negative indices count from the end, as for lists; others out of range raise.
        ``out``: optional dict of the six fields' arrays to write (reused buffers).
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
        if len(self._parts) == 1:
            return self._gather(self._parts[0], rows, out)
        # Several corpus shards: one gather per shard, each row to its place.
        part_of = np.searchsorted(self._part_rows, rows, side="right")
        if out is None:
            out = {name: np.empty((rows.shape[0], self.seq_len), np.int32) for name in FIELDS}
        for p in np.unique(part_of):
            where = np.flatnonzero(part_of == p)
            fields = self._gather(self._parts[p], rows[where], None)
            for name in FIELDS:
                out[name][where] = fields[name]
        return out

    def _gather(self, part: _Part, rows: np.ndarray, out: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        index = self.index
        return kernels.gather_packed_rows(
            part.tokens, part.starts, part.ends, index.piece_document, index.piece_start, index.piece_length,
            index.row_offsets, rows, seq_len=self.seq_len, eod_token_id=self._eod, pad_token_id=self._pad,
            shift=self._shift, first_document=part.first_document, out=out)
