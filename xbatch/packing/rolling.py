"""Rolling best fit: an online packer whose bins stay open (``algorithm="rolling_best_fit"``).

grain's window rule emits *all* bins when one document fits none. Here the bins stay
open: pieces (EOD-terminated documents, or their row-sized parts) go through a small
look-ahead buffer into the fullest bin with room, and only one bin leaves when nothing
fits, topped up from the buffer first (:class:`xbatch.kernels.RollingPacker`: bins
bucketed by the room they have left, a few word reads per piece whatever the number of
bins). Rows leave in the order their bins close.

Bounds, in pieces read (a document shorter than a row is one piece):

- waiting: a piece is in an emitted row at the latest ``buffer_wait + bin_wait``
  pieces after its own (defaults: ``192 * num_packing_bins``);
- checkpoints: every ``checkpoint_every`` pieces (default ``1024 * num_packing_bins``)
  every open bin and the buffer are emptied, best-fit-decreasing into as few rows as
  possible, so the packer holds nothing there. The checkpoint state is the parent's state
  at the last such point, the piece index in its element, and the rows emitted since:
  restoring replays at most ``checkpoint_every`` pieces. That costs about half a row per
  ``checkpoint_every`` pieces in fill (see docs/packers.rst for measurements).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import kernels
from .._checks import positive_int
from .pieces import Pieces, as_lengths, as_tokens, chunk_source, document_pieces, lay_out_rows, refuse_loss_masks
from .stats import PackingStats


@dataclasses.dataclass(frozen=True)
class RollingOptions:
    """Look-ahead and bounds of rolling best fit, in pieces (see the module docstring).

    Attributes:
      buffer_size: pieces held back to choose from.
      buffer_wait: pieces read after its own before a buffered piece must go into a bin.
      bin_wait: pieces read after a bin's first piece before the bin must leave.
      checkpoint_every: pieces between two points where every bin is emptied.
    """

    buffer_size: int
    buffer_wait: int
    bin_wait: int
    checkpoint_every: int

    @classmethod
    def for_bins(cls, num_bins: int) -> RollingOptions:
        """The defaults for ``num_bins`` open bins: 8, 64, 128 and 1024 pieces per bin."""
        return cls(buffer_size=8 * num_bins, buffer_wait=64 * num_bins, bin_wait=128 * num_bins,
                   checkpoint_every=1024 * num_bins)

    @property
    def max_wait(self) -> int:
        """Pieces read after its own by which a piece is in an emitted row, at the latest."""
        return self.buffer_wait + self.bin_wait

    def packer(self, seq_len: int, num_bins: int) -> kernels.RollingPacker:
        positive_int("checkpoint_every", self.checkpoint_every)
        return kernels.RollingPacker(seq_len, num_bins=num_bins, buffer_size=self.buffer_size,
                                     buffer_wait=self.buffer_wait, bin_wait=self.bin_wait)


def gather_pieces(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``tokens[starts[i] : starts[i] + lengths[i]]`` for every ``i``, back to back."""
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, tokens.dtype)
    shift = starts - (np.cumsum(lengths) - lengths)
    return tokens[np.repeat(shift, lengths) + np.arange(total)]


def pack_rolling(tokens: np.ndarray, lengths: np.ndarray, *, seq_len: int, eod_token_id: int, pad_token_id: int,
                 num_bins: int, long_documents: str, shift: str,
                 options: RollingOptions | None = None) -> tuple[dict[str, np.ndarray], PackingStats]:
    """A whole corpus (validated tokens and lengths) packed by rolling best fit: the six
    LLM fields (the rows :class:`LLMPackIterDataset` yields) and the stats."""
    options = options or RollingOptions.for_bins(num_bins)
    pieces = document_pieces(tokens, lengths, seq_len=seq_len, eod_token_id=eod_token_id,
                             long_documents=long_documents)
    packer = options.packer(seq_len, num_bins)
    order, sizes = [], []
    piece_lengths = pieces.lengths[:, 0]
    for start in range(0, len(pieces), options.checkpoint_every):
        packer.push(piece_lengths[start:start + options.checkpoint_every])
        packer.drain()
        ids, row_sizes = packer.take_rows()
        order.append(ids + start)
        sizes.append(row_sizes)
    order = np.concatenate([np.zeros(0, np.int64), *order])
    sizes = np.concatenate([np.zeros(0, np.int64), *sizes])
    rows = np.repeat(np.arange(sizes.shape[0]), sizes)
    fields = lay_out_rows(gather_pieces(pieces.tokens, pieces.offsets[order], piece_lengths[order]),
                          piece_lengths[order], rows, num_rows=sizes.shape[0], seq_len=seq_len,
                          eod_token_id=eod_token_id, pad_token_id=pad_token_id, shift=shift)
    stats = PackingStats(rows=sizes.shape[0], documents=pieces.num_documents, pieces=len(pieces),
                         tokens=pieces.tokens.shape[0], capacity=sizes.shape[0] * seq_len,
                         tokens_truncated=int(pieces.truncated.sum()),
                         documents_split=int(pieces.starts_split_document.sum()),
                         loss_tokens=pieces.tokens.shape[0] - sizes.shape[0] * (shift == "targets"))
    return fields, stats


