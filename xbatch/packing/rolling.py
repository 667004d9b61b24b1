"""Rolling best fit: an online packer whose bins stay open (``algorithm="rolling_best_fit"``).

grain's window rule emits *all* bins when one document fits none. Here the bins stay
open: pieces (EOD-terminated documents, or their row-sized parts) go through a
look-ahead buffer into the fullest bin with room, and only one bin leaves when nothing
fits, topped up from the buffer first (:class:`xbatch.kernels.RollingPacker`: bins
bucketed by the room they have left, a few word reads per piece whatever the number of
bins). Rows leave in the order their bins close.

Bounds, in pieces read (a document shorter than a row is one piece):

- waiting: a piece is in an emitted row at the latest ``buffer_wait + bin_wait``
  pieces after its own (defaults: ``192 * num_packing_bins + 2048``);
- checkpoints: every ``checkpoint_every`` pieces (default ``1024 * num_packing_bins +
  16384``) every open bin and the buffer are emptied, best-fit-decreasing into as few rows as
  possible, so the packer holds nothing there. The checkpoint state is the parent's state
  at the last such point, the piece index in its element, and the rows emitted since:
  restoring replays at most ``checkpoint_every`` pieces. That costs about half a row per
  ``checkpoint_every`` pieces in fill (see docs/packers.rst for measurements).

Loss masks travel with their tokens (each piece's mask is stored and laid out with it),
``train_on_eod`` sets every EOD's, and ``max_documents_per_row`` caps the pieces of a bin:
a bin that reaches the cap leaves at once, and checkpoint points respect it too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import kernels
from .._checks import positive_int
from .pieces import (
    Pieces,
    as_lengths,
    as_tokens,
    cell_loss_mask,
    chunk_source,
    document_pieces,
    document_with_mask,
    lay_out_rows,
)
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
        """The defaults for ``num_bins`` open bins (B): a buffer of ``8 B + 1024`` pieces
        that wait at most ``64 B + 2048`` pieces, bins open at most ``128 B`` pieces,
        checkpoint points every ``1024 B + 16384`` pieces.

        The buffer's floor keeps fill within half a point of offline best-fit-decreasing
        even at 1-8 bins on long-tailed real lengths (``bench/bench_rolling.py``); it costs
        no time per piece (the kernel's cost does not grow with it), only memory for the
        buffered pieces' tokens and a longer waiting bound.
        """
        return cls(buffer_size=8 * num_bins + 1024, buffer_wait=64 * num_bins + 2048, bin_wait=128 * num_bins,
                   checkpoint_every=1024 * num_bins + 16384)

    @property
    def max_wait(self) -> int:
        """Pieces read after its own by which a piece is in an emitted row, at the latest."""
        return self.buffer_wait + self.bin_wait

    def packer(self, seq_len: int, num_bins: int, max_pieces: int | None = None) -> kernels.RollingPacker:
        """The kernel, at most ``max_pieces`` pieces per row (None: no cap)."""
        positive_int("checkpoint_every", self.checkpoint_every)
        return kernels.RollingPacker(seq_len, num_bins=num_bins, buffer_size=self.buffer_size,
                                     buffer_wait=self.buffer_wait, bin_wait=self.bin_wait, max_items=max_pieces)


def gather_pieces(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``tokens[starts[i] : starts[i] + lengths[i]]`` for every ``i``, back to back."""
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, tokens.dtype)
    shift = starts - (np.cumsum(lengths) - lengths)
    return tokens[np.repeat(shift, lengths) + np.arange(total)]


