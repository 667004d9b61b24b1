"""One call from a corpus on disk to packed LLM batches; and mixing several corpora."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from .._checks import positive_int
from .chunks import DocumentChunkIterDataset
from .corpus import Corpus
from .open import open_corpus

CorpusLike = Corpus | str | os.PathLike | Sequence[str | os.PathLike]


def _corpus(corpus: CorpusLike, format: str | None, field: str | None) -> Corpus:
    return corpus if isinstance(corpus, Corpus) else open_corpus(corpus, format=format, field=field)


def packed_rows(corpus: CorpusLike, *, seq_len: int, eod_token_id: int, pad_token_id: int = 0,
                host_index: int = 0, host_count: int = 1, shuffle: bool = True, seed: int = 0,
                num_epochs: int | None = 1, num_packing_bins: int = 64, algorithm: str = "first_fit",
                long_documents: str = "split", shift: str = "inputs", documents_per_chunk: int = 4096,
                format: str | None = None, field: str | None = None, **packer_options: Any) -> grain.IterDataset:
    """corpus -> :class:`DocumentChunkIterDataset` -> :class:`~xbatch.packing.LLMPackIterDataset`:
    a grain dataset of packed rows (dicts of int32 [seq_len] arrays). Arguments as in
    :func:`llm_batches`; ``packer_options`` go to the packer (e.g. ``shuffle_bins``)."""
    from ..packing import LLMPackIterDataset

    chunks = DocumentChunkIterDataset(
        _corpus(corpus, format, field), documents_per_chunk=documents_per_chunk, shuffle=shuffle, seed=seed,
        num_epochs=num_epochs, shard_index=host_index, shard_count=host_count)
    return LLMPackIterDataset(chunks, seq_len=seq_len, num_packing_bins=num_packing_bins,
                              eod_token_id=eod_token_id, pad_token_id=pad_token_id, algorithm=algorithm,
                              long_documents=long_documents, shift=shift, **packer_options)


_LLM_FIELDS = ("inputs", "targets", "inputs_position", "inputs_segmentation", "targets_position",
               "targets_segmentation")


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def _consecutive_rows(values: list[np.ndarray], ordered: bool) -> np.ndarray | None:
    """``base[r:r + len(values)]`` when ``values`` are exactly those consecutive whole rows
    of one 2-d array (the packer's window arrays), else None.

    ``ordered``: the rows come in window order (no ``shuffle_bins``), so rows of one base
    held together are consecutive and only the first and last addresses need checking.
    """
    first = values[0]
    base = first.base
    if not isinstance(base, np.ndarray) or base.ndim != 2 or first.shape != base.shape[1:]:
        return None
    for value in values:
        if value.base is not base:
            return None
    stride, origin, start = base.strides[0], _address(base), _address(first)
    row, misaligned = divmod(start - origin, stride)
    if misaligned or row + len(values) > base.shape[0]:
        return None
    checked = (values[-1],) if ordered else values
    offset = len(values) - 1 if ordered else 0
    for i, value in enumerate(checked):
        if _address(value) != start + (offset + i) * stride:
            return None
    return base[row:row + len(values)]


def batch_rows(rows: Sequence[Mapping[str, Any]], *, ordered: bool = False) -> Any:
    """:func:`xbatch.batch.stack_rows`, without copying when the rows are consecutive
    rows of one packer window (then each field is a view of the window's array, which the
    packer's pool does not reuse while the batch holds it). ``ordered``: the rows come
    in window order (an LLM packer without ``shuffle_bins``).

    Rows with ``seq_lengths``/``seq_offsets`` (a packer with ``attention_metadata=True``)
    give ``(batch, metadata)``: those two stacked to [B, M] and [B, M + 1], plus the
    batch's ``cu_seqlens`` and ``max_seqlen`` (:func:`~xbatch.packing.varlen_metadata`)."""
    from ..batch import LLMBatch, stack_rows
    from ..packing.attention import ROW_METADATA, varlen_metadata

    if rows and ROW_METADATA[0] in rows[0]:
        metadata = {}
        for name in ROW_METADATA:
            values = [np.asarray(row[name]) for row in rows]
            view = _consecutive_rows(values, ordered)
            metadata[name] = np.stack(values) if view is None else view
        metadata.update(varlen_metadata(metadata["seq_lengths"]))
        rows = [{name: value for name, value in row.items() if name not in ROW_METADATA} for row in rows]
        return batch_rows(rows, ordered=ordered), metadata
    if rows and len(rows[0]) == len(_LLM_FIELDS):
        views = {}
        for name in _LLM_FIELDS:
            values = [row.get(name) for row in rows]
            view = _consecutive_rows(values, ordered) if all(isinstance(v, np.ndarray) for v in values) else None
            if view is None:
                break
            views[name] = view
        else:
            return LLMBatch(**views)
    return stack_rows(rows)


def _batched(rows: grain.IterDataset, *, batch_size: int, drop_remainder: bool,
             rampup: Mapping[int | str, float] | None, rampup_multiple_of: int, worker_count: int,
             worker_buffer_size: int, ordered: bool) -> grain.IterDataset:
    from ..grain_batch_rampup import batch_dataset_with_rampup

    if worker_count:
        # Workers read and pack; batching stays in this process, so a ramp-up counts
        # the global steps and not each worker's.
        rows = rows.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=positive_int("worker_count", worker_count),
            per_worker_buffer_size=positive_int("worker_buffer_size", worker_buffer_size)))
    return batch_dataset_with_rampup(
        rows, positive_int("batch_size", batch_size), drop_remainder=drop_remainder,
        batch_fn=functools.partial(batch_rows, ordered=ordered and not worker_count),
        schedule_type="stepwise" if rampup else "constant", boundaries_and_scales=rampup or None,
        multiple_of=rampup_multiple_of)


