"""The LLM packer's ``algorithm="rolling_best_fit"``: a grain iterator (see :mod:`.rolling`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from . import checkpoint
from .buffers import BufferPool
from .pieces import Pieces, document_with_mask, lay_out_rows
from .rolling import RollingOptions, _Arena, element_pieces
from .stats import PackingStats


# The state is the LLM packer's (see checkpoint.py); its arguments name the algorithm and
# the placement rule's revision: the flat kernel (revision 2) breaks ties between equally
# full bins unlike the ordered-set one (a state without it), so an older state would replay
# other rows and is refused, naming "placement".
_PACKER = "LLMPackIterDataset"
_STATE_VERSION = 1
_PLACEMENT = 2

class RollingRowsIterator(grain.DatasetIterator):
    """Rows of rolling best fit, in the order their bins close.

    State: ``parent`` (the parent's state before the element holding the first piece
    after the last checkpoint point), ``piece`` (that piece's index in the element),
    ``next_row`` (rows emitted since that point), ``counter`` and ``stats``. Restoring
    replays the pieces from that point, at most ``checkpoint_every`` of them, and drops
    the rows already emitted.
    """

    def __init__(self, parent: grain.DatasetIterator, options: Any, rolling: RollingOptions | None = None):
        super().__init__(parent)
        self._options = options
        self._rolling = rolling or RollingOptions.for_bins(options.num_packing_bins)
        self._packer = self._rolling.packer(options.seq_len, options.num_packing_bins, options.max_documents_per_row)
        self._pool = BufferPool()
        self._arena = _Arena()
        self._counter = 0
        self._totals = PackingStats()
        self._start({"parent": self._parent.get_state(), "piece": 0}, next_row=0)

    @property
    def stats(self) -> PackingStats:
        """What the rows emitted so far hold (a copy)."""
        return dataclasses.replace(self._totals)

    def _start(self, start: dict[str, Any], next_row: int) -> None:
        """Starts over at a checkpoint point: nothing held; ``next_row`` rows to drop."""
        self._window_start = start
        self._next_row = next_row
        self._skip = next_row
        self._packer.drain()
        self._packer.take_rows()
        self._arena.clear()
        self._element: Pieces | None = None
        self._element_state = start["parent"]
        self._cursor = start["piece"]  # next piece of self._element to push
        self._restore_cursor = start["piece"]
        self._ended = False
        self._rows: list[int] = []  # rows of self._fields not yet emitted, in order
        self._fields: dict[str, np.ndarray] = {}
        self._drained_start: dict[str, Any] | None = None  # window start once the batch is out
        self._pending_ids: list[np.ndarray] = []  # emitted rows not laid out yet
        self._pending_sizes: list[np.ndarray] = []
        self._pending_rows = 0

    def get_state(self) -> dict[str, Any]:
        state = {**self._window_start, "next_row": self._next_row, "counter": self._counter,
                 "stats": dataclasses.asdict(self._totals)}
        return checkpoint.record_arguments(state, self._arguments(), packer=_PACKER, version=_STATE_VERSION)

    def _arguments(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self._options), "rolling": dataclasses.asdict(self._rolling),
                "placement": _PLACEMENT}

    def set_state(self, state: dict[str, Any]) -> None:
        checkpoint.check_arguments(state, self._arguments(), packer=_PACKER, version=_STATE_VERSION)
        self._parent.set_state(state["parent"])
        self._counter = state["counter"]
        self._totals = PackingStats(**state["stats"])
        self._start({"parent": state["parent"], "piece": state["piece"]}, next_row=state["next_row"])

    def __next__(self) -> dict[str, np.ndarray]:
        while not self._rows:
            self._produce()
        row = self._rows.pop()
        element = {name: field[row] for name, field in self._fields.items()}
        row_stats = self._row_stats[row]
        self._totals.add_row(row_stats, self._options.seq_len, loss_tokens=row_stats[5])
        self._next_row += 1
        self._counter += 1
        if not self._rows:
            self._pool.release(list(self._fields.values()))
            self._fields = {}
            if self._drained_start is not None:
                self._window_start, self._drained_start, self._next_row = self._drained_start, None, 0
        return element

    def _produce(self) -> None:
        """Pushes the next element's pieces (up to a checkpoint point) and lays out the
        rows that leave."""
        if self._ended:
            raise StopIteration
        every = self._rolling.checkpoint_every
        options = self._options
        if self._element is None or self._cursor == len(self._element):
            state = self._parent.get_state()
            try:
                element = next(self._parent)
            except StopIteration:
                self._ended = True
                return self._drain({"parent": state, "piece": 0})
            self._element_state = state
            if not (isinstance(element, Mapping) and "lengths" in element) and not self._restore_cursor:
                document, mask = document_with_mask(element)
                if document.shape[0] < options.seq_len:  # one piece: the common streaming case
                    self._element = None
                    self._arena.add_document(document, mask, options.eod_token_id, int(options.train_on_eod))
                    self._packer.push(np.array([document.shape[0] + 1], np.int64))
                    return self._pushed(None)
                element = (document, mask)
            self._element = element_pieces(element, seq_len=options.seq_len, eod_token_id=options.eod_token_id,
                                           long_documents=options.long_documents,
                                           eod_loss=int(options.train_on_eod))
            self._cursor, self._restore_cursor = self._restore_cursor, 0
        stop = min(len(self._element), self._cursor + every - self._packer.clock)
        self._arena.add(self._element, self._cursor, stop)
        self._packer.push(self._element.lengths[self._cursor:stop, 0])
        self._cursor = stop
        self._pushed({"parent": self._element_state, "piece": stop} if stop < len(self._element)
                     else None)

    def _pushed(self, next_start: dict[str, Any] | None) -> None:
        """After a push: drains at a checkpoint point (the next one starts at
        ``next_start``, None: after the element, from the parent's state now), else lays
        out the rows that left once there are enough."""
        if self._packer.clock == self._rolling.checkpoint_every:
            return self._drain(next_start or {"parent": self._parent.get_state(), "piece": 0})
        self._collect()
        if self._pending_rows < self._options.num_packing_bins:
            return  # lay rows out in groups: one small layout per document costs more than it packs
        self._lay_out()
        if self._arena.wants_compaction():
            self._arena.compact(self._packer.held_ids())

    def _drain(self, next_start: dict[str, Any]) -> None:
        self._packer.drain()
        self._lay_out()
        self._arena.clear()
        if self._rows:
            self._drained_start = next_start
        else:  # nothing left to emit from this interval
            self._window_start, self._next_row = next_start, 0

    def _collect(self) -> None:
        """Moves the rows the packer emitted into the pending group."""
        ids, sizes = self._packer.take_rows()
        if sizes.shape[0]:
            self._pending_ids.append(ids)
            self._pending_sizes.append(sizes)
            self._pending_rows += sizes.shape[0]

    def _lay_out(self) -> None:
        self._collect()
        ids = np.concatenate([np.zeros(0, np.int64), *self._pending_ids])
        sizes = np.concatenate([np.zeros(0, np.int64), *self._pending_sizes])
        self._pending_ids, self._pending_sizes, self._pending_rows = [], [], 0
        if self._skip:  # rows emitted before the checkpoint being restored
            dropped = min(self._skip, sizes.shape[0])
            self._arena.take(ids[:int(sizes[:dropped].sum())])
            ids, sizes = ids[int(sizes[:dropped].sum()):], sizes[dropped:]
            self._skip -= dropped
        if not sizes.shape[0]:
            return
        options = self._options
        tokens, mask, columns = self._arena.take(ids)
        rows = np.repeat(np.arange(sizes.shape[0]), sizes)
        lengths = columns["lengths"]
        loss_tokens = np.empty(sizes.shape[0], np.int64)
        self._fields = lay_out_rows(tokens, lengths, rows, num_rows=sizes.shape[0], seq_len=options.seq_len,
                                    eod_token_id=options.eod_token_id, pad_token_id=options.pad_token_id,
                                    shift=options.shift, loss_mask=mask, empty=self._pool.empty,
                                    out_loss_tokens=loss_tokens)
        # Per row: tokens, pieces, documents, split documents, truncated tokens, loss tokens.
        weights = (lengths, None, columns["starts_document"], columns["starts_split"], columns["truncated"])
        self._row_stats = np.stack(
            [np.bincount(rows, w, minlength=sizes.shape[0]) for w in weights]
            + [loss_tokens], axis=1
        ).astype(np.int64).tolist()
        self._rows = list(range(sizes.shape[0] - 1, -1, -1))  # popped from the end: row 0 first
