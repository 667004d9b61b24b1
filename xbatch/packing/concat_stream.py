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
from .pieces import as_lengths, as_tokens, chunk_source, refuse_loss_masks
from .stats import PackingStats


# Version of the state format (see checkpoint.py); bump it when it changes.
_STATE_VERSION = 1


class ConcatRowsIterator(grain.DatasetIterator):
    """Concat-then-split rows of the LLM packer, ``options.num_packing_bins`` rows at a time.

    A window is the next ``num_packing_bins * seq_len`` cells of the stream (or what is
    left at its end); its rows are laid out at once. State: ``parent`` (the parent's state
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
        self._carry: tuple[Any, Cells, int] | None = None  # (parent state, element cells, next cell)
        if start["cell"]:
            self._carry = (start["parent"], self._cells_of(next(self._parent)), start["cell"])
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
        row_stats = self._row_stats[row]  # no loss masks here: every target but a shifted row's last
        self._totals.add_row(row_stats, self._options.seq_len,
                             loss_tokens=row_stats[0] - (self._options.shift == "targets"))
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
        parts, total = [], 0
        while total < target:
            if self._carry is None:
                state = self._parent.get_state()
                try:
                    element = next(self._parent)
                except StopIteration:
                    break
                self._carry = (state, self._cells_of(element), 0)
            state, cells, begin = self._carry
            end = min(len(cells), begin + target - total)
            if end > begin:
                parts.append((cells, begin, end))
                total += end - begin
            self._carry = (state, cells, end) if end < len(cells) else None
        if not total:
            raise StopIteration
        if self._carry is None:
            self._next_window_start = {"parent": self._parent.get_state(), "cell": 0}
        else:
            self._next_window_start = {"parent": self._carry[0], "cell": self._carry[2]}
        pieces = cut_rows(parts, options.seq_len)
        self._fields = lay_out(pieces, seq_len=options.seq_len, eod_token_id=options.eod_token_id,
                               pad_token_id=options.pad_token_id, shift=options.shift, empty=self._pool.empty)
        self._row_stats = pieces.row_stats.tolist()
        if options.shuffle_bins:
            seed = options.seed + self._counter - self._next_row
            self._order = np.random.default_rng(seed).permuted(range(pieces.num_rows)).tolist()
        else:
            self._order = range(pieces.num_rows)
        self._num_rows = pieces.num_rows

    def _cells_of(self, element: Any) -> Cells:
        options = self._options
        if isinstance(element, Mapping):
            refuse_loss_masks(element, options.algorithm)
            if "tokens" not in element or "lengths" not in element:
                raise ValueError(
                    f"parent element: a ragged chunk needs the keys 'tokens' and 'lengths', got keys {sorted(element)}"
                )
            if "loss_mask" in element or "prompt_lengths" in element:  # never drop a mask silently
                raise ValueError(
                    "parent element: algorithm='concat_then_split' does not take loss masks yet; use 'first_fit' or "
                    "'best_fit' for chunks with 'loss_mask' or 'prompt_lengths'"
                )
            tokens = as_tokens("tokens", element["tokens"])
            lengths = as_lengths(element["lengths"], tokens.shape[0])
            source, document_ids = chunk_source(element, lengths.shape[0])
        else:
            tokens = as_tokens("document", element)
            lengths = np.array([tokens.shape[0]], dtype=np.int64)
            source, document_ids = "the parent element (a single document)", None
        return document_cells(tokens, lengths, seq_len=options.seq_len, eod_token_id=options.eod_token_id,
                              long_documents=options.long_documents, source=source, document_ids=document_ids)