def _ordered(algorithm: str, packer_options: Mapping[str, Any]) -> bool:
    """Whether the packer emits each window's rows in order (see :func:`batch_rows`)."""
    return algorithm in ("first_fit", "best_fit") and not packer_options.get("shuffle_bins", False)


def llm_batches(corpus: CorpusLike, *, batch_size: int, seq_len: int, eod_token_id: int,
                pad_token_id: int = 0, host_index: int = 0, host_count: int = 1, shuffle: bool = True,
                seed: int = 0, num_epochs: int | None = 1, num_packing_bins: int = 64,
                algorithm: str = "first_fit", long_documents: str = "split", shift: str = "inputs",
                rampup: Mapping[int | str, float] | None = None, rampup_multiple_of: int = 1,
                drop_remainder: bool = True, worker_count: int = 0, worker_buffer_size: int = 1,
                documents_per_chunk: int = 4096, format: str | None = None, field: str | None = None,
                **packer_options: Any) -> grain.IterDataset:
    """A grain dataset of :class:`~xbatch.batch.LLMBatch` (NumPy) from a tokenized corpus.

    Exactly the composition ``DocumentChunkIterDataset(corpus, ...)`` ->
    ``LLMPackIterDataset(...)`` -> ``batch_dataset_with_rampup(..., batch_fn=batch_rows)``
    (:func:`batch_rows`: ``stack_rows``' batches, as views where the rows allow)
    (with ``mp_prefetch`` of the rows when ``worker_count > 0``): the knobs of xlstm-jax's
    ``make_grain_llm_iterator`` that apply to a tokenized corpus.

    Args:
      corpus: a :class:`Corpus`, or path(s) for :func:`open_corpus` (with ``format``, ``field``).
      batch_size: rows per batch on this host (the first size of a ramp-up).
      seq_len: tokens per row.
      eod_token_id: appended to every document; ``pad_token_id`` fills the rest.
      host_index, host_count: this data-loading host's shard of the documents
        (grain's ``even_split``).
      shuffle, seed, num_epochs: grain's per-epoch document shuffle (``num_epochs=None``
        repeats forever).
      num_packing_bins, algorithm, long_documents, shift: the packer's (see
        :class:`~xbatch.packing.LLMPackIterDataset`).
      rampup: ``{boundary step: factor}`` for a stepwise batch-size ramp-up (see
        :func:`~xbatch.grain_batch_rampup.batch_dataset_with_rampup`); None for fixed batches.
      rampup_multiple_of: keep every ramped size a multiple of this.
      drop_remainder: drop a final short batch.
      worker_count: grain ``mp_prefetch`` worker processes that read and pack (0: none);
        each packs its own slice of the document stream, so rows differ from a
        single-process run but hold the same documents.
      worker_buffer_size: rows buffered per worker.
      documents_per_chunk: documents read per chunk.
      packer_options: more :class:`~xbatch.packing.LLMPackIterDataset` arguments; with
        ``attention_metadata=True`` (and ``max_documents_per_row=M``) each element is
        ``(batch, metadata)``: ``seq_lengths`` int32[B, M], ``seq_offsets`` int32[B, M + 1],
        ``cu_seqlens`` int32[B * M + 1] and ``max_seqlen`` (see :func:`batch_rows`).
    """
    rows = packed_rows(corpus, seq_len=seq_len, eod_token_id=eod_token_id, pad_token_id=pad_token_id,
                       host_index=host_index, host_count=host_count, shuffle=shuffle, seed=seed,
                       num_epochs=num_epochs, num_packing_bins=num_packing_bins, algorithm=algorithm,
                       long_documents=long_documents, shift=shift, documents_per_chunk=documents_per_chunk,
                       format=format, field=field, **packer_options)
    return _batched(rows, batch_size=batch_size, drop_remainder=drop_remainder, rampup=rampup,
                    rampup_multiple_of=rampup_multiple_of, worker_count=worker_count,
                    worker_buffer_size=worker_buffer_size, ordered=_ordered(algorithm, packer_options))


