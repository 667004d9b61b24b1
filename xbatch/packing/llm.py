"""The LLM packer: a grain dataset from documents to rows in the seed's ``LLMBatch`` layout."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from .. import kernels
from .._checks import describe, positive_int
from . import checkpoint
from .attention import metadata_segments
from .attention_rows import AttentionRowsIterator
from .buffers import BufferPool
from .concat_stream import ConcatRowsIterator
from .rolling_stream import RollingRowsIterator
from .pieces import (
    CONCAT,
    LONG_DOCUMENTS,
    ROLLING,
    SHIFTS,
    STREAM_ALGORITHMS,
    Pieces,
    as_lengths,
    as_loss_mask,
    as_tokens,
    check_choice,
    check_token_id,
    chunk_source,
    document_pieces,
    document_with_mask,
    cell_loss_mask,
    lay_out_rows,
    place_until_full,
)
from .stats import PackingStats


_INT32_MAX = 2**31 - 1
# Version of the iterator's state format (see checkpoint.py); bump it when it changes.
_STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class _Options:
    seq_len: int
    num_packing_bins: int
    eod_token_id: int
    pad_token_id: int
    algorithm: str
    long_documents: str
    shift: str
    shuffle_bins: bool
    seed: int
    train_on_eod: bool = True
    max_documents_per_row: int | None = None


class LLMPackIterDataset(grain.IterDataset):
    """Packs documents into rows of ``seq_len`` tokens: the seed's ``LLMBatch`` layout.

    Every document gets ``eod_token_id`` appended; documents are placed in order into
    ``num_packing_bins`` bins with grain's window rule (first bin with room, or the fullest
    bin with room for ``algorithm="best_fit"``; when a document fits no bin, all non-empty
    bins are emitted in bin order and a new window starts with it). The rows are exactly
    grain's ``FirstFitPackIterDataset``/``BestFitPackIterDataset`` (``length_struct=
    {"targets": seq_len}``) run on the EOD-terminated pieces, then shifted. Example, docs
    ``[1,2,3] [4,5] [6,7]``, ``seq_len=8``, ``E`` the EOD, padding 0::

        targets              [1, 2, 3, E, 4, 5, E, 0]
        inputs               [E, 1, 2, 3, E, 4, 5, E]
        targets_segmentation [1, 1, 1, 1, 2, 2, 2, 0]   (inputs_segmentation the same)
        targets_position     [0, 1, 2, 3, 0, 1, 2, 0]   (inputs_position the same)

    and ``[6, 7, E]`` opens the next row.

    Parent elements are either one document (a 1-d integer array or list; token id 0 is
    a token like any other) or a ragged chunk ``{"tokens": int[total], "lengths":
    int[documents]}`` of many documents back to back (other keys are ignored). A chunk
    yields exactly the rows its documents yield one by one, without a Python object per
    document.

    Loss masks (fine-tuning, chat, prefix-LM): a document may be a dict ``{"tokens": ...,
    "loss_mask": 0/1 per token}`` or ``{"tokens": ..., "prompt_length": n}`` (its first
    ``n`` tokens are not trained on); a chunk may carry ``"loss_mask"`` (flat, aligned with
    ``"tokens"``) or ``"prompt_lengths"`` (one per document). Documents without one are
    trained on everywhere; the EOD is trained on unless ``train_on_eod=False``. A target
    not trained on has ``targets_segmentation == 0``; inputs, ``inputs_segmentation`` and
    positions are what they are without masks. The mask travels with its tokens through
    splitting, truncating and ``shift="targets"``.

    Each element is a dict of int32 [seq_len] arrays: ``inputs``, ``targets``,
    ``inputs_position``, ``inputs_segmentation``, ``targets_position``,
    ``targets_segmentation``. The iterator's ``stats`` (:class:`PackingStats`) count what
    the emitted rows hold; they are part of the checkpoint state. Rows are views into six
    int32 ``rows x seq_len`` arrays per window; a window's arrays are reused once none of
    its rows is held any more. The open window keeps references to its elements.

    Args:
      parent: the documents.
      seq_len: tokens per row (>= 1).
      num_packing_bins: bins per window (>= 1); more bins pack tighter but hold documents
        back longer.
      eod_token_id: appended to every document.
      pad_token_id: fills cells no document covers.
      algorithm: ``"first_fit"`` or ``"best_fit"`` (grain's windows, above);
        ``"concat_then_split"`` (the documents back to back, cut every ``seq_len`` cells:
        grain's ``ConcatThenSplitIterDataset``; ``num_packing_bins`` rows are laid out at
        once; it takes loss masks and the cap, see :mod:`xbatch.packing.concat_rows`);
        ``"rolling_best_fit"`` (the bins stay open and rows leave as their bins close,
        not with ``shuffle_bins``; see :mod:`xbatch.packing.rolling`; it takes loss masks
        and the cap).
      long_documents: a document whose tokens plus EOD exceed ``seq_len`` is ``"split"``
        into ``seq_len``-token pieces (each its own segment), ``"truncate"``d to its first
        ``seq_len`` tokens (the EOD is dropped with the rest), or raises (``"error"``).
      shift: ``"inputs"`` (the layout above) or ``"targets"`` (inputs are the packed tokens,
        every targets field is shifted left by one, its last column pad/segmentation 0/
        position 0; see :func:`xbatch.packing.pieces.llm_fields`).
      shuffle_bins: emit each window's rows in a random order (grain's rule: permutation
        seeded with ``seed`` + rows emitted before the window).
      seed: the shuffle seed.
      train_on_eod: whether the EOD target of each document is trained on.
      max_documents_per_row: at most this many pieces (segments) per row, or None (no
        cap): grain's ``max_sequences_per_bin`` rule, for attention kernels with a static
        segment count. A row that reached the cap takes no more pieces (with
        ``"concat_then_split"`` it is padded and the next piece starts the next row).
      attention_metadata: also put on every row ``seq_lengths`` int32[M] and
        ``seq_offsets`` int32[M + 1] (M = ``max_documents_per_row``, which it needs):
        :func:`~xbatch.packing.attention_metadata` of the row's ``inputs_segmentation``,
        computed once per window. Batching stacks them to [B, M] and [B, M + 1];
        :func:`~xbatch.packing.add_varlen_metadata` after ``.batch`` adds the batch's
        ``cu_seqlens`` and ``max_seqlen``. The rows and the checkpoint state are the same
        as without it (it is not one of the state's recorded arguments).
    """

    def __init__(
        self,
        parent: grain.IterDataset,
        *,
        seq_len: int,
        num_packing_bins: int,
        eod_token_id: int,
        pad_token_id: int = 0,
        algorithm: str = "first_fit",
        long_documents: str = "split",
        shift: str = "inputs",
        shuffle_bins: bool = False,
        seed: int = 0,
        train_on_eod: bool = True,
        max_documents_per_row: int | None = None,
        attention_metadata: bool = False,
    ):
        if not isinstance(parent, (grain.IterDataset, grain.MapDataset)):
            raise TypeError(
                f"parent: expected a grain dataset (IterDataset or MapDataset), got {describe(parent)}; "
                "wrap documents with grain.MapDataset.source(documents).to_iter_dataset()"
            )
        super().__init__(parent)
        self._metadata_segments = metadata_segments(attention_metadata, max_documents_per_row)
        self._options = _Options(
            seq_len=positive_int("seq_len", seq_len, maximum=_INT32_MAX),  # int32 positions
            num_packing_bins=positive_int("num_packing_bins", num_packing_bins),
            eod_token_id=check_token_id("eod_token_id", eod_token_id),
            pad_token_id=check_token_id("pad_token_id", pad_token_id),
            algorithm=check_choice("algorithm", algorithm, STREAM_ALGORITHMS),
            long_documents=check_choice("long_documents", long_documents, LONG_DOCUMENTS),
            shift=check_choice("shift", shift, SHIFTS),
            shuffle_bins=bool(shuffle_bins),
            seed=positive_int("seed", seed, minimum=0),  # NumPy's generators take seeds >= 0
            train_on_eod=bool(train_on_eod),
            max_documents_per_row=(
                None if max_documents_per_row is None
                else positive_int("max_documents_per_row", max_documents_per_row)
            ),
        )
        if algorithm == ROLLING and shuffle_bins:
            raise ValueError("shuffle_bins: rolling_best_fit emits rows as bins close; shuffle downstream instead")

    def __iter__(self) -> grain.DatasetIterator:
        rows = self._rows_iterator()
        if self._metadata_segments is None:
            return rows
        return AttentionRowsIterator(rows, self._metadata_segments)

    def _rows_iterator(self) -> grain.DatasetIterator:
        if self._options.algorithm == CONCAT:
            return ConcatRowsIterator(self._parent.__iter__(), self._options)
        if self._options.algorithm == ROLLING:
            return RollingRowsIterator(self._parent.__iter__(), self._options)
        return _LLMPackDatasetIterator(self._parent.__iter__(), self._options)

    def __str__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in dataclasses.asdict(self._options).items())
        if self._metadata_segments is not None:
            options += ", attention_metadata=True"
        return f"LLMPackIterDataset({options})"


class _Window:
    """The pieces placed into the open window, in placement order.

    Single short documents are the common streaming case: they are kept as plain Python
    numbers until the window closes, and turned into arrays in one go. Loss masks are
    kept next to the tokens (``masks``, one array per array of ``tokens``) from the first
    masked element on; before that (and in windows without masks) every cell is trained
    on, which ``eod_loss=0`` rules out from the start.
    """

    def __init__(self, eod_token_id: int, eod_loss: int):
        self._eod = np.array([eod_token_id], dtype=np.int32)
        self._eod_mask = np.array([eod_loss], dtype=np.int32)
        self.tokens: list[np.ndarray] = []
        self.masks: list[np.ndarray] | None = None if eod_loss else []
        self._parts: list[tuple[np.ndarray, ...]] = []  # (lengths, bins, starts_document, starts_split, truncated)
        self._single_lengths: list[int] = []
        self._single_bins: list[int] = []

    def _start_masks(self) -> None:
        if self.masks is None:  # so far every cell, EODs included, was trained on
            self.masks = [np.ones(tokens.shape[0], np.int32) for tokens in self.tokens]

    def add_document(self, document: np.ndarray, mask: np.ndarray | None, bin_index: int) -> None:
        """Adds one document (and its int32 loss mask, or None) that fits a row whole,
        placed into ``bin_index``."""
        if mask is not None:
            self._start_masks()
        self.tokens.append(document)
        self.tokens.append(self._eod)
        if self.masks is not None:
            self.masks.append(np.ones(document.shape[0], np.int32) if mask is None else mask)
            self.masks.append(self._eod_mask)
        self._single_lengths.append(document.shape[0] + 1)
        self._single_bins.append(bin_index)

    def add_pieces(self, pieces: Pieces, start: int, stop: int, bins: np.ndarray) -> None:
        """Adds ``pieces[start:stop]``, placed into ``bins[start:stop]``."""
        self._flush_documents()
        cells = slice(pieces.offsets[start], pieces.offsets[stop])
        if pieces.loss_mask is not None:
            self._start_masks()
        self.tokens.append(pieces.tokens[cells])
        if self.masks is not None:
            self.masks.append(
                np.ones(cells.stop - cells.start, np.int32) if pieces.loss_mask is None else pieces.loss_mask[cells]
            )
        self._parts.append((
            pieces.lengths[start:stop, 0], bins[start:stop], pieces.starts_document[start:stop],
            pieces.starts_split_document[start:stop], pieces.truncated[start:stop],
        ))

    def _flush_documents(self) -> None:
        if self._single_lengths:
            count = len(self._single_lengths)
            self._parts.append((
                np.array(self._single_lengths, dtype=np.int64), np.array(self._single_bins, dtype=np.int64),
                np.ones(count, bool), np.zeros(count, bool), np.zeros(count, np.int64),
            ))
            self._single_lengths, self._single_bins = [], []

    def columns(self) -> tuple[np.ndarray, ...]:
        """(tokens, lengths, bins, starts_document, starts_split, truncated) of all pieces."""
        self._flush_documents()
        return (np.concatenate(self.tokens), *(np.concatenate(column) for column in zip(*self._parts)))

    def loss_mask(self) -> np.ndarray | None:
        """int32 0/1 aligned with the tokens of :meth:`columns`, or None (all 1)."""
        return None if self.masks is None else np.concatenate(self.masks)


class _LLMPackDatasetIterator(grain.DatasetIterator):
    """Packs one window at a time and emits its rows.

    State: ``parent`` (the parent's state before the element holding the window's first
    piece), ``piece`` (that piece's index in the element), ``element`` (whether that
    element is a ``"document"`` or a ``"chunk"``; ``""`` until read), ``next_row`` and ``counter``
    (rows emitted from the window and in total), ``stats``, and the packer's arguments
    with a format version (:mod:`xbatch.packing.checkpoint`). Restoring checks the
    arguments (a ValueError names any that differ), replays the window and skips the
    rows already emitted; a parent that now gives the other kind of element there
    raises a ValueError at the first ``next``.

    A closed window is laid out into six arrays from a :class:`BufferPool`; its rows are
    views of them. The pool recycles a window's arrays only once no row of it is held
    any more, so rows a consumer keeps never change.
    """

    def __init__(self, parent: grain.DatasetIterator, options: _Options):
        super().__init__(parent)
        self._options = options
        self._packer = kernels.BinPacker(options.seq_len, num_bins=options.num_packing_bins,
                                         max_items_per_bin=options.max_documents_per_row,
                                         algorithm=options.algorithm)
        self._next_row = 0
        self._counter = 0
        self._totals = PackingStats()
        self._pool = BufferPool()
        self._start_window(self._parent.get_state(), 0)

    @property
    def stats(self) -> PackingStats:
        """What the rows emitted so far hold (a copy)."""
        return dataclasses.replace(self._totals)

    def _start_window(self, parent_state: Any, piece: int) -> None:
        """Forgets everything packed; the next window starts at ``piece`` of the next element."""
        self._packer.reset()
        self._window = _Window(self._options.eod_token_id, int(self._options.train_on_eod))
        self._window_start = {"parent": parent_state, "piece": piece}
        self._element: Pieces | None = None
        self._element_kind: str | None = None
        self._first_read = True  # the next element read is the window's first
        self._element_state = parent_state
        self._element_bins = np.empty(0, dtype=np.int64)
        self._cursor = piece  # next piece of self._element to place
        self._num_rows = 0  # rows of the closed window being emitted; 0 while packing

    def get_state(self) -> dict[str, Any]:
        state = {
            "element": "",  # not read yet (a string still: grain wants a fixed state spec)
            **self._window_start,
            "next_row": self._next_row,
            "counter": self._counter,
            "stats": dataclasses.asdict(self._totals),
        }
        return checkpoint.record_arguments(state, dataclasses.asdict(self._options),
                                           packer="LLMPackIterDataset", version=_STATE_VERSION)

    def set_state(self, state: dict[str, Any]) -> None:
        checkpoint.check_arguments(state, dataclasses.asdict(self._options),
                                   packer="LLMPackIterDataset", version=_STATE_VERSION)
        self._parent.set_state(state["parent"])
        self._next_row = state["next_row"]
        self._counter = state["counter"]
        self._totals = PackingStats(**state["stats"])
        self._start_window(state["parent"], state["piece"])
        if state.get("element"):
            self._window_start["element"] = state["element"]

    def __next__(self) -> dict[str, np.ndarray]:
        if not self._num_rows:
            self._pack_window()
        row = self._order[self._next_row]
        element = {name: field[row] for name, field in self._fields.items()}
        row_stats = self._row_stats[row]
        self._totals.add_row(row_stats, self._options.seq_len, loss_tokens=row_stats[5])
        self._next_row += 1
        self._counter += 1
        if self._next_row == self._num_rows:
            self._pool.release(list(self._fields.values()))
            self._fields = {}
            self._next_row = 0
            self._num_rows = 0
            self._window_start = self._next_window_start
        return element

    def _pack_window(self) -> None:
        """Places pieces until the window is full or the parent ends; lays out its rows."""
        # A restored window resumes at piece self._cursor of the first element it reads.
        skip = self._cursor if self._element is None and self._cursor else None
        while True:
            if self._element is not None and self._cursor < len(self._element):
                stop, full = place_until_full(self._packer, self._element.lengths, self._element_bins, self._cursor)
                self._window.add_pieces(self._element, self._cursor, stop, self._element_bins)
                self._cursor = stop
                if full:
                    return self._close_window(self._element_state, stop)
                continue
            state = self._parent.get_state()
            try:
                element = next(self._parent)
            except StopIteration:
                if self._packer.num_used_bins == 0:
                    raise
                return self._close_window(state, 0)
            self._element_state = state
            is_chunk = isinstance(element, Mapping) and "lengths" in element
            if self._first_read:
                self._check_first_element("chunk" if is_chunk else "document")
            self._element_kind = "chunk" if is_chunk else "document"
            if skip is None and not is_chunk:
                document, mask = document_with_mask(element)
                if document.shape[0] < self._options.seq_len:  # fits a row whole, with its EOD
                    bin_index = self._packer.place_one(document.shape[0] + 1)
                    if bin_index >= 0:
                        self._window.add_document(document, mask, bin_index)
                        self._element, self._cursor = None, 0
                        continue
                element = (document, mask)
            self._element = self._pieces_of(element)
            self._element_bins = np.empty(len(self._element), dtype=np.int64)
            self._cursor, skip = skip or 0, None

    def _check_first_element(self, kind: str) -> None:
        """Records the kind of the window's first element; after a restore, checks it."""
        self._first_read = False
        expected = self._window_start.get("element")
        if expected and expected != kind:
            raise ValueError(
                f"state: the restored window starts in a {expected} of the parent, but the parent "
                f"now gives a {kind} there: the state was saved with a different parent"
            )
        self._window_start["element"] = kind

    def _pieces_of(self, element: Any) -> Pieces:
        """The pieces of a ragged chunk, a document, or a ``(document, mask)`` pair."""
        options = self._options
        if isinstance(element, Mapping) and "lengths" in element:
            if "tokens" not in element:
                raise ValueError(
                    f"parent element: a ragged chunk needs the keys 'tokens' and 'lengths', got keys {sorted(element)}"
                )
            tokens = as_tokens("tokens", element["tokens"])
            lengths = as_lengths(element["lengths"], tokens.shape[0])
            mask = cell_loss_mask(lengths, element.get("loss_mask"), element.get("prompt_lengths"),
                                  eod_loss=int(options.train_on_eod))
            source, document_ids = chunk_source(element, lengths.shape[0])
        else:
            document_ids = None
            tokens, document_mask = element if isinstance(element, tuple) else document_with_mask(element)
            lengths = np.array([tokens.shape[0]], dtype=np.int64)
            mask = cell_loss_mask(lengths, document_mask, eod_loss=int(options.train_on_eod))
            source = "the parent element (a single document)"
        return document_pieces(tokens, lengths, seq_len=options.seq_len, eod_token_id=options.eod_token_id,
                               long_documents=options.long_documents, source=source, cell_mask=mask,
                               document_ids=document_ids)

    def _close_window(self, next_parent_state: Any, next_piece: int) -> None:
        """Packs the window's rows; the next window starts at ``next_piece`` of the element
        read from ``next_parent_state``."""
        options = self._options
        tokens, lengths, bins, starts_document, starts_split, truncated = self._window.columns()
        loss_mask = self._window.loss_mask()
        num_rows = self._packer.num_used_bins
        loss_tokens = np.empty(num_rows, np.int64)
        self._fields = lay_out_rows(
            tokens, lengths, bins, num_rows=num_rows, seq_len=options.seq_len,
            eod_token_id=options.eod_token_id, pad_token_id=options.pad_token_id,
            shift=options.shift, loss_mask=loss_mask, empty=self._pool.empty, out_loss_tokens=loss_tokens,
        )
        # Per row: tokens, pieces, documents, split documents, truncated tokens, loss tokens.
        columns = (lengths, None, starts_document, starts_split, truncated)
        self._row_stats = np.stack(
            [np.bincount(bins, weights=weights, minlength=num_rows) for weights in columns] + [loss_tokens], axis=1
        ).astype(np.int64).tolist()
        if options.shuffle_bins:
            seed = options.seed + self._counter - self._next_row
            self._order = np.random.default_rng(seed).permuted(range(num_rows)).tolist()
        else:
            self._order = range(num_rows)
        self._num_rows = num_rows
        # The next window starts in the element being placed, unless the parent ended.
        kind = self._element_kind if self._element is not None else ""
        self._next_window_start = {"parent": next_parent_state, "piece": next_piece, "element": kind}
        self._packer.reset()
        self._window = _Window(options.eod_token_id, int(options.train_on_eod))