def pack_rolling(tokens: np.ndarray, lengths: np.ndarray, *, seq_len: int, eod_token_id: int, pad_token_id: int,
                 num_bins: int, long_documents: str, shift: str, cell_mask: np.ndarray | None = None,
                 max_pieces: int | None = None,
                 options: RollingOptions | None = None) -> tuple[dict[str, np.ndarray], PackingStats]:
    """A whole corpus (validated tokens and lengths) packed by rolling best fit: the six
    LLM fields (the rows :class:`LLMPackIterDataset` yields) and the stats.

    ``cell_mask``: the documents' loss mask with each EOD's (see
    :func:`~xbatch.packing.pieces.cell_loss_mask`), or None; ``max_pieces``: at most this
    many pieces per row, or None.
    """
    options = options or RollingOptions.for_bins(num_bins)
    pieces = document_pieces(tokens, lengths, seq_len=seq_len, eod_token_id=eod_token_id,
                             long_documents=long_documents, cell_mask=cell_mask)
    packer = options.packer(seq_len, num_bins, max_pieces)
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
    starts, placed_lengths = pieces.offsets[order], piece_lengths[order]
    mask = None if pieces.loss_mask is None else gather_pieces(pieces.loss_mask, starts, placed_lengths)
    loss_tokens = np.empty(sizes.shape[0], np.int64)
    fields = lay_out_rows(gather_pieces(pieces.tokens, starts, placed_lengths), placed_lengths, rows,
                          num_rows=sizes.shape[0], seq_len=seq_len, eod_token_id=eod_token_id,
                          pad_token_id=pad_token_id, shift=shift, loss_mask=mask, out_loss_tokens=loss_tokens)
    stats = PackingStats(rows=sizes.shape[0], documents=pieces.num_documents, pieces=len(pieces),
                         tokens=pieces.tokens.shape[0], capacity=sizes.shape[0] * seq_len,
                         tokens_truncated=int(pieces.truncated.sum()),
                         documents_split=int(pieces.starts_split_document.sum()),
                         loss_tokens=int(loss_tokens.sum()))
    return fields, stats