def mix_llm_batches(corpora: Sequence[CorpusLike], weights: Sequence[float], *, batch_size: int, seq_len: int,
                    eod_token_id: int, seed: int = 0, num_epochs: int | None = None,
                    rampup: Mapping[int | str, float] | None = None, rampup_multiple_of: int = 1,
                    drop_remainder: bool = True, worker_count: int = 0, worker_buffer_size: int = 1,
                    **row_options: Any) -> grain.IterDataset:
    """Batches of rows mixed from several corpora with ``weights`` (grain's ``IterDataset.mix``).

    Each corpus is packed on its own (:func:`packed_rows`, seeds ``seed + i``), then the
    *rows* are mixed: a row holds documents of one corpus only, and the weights are
    shares of rows (hence of token cells), not of documents. ``num_epochs`` defaults to
    None (repeat forever), as mixing needs every input to keep flowing; a finite input
    ends the mix when it runs out. ``row_options`` go to :func:`packed_rows`.
    """
    if len(corpora) != len(weights) or not corpora:
        raise ValueError(f"weights: expected one weight per corpus ({len(corpora)}), got {list(weights)}")
    if any(not weight > 0 for weight in weights):
        raise ValueError(f"weights: expected positive numbers, got {list(weights)}")
    rows = [packed_rows(corpus, seq_len=seq_len, eod_token_id=eod_token_id, seed=(seed + i) % 2**32,
                        num_epochs=num_epochs, **row_options) for i, corpus in enumerate(corpora)]
    mixed = grain.IterDataset.mix(rows, [float(weight) for weight in weights])
    return _batched(mixed, batch_size=batch_size, drop_remainder=drop_remainder, rampup=rampup,
                    rampup_multiple_of=rampup_multiple_of, worker_count=worker_count,
                    worker_buffer_size=worker_buffer_size, ordered=False)