class _Arena:
    """Tokens and statistics of the pieces pushed since the last checkpoint point, by id.

    Emitted pieces leave holes; :meth:`compact` keeps only the held ones once the holes
    outweigh them, so memory follows what the packer holds, not the interval's length.
    """

    _COLUMNS = (("starts", np.int64), ("lengths", np.int64), ("starts_document", bool),
                ("starts_split", bool), ("truncated", np.int64))

    COMPACT_TOKENS = 1 << 20  # holes below this many tokens are not worth a copy

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.tokens = np.zeros(1 << 12, np.int32)
        self.size = 0  # tokens used
        self.base = 0  # id of column entry 0
        self.count = 0  # ids stored: base .. base + count - 1
        self.columns = {name: np.zeros(1 << 8, dtype) for name, dtype in self._COLUMNS}
        self.live_tokens = 0

    def add(self, pieces: Pieces, start: int, stop: int) -> None:
        """Stores ``pieces[start:stop]`` under the next ids."""
        tokens = pieces.tokens[pieces.offsets[start]:pieces.offsets[stop]]
        if self.size + tokens.shape[0] > self.tokens.shape[0]:
            grown = np.zeros(max(2 * self.tokens.shape[0], self.size + tokens.shape[0]), np.int32)
            grown[:self.size] = self.tokens[:self.size]
            self.tokens = grown
        self.tokens[self.size:self.size + tokens.shape[0]] = tokens
        count = stop - start
        if self.count + count > self.columns["starts"].shape[0]:
            size = max(2 * self.columns["starts"].shape[0], self.count + count)
            for name, column in self.columns.items():
                grown = np.zeros(size, column.dtype)
                grown[:self.count] = column[:self.count]
                self.columns[name] = grown
        new = slice(self.count, self.count + count)
        self.columns["starts"][new] = pieces.offsets[start:stop] - pieces.offsets[start] + self.size
        self.columns["lengths"][new] = pieces.lengths[start:stop, 0]
        self.columns["starts_document"][new] = pieces.starts_document[start:stop]
        self.columns["starts_split"][new] = pieces.starts_split_document[start:stop]
        self.columns["truncated"][new] = pieces.truncated[start:stop]
        self.size += tokens.shape[0]
        self.count += count
        self.live_tokens += tokens.shape[0]

    def take(self, ids: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(tokens back to back, per-piece columns) of emitted pieces, which it forgets."""
        index = ids - self.base
        columns = {name: column[index] for name, column in self.columns.items()}
        self.live_tokens -= int(columns["lengths"].sum())
        return gather_pieces(self.tokens, columns["starts"], columns["lengths"]), columns

    def wants_compaction(self) -> bool:
        """Whether the emitted pieces' holes outweigh the held pieces (and are big)."""
        return self.size >= max(self.COMPACT_TOKENS, 2 * self.live_tokens)

    def compact(self, held_ids: np.ndarray) -> None:
        """Keeps the held pieces' tokens only: ``held_ids`` ascending, all of them."""
        low = int(held_ids[0]) if held_ids.size else self.base + self.count
        index = held_ids - self.base
        lengths = self.columns["lengths"][index]
        tokens = gather_pieces(self.tokens, self.columns["starts"][index], lengths)
        self.columns["starts"][index] = np.cumsum(lengths) - lengths
        keep = slice(low - self.base, self.count)
        self.columns = {name: column[keep].copy() for name, column in self.columns.items()}
        self.count -= low - self.base
        self.base = low
        self.tokens = np.zeros(max(1 << 12, 2 * tokens.shape[0]), np.int32)
        self.tokens[:tokens.shape[0]] = tokens
        self.size = tokens.shape[0]


def element_pieces(element: Any, *, seq_len: int, eod_token_id: int, long_documents: str) -> Pieces:
    """A parent element (one document, or a ragged chunk) as EOD-terminated pieces."""
    if isinstance(element, Mapping):
        refuse_loss_masks(element, "rolling_best_fit")
        if "tokens" not in element or "lengths" not in element:
            raise ValueError(
                f"parent element: a ragged chunk needs the keys 'tokens' and 'lengths', got keys {sorted(element)}"
            )
        tokens = as_tokens("tokens", element["tokens"])
        lengths = as_lengths(element["lengths"], tokens.shape[0])
        source, document_ids = chunk_source(element, lengths.shape[0])
    else:
        tokens = as_tokens("document", element)
        lengths = np.array([tokens.shape[0]], dtype=np.int64)
        source, document_ids = "the parent element (a single document)", None
    return document_pieces(tokens, lengths, seq_len=seq_len, eod_token_id=eod_token_id,
                           long_documents=long_documents, source=source, document_ids=document_ids)