class _Arena:
    """Tokens (and loss masks) and statistics of the pieces pushed since the last
    checkpoint point, by id.

    Emitted pieces leave holes; :meth:`compact` keeps only the held ones once the holes
    outweigh them, so memory follows what the packer holds, not the interval's length.
    The mask (int32 0/1 aligned with the tokens) exists from the first masked piece on;
    before that every cell is trained on.
    """

    _COLUMNS = (("starts", np.int64), ("lengths", np.int64), ("starts_document", bool),
                ("starts_split", bool), ("truncated", np.int64))

    COMPACT_TOKENS = 1 << 20  # holes below this many tokens are not worth a copy

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.tokens = np.zeros(1 << 12, np.int32)
        self.mask: np.ndarray | None = None  # like tokens, once a piece had a mask
        self.size = 0  # tokens used
        self.base = 0  # id of column entry 0
        self.count = 0  # ids stored: base .. base + count - 1
        self.columns = {name: np.zeros(1 << 8, dtype) for name, dtype in self._COLUMNS}
        self.live_tokens = 0

    def add(self, pieces: Pieces, start: int, stop: int) -> None:
        """Stores ``pieces[start:stop]`` under the next ids."""
        cells = slice(pieces.offsets[start], pieces.offsets[stop])
        tokens = pieces.tokens[cells]
        if pieces.loss_mask is not None and self.mask is None:
            self.mask = np.ones(self.tokens.shape[0], np.int32)
        if self.size + tokens.shape[0] > self.tokens.shape[0]:
            size = max(2 * self.tokens.shape[0], self.size + tokens.shape[0])
            self.tokens = _grown(self.tokens, self.size, size)
            self.mask = None if self.mask is None else _grown(self.mask, self.size, size)
        new_cells = slice(self.size, self.size + tokens.shape[0])
        self.tokens[new_cells] = tokens
        if self.mask is not None:
            self.mask[new_cells] = 1 if pieces.loss_mask is None else pieces.loss_mask[cells]
        count = stop - start
        if self.count + count > self.columns["starts"].shape[0]:
            self._grow_columns(self.count + count)
        new = slice(self.count, self.count + count)
        self.columns["starts"][new] = pieces.offsets[start:stop] - pieces.offsets[start] + self.size
        self.columns["lengths"][new] = pieces.lengths[start:stop, 0]
        self.columns["starts_document"][new] = pieces.starts_document[start:stop]
        self.columns["starts_split"][new] = pieces.starts_split_document[start:stop]
        self.columns["truncated"][new] = pieces.truncated[start:stop]
        self.size += tokens.shape[0]
        self.count += count
        self.live_tokens += tokens.shape[0]

    def add_document(self, document: np.ndarray, mask: np.ndarray | None, eod_token_id: int, eod_loss: int) -> None:
        """Stores one document that fits a row whole, with its EOD, as the next id: the
        streaming common case, without building :class:`Pieces`."""
        cells = document.shape[0] + 1
        if (mask is not None or not eod_loss) and self.mask is None:
            self.mask = np.ones(self.tokens.shape[0], np.int32)
        if self.size + cells > self.tokens.shape[0]:
            size = max(2 * self.tokens.shape[0], self.size + cells)
            self.tokens = _grown(self.tokens, self.size, size)
            self.mask = None if self.mask is None else _grown(self.mask, self.size, size)
        end = self.size + document.shape[0]
        self.tokens[self.size:end] = document
        self.tokens[end] = eod_token_id
        if self.mask is not None:
            self.mask[self.size:end] = 1 if mask is None else mask
            self.mask[end] = eod_loss
        if self.count == self.columns["starts"].shape[0]:
            self._grow_columns(self.count + 1)
        self.columns["starts"][self.count] = self.size
        self.columns["lengths"][self.count] = cells
        self.columns["starts_document"][self.count] = True
        self.columns["starts_split"][self.count] = False
        self.columns["truncated"][self.count] = 0
        self.size += cells
        self.count += 1
        self.live_tokens += cells

    def _grow_columns(self, count: int) -> None:
        size = max(2 * self.columns["starts"].shape[0], count)
        for name, column in self.columns.items():
            grown = np.zeros(size, column.dtype)
            grown[:self.count] = column[:self.count]
            self.columns[name] = grown

    def take(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """(tokens back to back, their mask or None, per-piece columns) of emitted pieces,
        which it forgets."""
        index = ids - self.base
        columns = {name: column[index] for name, column in self.columns.items()}
        self.live_tokens -= int(columns["lengths"].sum())
        tokens = gather_pieces(self.tokens, columns["starts"], columns["lengths"])
        mask = None if self.mask is None else gather_pieces(self.mask, columns["starts"], columns["lengths"])
        return tokens, mask, columns

    def wants_compaction(self) -> bool:
        """Whether the emitted pieces' holes outweigh the held pieces (and are big)."""
        return self.size >= max(self.COMPACT_TOKENS, 2 * self.live_tokens)

    def compact(self, held_ids: np.ndarray) -> None:
        """Keeps the held pieces' tokens only: ``held_ids`` ascending, all of them."""
        low = int(held_ids[0]) if held_ids.size else self.base + self.count
        index = held_ids - self.base
        lengths = self.columns["lengths"][index]
        tokens = gather_pieces(self.tokens, self.columns["starts"][index], lengths)
        mask = None if self.mask is None else gather_pieces(self.mask, self.columns["starts"][index], lengths)
        self.columns["starts"][index] = np.cumsum(lengths) - lengths
        keep = slice(low - self.base, self.count)
        self.columns = {name: column[keep].copy() for name, column in self.columns.items()}
        self.count -= low - self.base
        self.base = low
        self.tokens = _grown(tokens, tokens.shape[0], max(1 << 12, 2 * tokens.shape[0]))
        self.mask = None if mask is None else _grown(mask, mask.shape[0], self.tokens.shape[0])
        self.size = tokens.shape[0]


def _grown(array: np.ndarray, used: int, size: int) -> np.ndarray:
    """A new int32 array of ``size`` starting with ``array[:used]``."""
    grown = np.zeros(size, np.int32)
    grown[:used] = array[:used]
    return grown


def element_pieces(element: Any, *, seq_len: int, eod_token_id: int, long_documents: str,
                   eod_loss: int = 1) -> Pieces:
    """A parent element as EOD-terminated pieces with their loss mask: one document (a
    token array or list, ``{"tokens", "loss_mask"}`` or ``{"tokens", "prompt_length"}``,
    or an already checked ``(tokens, mask or None)`` pair) or a ragged chunk (``"tokens"``, ``"lengths"``, optionally ``"loss_mask"`` or
    ``"prompt_lengths"``); every EOD's mask is ``eod_loss``."""
    if isinstance(element, Mapping) and "lengths" in element:
        if "tokens" not in element:
            raise ValueError(
                f"parent element: a ragged chunk needs the keys 'tokens' and 'lengths', got keys {sorted(element)}"
            )
        tokens = as_tokens("tokens", element["tokens"])
        lengths = as_lengths(element["lengths"], tokens.shape[0])
        mask = cell_loss_mask(lengths, element.get("loss_mask"), element.get("prompt_lengths"), eod_loss=eod_loss)
        source, document_ids = chunk_source(element, lengths.shape[0])
    else:
        tokens, document_mask = element if isinstance(element, tuple) else document_with_mask(element)
        lengths = np.array([tokens.shape[0]], dtype=np.int64)
        mask = cell_loss_mask(lengths, document_mask, eod_loss=eod_loss)
        source, document_ids = "the parent element (a single document)", None
    return document_pieces(tokens, lengths, seq_len=seq_len, eod_token_id=eod_token_id,
                           long_documents=long_documents, source=source, cell_mask=mask,
                           document_ids=document_ids)
