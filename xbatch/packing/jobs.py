"""Packing a corpus shard by shard: in one process, a process pool, or on Ray.

The corpus is cut into shards of consecutive documents; each shard is packed by the pure
function :func:`~xbatch.packing.index.pack_shard`, and the shard indexes are merged in
order. The three engines run the same function on the same shards, so they give the same
index, bit for bit. Memory per task is bounded by the shard size (about 40 bytes per
piece); the merged index holds 16 bytes per piece plus 8 per row.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from typing import Any

import numpy as np

from .._checks import positive_int
from .index import PackingIndex, corpus_identity, document_lengths, index_arguments, merge_indexes, pack_shard

ENGINES = ("serial", "processes", "ray")
DEFAULT_SHARD_DOCUMENTS = 1 << 20


def shard_ranges(num_documents: int, shard_documents: int) -> list[tuple[int, int]]:
    """(first, stop) document ranges of at most ``shard_documents`` documents, covering all."""
    shard_documents = positive_int("shard_documents", shard_documents)
    return [(first, min(first + shard_documents, num_documents))
            for first in range(0, num_documents, shard_documents)] or [(0, 0)]


def _pack_range(lengths: np.ndarray, first: int, arguments: dict[str, Any]) -> PackingIndex:
    return pack_shard(lengths, first_document=first, **arguments)


def build_index(lengths: Any, *, shard_documents: int = DEFAULT_SHARD_DOCUMENTS, engine: str = "serial",
                workers: int | None = None, **arguments: Any) -> PackingIndex:
    """Packs the documents with these ``lengths`` into one index, shard by shard.

    Args:
      lengths: int[documents], tokens per document (e.g. ``np.diff(offsets)``), or an
        :class:`xbatch.sources.Corpus` (its ``lengths()``).
      shard_documents: documents per shard; rows never span shards, so the rows equal
        ``pack_documents`` over each shard in turn (over the whole corpus with one shard).
      engine: ``"serial"`` (this process), ``"processes"`` (a local process pool) or
        ``"ray"`` (Ray tasks, on the cluster ``ray.init`` connected to, or a local one;
        needs ``pip install "xbatch[ray]"``). All three give the same index.
      workers: processes for ``"processes"`` (default: the CPU count).
      arguments: the packing arguments of :func:`~xbatch.packing.index.index_arguments`.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")
    arguments = index_arguments(**arguments)
    if callable(getattr(lengths, "lengths", None)):  # a Corpus
        lengths = lengths.lengths()
    lengths = document_lengths(lengths)
    ranges = shard_ranges(lengths.shape[0], shard_documents)
    if engine == "serial":
        parts = [_pack_range(lengths[a:b], a, arguments) for a, b in ranges]
    elif engine == "processes":
        workers = (os.cpu_count() or 1) if workers is None else positive_int("workers", workers)
        # "spawn": forking a process that runs JAX or other threads can deadlock.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(ranges)), mp_context=context) as pool:
            parts = list(pool.map(_pack_range, [lengths[a:b] for a, b in ranges], [a for a, _ in ranges],
                                  [arguments] * len(ranges)))
    else:
        parts = _ray_parts(lengths, ranges, arguments)
    return merge_indexes(parts, corpus=corpus_identity(lengths))


def _ray_parts(lengths: np.ndarray, ranges: list[tuple[int, int]], arguments: dict[str, Any]) -> list[PackingIndex]:
    try:
        import ray
    except ImportError as error:
        raise ImportError('engine="ray" needs Ray: pip install "xbatch[ray]"') from error
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    task = ray.remote(_pack_range)
    return ray.get([task.remote(lengths[a:b], a, arguments) for a, b in ranges])
