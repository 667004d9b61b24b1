"""The LLM packer's ``algorithm="concat_then_split"``: a grain iterator over concat rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from . import checkpoint
from .buffers import BufferPool
from .concat_rows import Cells, cut_rows, document_cells, lay_out
from .pieces import as_lengths, as_tokens, cell_loss_mask, chunk_source, document_with_mask
from .stats import PackingStats


# Version of the state format (see checkpoint.py); bump it when it changes.
_STATE_VERSION = 1


class ConcatRowsIterator(grain.DatasetIterator):
    """Concat-then-split rows of the LLM packer, ``options.num_packing_bins`` rows at a time.

    A window is the next ``num_packing_bins * seq_len`` cells of the stream (or what is
    left at its end); its rows are laid out at once. With ``max_documents_per_row`` rows
    may close early, so a window's last row, unless the stream ended, is held back and
    starts the next window (more cells may join it). State: ``parent`` (the parent's state
    before the element holding the window's first cell), ``cell`` (that cell's index in
    the element's EOD-terminated cells), ``next_row``, ``counter`` and ``stats``, as the
    other modes'. The rows do not depend on the window size.
    """

    def __init__(self, parent: grain.DatasetIterator, options: Any):
        super().__init__(parent)
        self._options = options
        self._pool = BufferPool()
        self._next_row = 0
        self._counter = 0
        self._totals = PackingStats()
        self._start_window({"parent": self._parent.get_state(), "cell": 0})

    @property
    def stats(self) -> PackingStats:
        """What the rows emitted so far hold (a copy)."""
        return dataclasses.replace(self._totals)

    def _start_window(self, start: dict[str, Any]) -> None:
        self._window_start = start
        # Elements read but not laid out yet, in order: (parent state before the element,
        # its cells, first cell not laid out); each runs to its element's end.
        self._pending: list[tuple[Any, Cells, int]] = []
        if start["cell"]:
            self._pending.append((start["parent"], self._cells_of(next(self._parent)), start["cell"]))
        self._num_rows = 0

    def get_state(self) -> dict[str, Any]:
        state = {**self._window_start, "next_row": self._next_row, "counter": self._counter,
                 "stats": dataclasses.asdict(self._totals)}
        return checkpoint.record_arguments(state, dataclasses.asdict(self._options),
                                           packer="LLMPackIterDataset", version=_STATE_VERSION)

    def set_state(self, state: dict[str, Any]) -> None:
        # A state of another mode or other arguments would replay the wrong cells.
        checkpoint.check_arguments(state, dataclasses.asdict(self._options),
                                   packer="LLMPackIterDataset", version=_STATE_VERSION)
        self._parent.set_state(state["parent"])
        self._next_row = state["next_row"]
        self._counter = state["counter"]
        self._totals = PackingStats(**state["stats"])
        self._start_window({"parent": state["parent"], "cell": state["cell"]})

    def __next__(self) -> dict[str, np.ndarray]:
        if not self._num_rows:
            self._pack_window()
        row = self._order[self._next_row]
        element = {name: field[row] for name, field in self._fields.items()}
        self._totals.add_row(self._row_stats[row], self._options.seq_len, loss_tokens=self._loss_tokens[row])
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
        options = self._options
        target = options.num_packing_bins * options.seq_len
        parts, states, total, final = [], [], 0, False
        pending, self._pending = self._pending, []
        while total < target:
            if not pending:
                state = self._parent.get_state()
                try:
                    element = next(self._parent)
                except StopIteration:
                    final = True
                    break
                pending.append((state, self._cells_of(element), 0))
            state, cells, begin = pending.pop(0)
            end = min(len(cells), begin + target - total)
            if end > begin:
                parts.append((cells, begin, end))
                states.append(state)
                total += end - begin
            if end < len(cells):
                pending.insert(0, (state, cells, end))
        if not total:
            raise StopIteration
        pieces = cut_rows(parts, options.seq_len, max_pieces=options.max_documents_per_row, final=final)
        # Cells not laid out (a last row the cap held back) start the next window.
        held, offset = [], 0
        for state, (cells, begin, end) in zip(states, parts):
            if offset + (end - begin) > pieces.cells:
                held.append((state, cells, begin + max(0, pieces.cells - offset)))
            offset += end - begin
        if held and pending and pending[0][1] is held[-1][1]:
            pending.pop(0)  # the same element: held[-1] runs to its end
        self._pending = held + pending
        if self._pending:
            self._next_window_start = {"parent": self._pending[0][0], "cell": self._pending[0][2]}
        else:
            self._next_window_start = {"parent": self._parent.get_state(), "cell": 0}
        loss_tokens = np.empty(pieces.num_rows, np.int64)
        self._fields = lay_out(pieces, seq_len=options.seq_len, eod_token_id=options.eod_token_id,
                               pad_token_id=options.pad_token_id, shift=options.shift, empty=self._pool.empty,
                               out_loss_tokens=loss_tokens)
        self._loss_tokens = loss_tokens.tolist()
        self._row_stats = pieces.row_stats.tolist()
        if options.shuffle_bins:
            seed = options.seed + self._counter - self._next_row
            self._order = np.random.default_rng(seed).permuted(range(pieces.num_rows)).tolist()
        else:
            self._order = range(pieces.num_rows)
        self._num_rows = pieces.num_rows

    def _cells_of(self, element: Any) -> Cells:
        options = self._options
        eod_loss = int(options.train_on_eod)
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
            tokens, document_mask = document_with_mask(element)
            lengths = np.array([tokens.shape[0]], dtype=np.int64)
            mask = cell_loss_mask(lengths, document_mask, eod_loss=eod_loss)
            source, document_ids = "the parent element (a single document)", None
        return document_cells(tokens, lengths, seq_len=options.seq_len, eod_token_id=options.eod_token_id,
                              long_documents=options.long_documents, source=source, document_ids=document_ids,
                              cell_mask=mask)
