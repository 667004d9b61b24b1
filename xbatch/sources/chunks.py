"""A grain dataset of ragged chunks of documents, in grain's shuffled order, sharded like grain."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import grain
import numpy as np

from .._checks import describe, positive_int
from .corpus import Corpus
from .shuffle import document_order, even_split


@dataclasses.dataclass(frozen=True)
class _Stream:
    """The document positions one iterator reads: ``first + step * j`` for ``j < length``
    of the shard ``[start, stop)``'s repeated (shuffled) sequence."""

    start: int
    stop: int
    first: int
    step: int
    length: float  # math.inf when repeating forever


class DocumentChunkIterDataset(grain.IterDataset):
    """Ragged chunks ``{"tokens", "lengths", "documents"}`` of a corpus's documents (plus
    ``"loss_mask"``, aligned with ``"tokens"``, when the corpus has a ``loss_mask`` column).

    Each element holds ``documents_per_chunk`` documents (the last one fewer): ``tokens``
    int32[total] back to back, ``lengths`` int64[k] and ``documents`` int64[k], their
    global indices in the corpus. :class:`~xbatch.packing.LLMPackIterDataset` takes these
    chunks as they are, so no Python object is made per document.

    Document order is exactly grain's ``MapDataset.source(docs)[start:stop]
    .shuffle(seed).repeat(num_epochs)`` (``seed + epoch`` per epoch, grain's
    ``index_shuffle`` with 4 rounds), where ``[start, stop)`` is this host's shard from
    grain's ``even_split`` (``drop_remainder=False``); with ``shuffle=False`` corpus order.
    A user switching from that grain source gets the same documents in the same order,
    so a packer after it yields the same rows. (grain's shuffle is not a permutation when
    the shard holds ``4**k + 1`` documents, ``k >= 8``: one document then comes twice
    and one never, in grain and here alike.)

    Under grain's ``mp_prefetch`` each worker process gets a slice through grain's
    slicing protocol (``set_slice``): worker ``w`` of ``W`` reads stream positions ``w,
    w + W, ...`` -- exactly what grain gives each worker of that MapDataset pipeline --
    so the workers together read every position once; with ``sequential_slice`` worker
    ``w`` instead reads the ``w``-th even split of the shard, shuffled on its own.

    The iterator's state is ``{"epoch", "position"}``: the epoch of the next document and
    the documents read so far (JSON-serializable); ``set_state`` restores exactly.

    Memory: one chunk's arrays at a time; the corpus' memory maps.

    Args:
      corpus: the documents (see :func:`~xbatch.sources.open_corpus`).
      documents_per_chunk: documents per element (>= 1).
      shuffle: grain's per-epoch shuffle, else corpus order.
      seed: shuffle seed, ``0 <= seed < 2**32``.
      num_epochs: passes over the shard (>= 1), or None to repeat forever.
      shard_index, shard_count: this host's shard (``0 <= shard_index < shard_count``).
    """

    def __init__(self, corpus: Corpus, *, documents_per_chunk: int = 4096, shuffle: bool = True,
                 seed: int = 0, num_epochs: int | None = 1, shard_index: int = 0, shard_count: int = 1):
        super().__init__()
        if not isinstance(corpus, Corpus):
            raise TypeError(f"corpus: expected an xbatch.sources.Corpus (see open_corpus), got {describe(corpus)}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
            raise ValueError(f"seed: expected an integer in [0, 2**32), got {seed!r}")
        if num_epochs is not None:
            num_epochs = positive_int("num_epochs", num_epochs)
        shard_count = positive_int("shard_count", shard_count)
        if isinstance(shard_index, bool) or not isinstance(shard_index, (int, np.integer)) or not (
            0 <= shard_index < shard_count
        ):
            raise ValueError(f"shard_index: expected an integer in [0, {shard_count}), got {shard_index!r}")
        self._corpus = corpus
        self._documents_per_chunk = positive_int("documents_per_chunk", documents_per_chunk)
        self._shuffle = bool(shuffle)
        self._seed = int(seed)
        self._num_epochs = num_epochs
        self._shard = even_split(len(corpus), int(shard_index), shard_count)
        self._worker = (0, 1, False)  # (index, count, sequential) from grain's set_slice

    @property
    def corpus(self) -> Corpus:
        return self._corpus

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """grain's in-place slicing protocol (``mp_prefetch`` workers): keep ``sl``'s part."""
        start, stop, step = sl.start or 0, sl.stop, sl.step or 1
        if stop is not None or start < 0 or step < 1 or start >= step:
            raise ValueError(f"set_slice: expected slice(worker_index, None, worker_count), got {sl}")
        index, count, _ = self._worker
        if count != 1:
            raise ValueError(f"set_slice: already sliced for worker {index} of {count}")
        self._worker = (start, step, bool(sequential_slice))

    def _stream(self) -> _Stream:
        start, stop = self._shard
        index, count, sequential = self._worker
        if sequential and count > 1:
            low, high = even_split(stop - start, index, count)
            start, stop = start + low, start + high
            index, count = 0, 1
        total = math.inf if self._num_epochs is None else (stop - start) * self._num_epochs
        if stop == start:
            total = 0
        length = math.inf if total == math.inf else max(0, -(-(total - index) // count))
        return _Stream(start, stop, index, count, length)

    def __iter__(self) -> _DocumentChunkIterator:
        return _DocumentChunkIterator(self)

    def __str__(self) -> str:
        index, count, sequential = self._worker
        return (f"DocumentChunkIterDataset(corpus={self._corpus.name!r}, documents_per_chunk="
                f"{self._documents_per_chunk}, shuffle={self._shuffle}, seed={self._seed}, "
                f"num_epochs={self._num_epochs}, shard={self._shard}, worker={index}/{count}"
                f"{' sequential' if sequential else ''})")


class _DocumentChunkIterator(grain.DatasetIterator):
    """Reads chunk after chunk of the stream; state: documents read so far."""

    def __init__(self, dataset: DocumentChunkIterDataset):
        super().__init__()
        self._corpus = dataset._corpus
        self._per_chunk = dataset._documents_per_chunk
        self._shuffle = dataset._shuffle
        self._seed = dataset._seed
        self._stream = dataset._stream()
        self._position = 0
        if self._shuffle:
            for shard in self._corpus.shards:
                shard.advise_random()

    def __next__(self) -> dict[str, np.ndarray]:
        stream = self._stream
        if self._position >= stream.length:
            raise StopIteration
        stop = min(self._position + self._per_chunk, stream.length)
        j = np.arange(self._position, int(stop), dtype=np.int64)
        if stream.step != 1 or stream.first:
            j *= stream.step
            j += stream.first
        documents = document_order(j, start=stream.start, stop=stream.stop, shuffle=self._shuffle,
                                   seed=self._seed)
        tokens, lengths = self._corpus.gather(documents)
        self._position = int(stop)
        chunk = {"tokens": tokens, "lengths": lengths, "documents": documents}
        if self._corpus.has_token_column("loss_mask"):  # the packers take it as it is
            chunk["loss_mask"] = self._corpus.gather_column("loss_mask", documents)
        return chunk

    def _epoch(self) -> int:
        stream = self._stream
        n = stream.stop - stream.start
        if not n:
            return 0
        return (stream.first + stream.step * self._position) // n

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self._epoch(), "position": self._position}

    def set_state(self, state: dict[str, Any]) -> None:
        position = state.get("position") if isinstance(state, dict) else None
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)) or position < 0:
            raise ValueError(f"state: expected {{'epoch': int, 'position': int >= 0}}, got {state!r}")
        self._position = int(min(position, self._stream.length))

    def __str__(self) -> str:
        return f"_DocumentChunkIterator(position={self._position})"
