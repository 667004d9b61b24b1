"""Packing a corpus shard by shard: in one process, a process pool, or on Ray.

The corpus is cut into shards of consecutive documents; each shard is packed by the pure
function :func:`~xbatch.packing.index.pack_shard`, and the shard indexes are merged in
order. The three engines run the same function on the same shards, so they give the same
index, bit for bit. Memory per task is bounded by the shard size (about 40 bytes per
piece); the merged index holds 16 bytes per piece plus 8 per row.

:func:`run_tasks` is the engine part alone (a function over a list of tasks, results in
task order); ``xbatch pack FILES --index-out`` runs it with one task per file.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable, Sequence
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


def run_tasks(function: Callable[..., Any], tasks: Sequence[tuple], *, engine: str = "serial",
              workers: int | None = None, done: Callable[[int], None] | None = None) -> list[Any]:
    """``[function(*task) for task in tasks]``, run by ``engine``; results in task order.

    Args:
      function: a module-level function (the process pool and Ray send it by name).
      tasks: argument tuples, one per task.
      engine: ``"serial"`` (this process), ``"processes"`` (a local pool of spawned
        processes) or ``"ray"`` (Ray tasks on the cluster ``ray.init`` connected to, or a
        local instance started here; needs ``pip install "xbatch[ray]"``).
      workers: ``"processes"``: pool size (default the CPU count); ``"ray"``: most tasks
        running at once (default: as many as Ray schedules). Not with ``"serial"``.
      done: called with a task's position as each task finishes (e.g. a progress bar).

    A task's exception is raised here as itself (the first failing task in order, for
    the pool and Ray as for the serial engine's first failure).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")
    if workers is not None:
        if engine == "serial":
            raise ValueError(f"workers: the serial engine runs in this process; got workers={workers!r}")
        workers = positive_int("workers", workers)
    done = done or (lambda _: None)
    if engine == "serial" or not tasks:
        results = []
        for position, task in enumerate(tasks):
            results.append(function(*task))
            done(position)
        return results
    if engine == "processes":
        return _pool_results(function, tasks, workers or os.cpu_count() or 1, done)
    return _ray_results(function, tasks, workers, done)


def _pool_results(function, tasks, workers, done) -> list[Any]:
    # "spawn": forking a process that runs JAX or other threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context) as pool:
        futures = {pool.submit(function, *task): position for position, task in enumerate(tasks)}
        for future in concurrent.futures.as_completed(futures):
            if future.exception() is None:
                done(futures[future])
        by_position = sorted(futures.items(), key=lambda item: item[1])
        return [future.result() for future, _ in by_position]  # raises the first failure in order


def _ray_results(function, tasks, workers, done) -> list[Any]:
    try:
        import ray
    except ImportError as error:
        raise ImportError('engine="ray" needs Ray: pip install "xbatch[ray]"') from error
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    remote = ray.remote(function)
    limit = workers or len(tasks)
    pending, positions, results = [], {}, [None] * len(tasks)
    for position, task in enumerate(tasks):
        if len(pending) >= limit:  # at most `workers` tasks at once
            finished, pending = ray.wait(pending, num_returns=1)
            done(positions[finished[0]])
        reference = remote.remote(*task)
        positions[reference] = position
        pending.append(reference)
    while pending:
        finished, pending = ray.wait(pending, num_returns=1)
        done(positions[finished[0]])
    try:
        for reference, position in positions.items():
            results[position] = ray.get(reference)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None  # the task's own exception, not Ray's wrapper with its traceback
        raise
    return results


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
      workers: processes for ``"processes"`` (default: the CPU count), most tasks at once
        for ``"ray"`` (see :func:`run_tasks`).
      arguments: the packing arguments of :func:`~xbatch.packing.index.index_arguments`.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")
    arguments = index_arguments(**arguments)
    if callable(getattr(lengths, "lengths", None)):  # a Corpus
        lengths = lengths.lengths()
    lengths = document_lengths(lengths)
    ranges = shard_ranges(lengths.shape[0], shard_documents)
    tasks = [(lengths[a:b], a, arguments) for a, b in ranges]
    parts = run_tasks(_pack_range, tasks, engine=engine, workers=None if engine == "serial" else workers)
    return merge_indexes(parts, corpus=corpus_identity(lengths))
