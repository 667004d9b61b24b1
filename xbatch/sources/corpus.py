"""A tokenized corpus: flat token arrays plus per-document ranges, one shard per file.

Nothing here holds a Python object per document. A shard's ``tokens`` is usually a
memory map of the file (or an Arrow buffer over one), and its document ranges are int64
arrays -- memory-mapped where the format stores them as such. Shards form one global
document index: document ``i`` of the corpus is document ``i - shard_starts[s]`` of the
shard ``s`` that holds it.
"""

from __future__ import annotations

import dataclasses
import mmap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .._checks import describe

_INT32 = np.iinfo(np.int32)


class CorpusError(ValueError):
    """A corpus file that cannot be read, or arrays that do not describe documents."""


@dataclasses.dataclass(frozen=True, eq=False)
class CorpusShard:
    """The documents of one file (or one in-memory array): ``tokens[starts[i]:ends[i]]``.

    Attributes:
      tokens: 1-d integer array (any integer dtype; often a ``np.memmap``), the token ids.
      starts: int64[documents], where each document starts in ``tokens``.
      ends: int64[documents], where each document ends (exclusive); ``ends >= starts``.
      name: where the documents came from (a path), for messages.
      token_columns: optional per-token arrays aligned with ``tokens`` (same length),
        e.g. a loss mask; empty for most formats.
      offsets: int64[documents + 1] when the documents lie back to back (``starts`` and
        ``ends`` are then views of it: ``offsets[:-1]`` and ``offsets[1:]``), else None.
        Every format xbatch writes is contiguous; Arrow files with several record
        batches are not (batches sit apart in the file).
    """

    tokens: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    name: str
    token_columns: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    offsets: np.ndarray | None = None

    @classmethod
    def from_offsets(cls, tokens: np.ndarray, offsets: np.ndarray, name: str,
                     token_columns: Mapping[str, np.ndarray] | None = None) -> CorpusShard:
        """A shard of documents back to back: document ``i`` is ``tokens[offsets[i]:offsets[i+1]]``.

        Checks O(1) facts only (dtypes, shapes, first and last offset), so that opening a
        memory-mapped file reads nothing per document; :meth:`validate` checks the rest.
        """
        if not (isinstance(offsets, np.ndarray) and offsets.dtype == np.int64 and offsets.ndim == 1
                and offsets.shape[0] >= 1):
            raise CorpusError(f"{name}: offsets must be a 1-d int64 array of documents + 1 entries, "
                              f"got {describe(offsets)}")
        return cls(tokens, offsets[:-1], offsets[1:], name, dict(token_columns or {}), offsets)

    def __post_init__(self):
        tokens = self.tokens
        if not isinstance(tokens, np.ndarray) or tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            raise CorpusError(f"{self.name}: tokens must be a 1-d integer array, got {describe(tokens)}")
        for what in ("starts", "ends"):
            array = getattr(self, what)
            if not (isinstance(array, np.ndarray) and array.dtype == np.int64 and array.ndim == 1):
                raise CorpusError(f"{self.name}: {what} must be a 1-d int64 array, got {describe(array)}")
        if self.starts.shape != self.ends.shape:
            raise CorpusError(f"{self.name}: starts ({self.starts.shape[0]}) and ends "
                              f"({self.ends.shape[0]}) must have one entry per document")
        if self.offsets is not None and self.offsets.shape[0]:
            # O(1) checks; the memory map stays untouched.
            first, last = int(self.offsets[0]), int(self.offsets[-1])
            if not 0 <= first <= last <= tokens.shape[0]:
                raise CorpusError(
                    f"{self.name}: offsets must rise from >= 0 to <= the {tokens.shape[0]} tokens, "
                    f"got first {first}, last {last}")
        for column, values in self.token_columns.items():
            if not isinstance(values, np.ndarray) or values.shape[:1] != tokens.shape:
                raise CorpusError(f"{self.name}: token column {column!r} must have one entry per token "
                                  f"({tokens.shape[0]}), got {describe(values)}")

    def __len__(self) -> int:
        return self.starts.shape[0]

    @property
    def num_tokens(self) -> int:
        """Tokens in the shard's documents (not counting gaps between Arrow batches)."""
        if self.offsets is not None:
            return int(self.offsets[-1] - self.offsets[0])
        return int((self.ends - self.starts).sum())

    def lengths(self) -> np.ndarray:
        """int64[documents], tokens per document (a new array: 8 bytes per document)."""
        return self.ends - self.starts

    def advise_random(self) -> None:
        """Tells the OS that this shard's memory maps are read at random (shuffled
        documents): no read-ahead around each page touched, so resident memory grows by
        the pages read, not by ~128 KiB around each. Arrays that are not maps are left alone."""
        for array in (self.tokens, self.starts, self.ends, self.offsets):
            _advise_random(array)

    def validate(self, block: int = 1 << 22) -> None:
        """Checks every document range (O(documents), in blocks): ``0 <= start <= end <=
        len(tokens)``, and for offsets that they never fall. Raises :class:`CorpusError`."""
        size = self.tokens.shape[0]
        for low in range(0, len(self), block):
            starts = np.asarray(self.starts[low:low + block])
            ends = np.asarray(self.ends[low:low + block])
            bad = np.flatnonzero((starts < 0) | (ends < starts) | (ends > size))
            if bad.size:
                i = int(bad[0])
                raise CorpusError(f"{self.name}: document {low + i} has range [{starts[i]}, {ends[i]}), "
                                  f"expected 0 <= start <= end <= {size} (the tokens)")


def _advise_random(array: Any) -> None:
    while isinstance(array, np.ndarray):
        handle = getattr(array, "_mmap", None)
        if handle is not None and hasattr(mmap, "MADV_RANDOM"):
            try:
                handle.madvise(mmap.MADV_RANDOM)
            except (OSError, ValueError):  # advice only
                pass
            return
        array = array.base


def _shard_starts(shards: Sequence[CorpusShard]) -> np.ndarray:
    starts = np.zeros(len(shards) + 1, dtype=np.int64)
    np.cumsum([len(shard) for shard in shards], out=starts[1:])
    return starts


class Corpus:
    """Tokenized documents from one or more shards, as one global document index.

    ``len(corpus)`` is the number of documents; ``corpus.document(i)`` returns document
    ``i``'s tokens (a view, in the file's dtype); ``corpus.gather(indices)`` returns many
    documents back to back as int32 (what the packers take) without a Python object per
    document.

    Zero-copy access for code that builds on a corpus (indices, other sources):
    ``corpus.shards`` (each a :class:`CorpusShard`: ``tokens``, ``starts``/``ends``,
    ``offsets`` when contiguous) and ``corpus.shard_starts`` (int64[shards + 1], the
    global index of each shard's first document). For a single contiguous shard,
    ``corpus.tokens`` and ``corpus.offsets`` are that shard's arrays.

    A corpus opened from files pickles as its paths (the worker re-opens and memory-maps
    them); one built from arrays pickles its arrays.
    """

    def __init__(self, shards: Sequence[CorpusShard], *, name: str | None = None,
                 reopen: Callable[[], Corpus] | None = None):
        shards = tuple(shards)
        if not shards:
            raise CorpusError("a corpus needs at least one shard, got none")
        for shard in shards:
            if not isinstance(shard, CorpusShard):
                raise TypeError(f"shards: expected CorpusShard objects, got {describe(shard)}")
        self.shards = shards
        self.shard_starts = _shard_starts(shards)
        self.name = name or (shards[0].name if len(shards) == 1 else f"{shards[0].name} (+{len(shards) - 1} shards)")
        self._reopen = reopen

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_arrays(cls, tokens: Any, *, offsets: Any = None, lengths: Any = None,
                    name: str = "arrays") -> Corpus:
        """An in-memory corpus from a flat token array and either ``offsets``
        (int[documents + 1], rising, from 0... or any start) or ``lengths`` (int[documents])."""
        tokens = np.asarray(tokens)
        if tokens.size == 0 and tokens.dtype == np.float64:
            tokens = tokens.astype(np.int32)
        if (offsets is None) == (lengths is None):
            raise CorpusError(f"{name}: give exactly one of offsets or lengths")
        if lengths is not None:
            lengths = np.asarray(lengths)
            if lengths.ndim != 1 or (lengths.size and lengths.dtype.kind not in "iu"):
                raise CorpusError(f"{name}: lengths must be a 1-d integer array, got {describe(lengths)}")
            offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
        else:
            offsets = np.asarray(offsets)
            if offsets.ndim != 1 or offsets.dtype.kind not in "iu":
                raise CorpusError(f"{name}: offsets must be a 1-d integer array, got {describe(offsets)}")
            offsets = offsets.astype(np.int64)
        if offsets.size > 1 and np.any(np.diff(offsets) < 0):
            raise CorpusError(f"{name}: offsets must never fall (lengths >= 0)")
        return cls([CorpusShard.from_offsets(tokens, offsets, name)], name=name)

    @classmethod
    def from_documents(cls, documents: Sequence[Any], *, name: str = "documents") -> Corpus:
        """An in-memory corpus from a sequence of 1-d integer arrays or lists (int32 tokens
        unless a document needs int64)."""
        arrays = [np.asarray(document) for document in documents]
        for index, array in enumerate(arrays):
            if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
                raise CorpusError(f"{name}: document {index} must be a 1-d integer array, got {describe(array)}")
        lengths = np.array([array.shape[0] for array in arrays], dtype=np.int64)
        flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
        if flat.dtype.kind not in "iu":
            flat = flat.astype(np.int32)
        if flat.dtype.itemsize > 4 and (not flat.size or (flat.min() >= _INT32.min and flat.max() <= _INT32.max)):
            flat = flat.astype(np.int32)
        return cls.from_arrays(flat, lengths=lengths, name=name)

    def __reduce__(self):
        if self._reopen is not None:
            return (_call, (self._reopen,))
        return (Corpus, (self.shards,), {"name": self.name})

    def __setstate__(self, state):
        self.name = state["name"]

    # -- size ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.shard_starts[-1])

    @property
    def num_tokens(self) -> int:
        """Tokens in all documents."""
        return sum(shard.num_tokens for shard in self.shards)

    def __repr__(self) -> str:
        return f"Corpus({self.name!r}, documents={len(self)}, shards={len(self.shards)})"

    # -- single-shard arrays --------------------------------------------------------------

    def _only_shard(self, what: str) -> CorpusShard:
        if len(self.shards) != 1:
            raise CorpusError(f"{self.name}: corpus.{what} exists for a single-shard corpus; this one has "
                              f"{len(self.shards)} shards: use corpus.shards[s].{what} with corpus.shard_starts")
        return self.shards[0]

    @property
    def tokens(self) -> np.ndarray:
        """The single shard's token array (see :attr:`shards` for several)."""
        return self._only_shard("tokens").tokens

    @property
    def offsets(self) -> np.ndarray:
        """The single shard's int64[documents + 1] offsets (its documents must lie back to back)."""
        shard = self._only_shard("offsets")
        if shard.offsets is None:
            raise CorpusError(f"{shard.name}: the documents do not lie back to back (Arrow record batches); "
                              "use shard.starts and shard.ends")
        return shard.offsets

    def lengths(self) -> np.ndarray:
        """int64[documents], tokens per document, all shards (a new array)."""
        return np.concatenate([shard.lengths() for shard in self.shards])

    # -- documents ----------------------------------------------------------------------

    def locate(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """(shard, index within the shard) of global document indices (checked)."""
        indices = _document_indices(indices, len(self))
        shard = np.searchsorted(self.shard_starts, indices, side="right") - 1
        return shard, indices - self.shard_starts[shard]

    def document(self, index: int) -> np.ndarray:
        """Document ``index``'s tokens: a view in the file's dtype (negative counts from the end)."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index: expected an integer document index, got {describe(index)}")
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index: document {index} is out of range for {len(self)} documents")
        s = int(np.searchsorted(self.shard_starts, index, side="right") - 1)
        shard = self.shards[s]
        local = index - int(self.shard_starts[s])
        start, end = int(shard.starts[local]), int(shard.ends[local])
        if not 0 <= start <= end <= shard.tokens.shape[0]:
            raise CorpusError(f"{shard.name}: document {local} has range [{start}, {end}), outside the "
                              f"{shard.tokens.shape[0]} tokens")
        return shard.tokens[start:end]

    def gather(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """Documents ``indices`` back to back: (int32[total] tokens, int64[len(indices)] lengths).

        Raises :class:`CorpusError` when a document's range lies outside its tokens or a
        token id does not fit int32.
        """
        from .gather import gather_documents  # the kernel wrapper (needs no grain)

        return gather_documents(self, indices)

    def has_token_column(self, name: str) -> bool:
        """Whether every shard has the per-token column ``name`` (e.g. ``"loss_mask"``)."""
        return all(name in shard.token_columns for shard in self.shards)

    def gather_column(self, name: str, indices: Any) -> np.ndarray:
        """Per-token column ``name`` of documents ``indices``, back to back, aligned with the
        tokens :meth:`gather` returns for the same indices (the column's own dtype)."""
        if not self.has_token_column(name):
            raise CorpusError(f"{self.name}: no per-token column {name!r} in every shard")
        indices = _document_indices(indices, len(self))
        shard_of = np.searchsorted(self.shard_starts, indices, side="right") - 1
        parts = []
        # One vectorized gather per run of consecutive documents from the same shard, so
        # that the documents stay in the order asked for.
        bounds = np.flatnonzero(np.diff(shard_of)) + 1
        for run in np.split(np.arange(indices.shape[0]), bounds):
            if not run.size:
                continue
            shard = self.shards[int(shard_of[run[0]])]
            local = indices[run] - self.shard_starts[int(shard_of[run[0]])]
            starts, ends = shard.starts[local], shard.ends[local]
            lengths = ends - starts
            first_cell = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
            parts.append(shard.token_columns[name][first_cell + np.arange(int(lengths.sum()))])
        if not parts:
            return np.zeros(0, dtype=self.shards[0].token_columns[name].dtype)
        return np.concatenate(parts)


def _call(function: Callable[[], Any]) -> Any:
    return function()


def _document_indices(indices: Any, count: int) -> np.ndarray:
    array = np.asarray(indices)
    if array.size == 0 and array.dtype == np.float64:
        array = array.astype(np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise TypeError(f"indices: expected a 1-d integer array of document indices, got {describe(indices)}")
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or array.max() >= count):
        raise IndexError(f"indices: document indices must lie in [0, {count}), got range "
                         f"[{array.min()}, {array.max()}]")
    return array
