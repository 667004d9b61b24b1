"""What the packer self-time benchmarks share (``bench_grain_packers.py``,
``bench_concat_then_split.py``): the document stream, CPU time of a pipeline, kernel
backend switching, and self time = pipeline minus the same pipeline without the packer.

Stream: documents with one array per feature, lengths drawn independently from a
lognormal distribution (sigma 1) of the given mean, clipped to 1..``ROW_LENGTH``; int32
tokens that are views into one shared token pool, so the stream costs little memory. The
parent reads without prefetch threads, whose hand-off would cost more than the packers.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable, Sequence

import grain
import numpy as np

from xbatch import _backend, _kernels_numpy

ROW_LENGTH = 2048
MEAN_TOKENS = (90, 600)
NO_PREFETCH = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


@functools.cache
def documents(mean_tokens: int, count: int, keys: tuple[str, ...], seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` documents {key: int32 tokens} with lognormal lengths of mean ``mean_tokens``."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 50_000, 1 << 20, dtype=np.int32)
    sigma = 1.0
    mu = np.log(mean_tokens) - sigma**2 / 2  # the lognormal's mean is exp(mu + sigma^2/2)
    lengths = np.clip(np.rint(rng.lognormal(mu, sigma, (count, len(keys)))), 1, ROW_LENGTH).astype(int)
    starts = rng.integers(0, len(pool) - ROW_LENGTH, (count, len(keys)))
    return [
        {key: pool[s : s + n] for key, s, n in zip(keys, row_starts, row_lengths)}
        for row_starts, row_lengths in zip(starts.tolist(), lengths.tolist())
    ]


def parent(mean_tokens: int, count: int, keys: tuple[str, ...]) -> grain.IterDataset:
    """The unpacked pipeline: the documents as a grain IterDataset without prefetch."""
    return grain.MapDataset.source(documents(mean_tokens, count, keys)).to_iter_dataset(NO_PREFETCH)


def consume(dataset) -> int:
    count = 0
    for _ in dataset:
        count += 1
    return count


@contextlib.contextmanager
def kernel_backend(name: str):
    """Runs xbatch on the ``"cython"`` or ``"numpy"`` kernels (NotImplementedError: not built)."""
    module = _kernels_numpy if name == "numpy" else _backend.compiled_module()
    if module is None:
        raise NotImplementedError("the compiled extension is not built")
    saved = _backend.impl
    _backend.impl = module
    try:
        yield
    finally:
        _backend.impl = saved


def available_backends(names: str) -> list[str]:
    """The comma-separated backends that can run here (a line for each one skipped)."""
    backends = []
    for backend in names.split(","):
        try:
            with kernel_backend(backend):
                backends.append(backend)
        except NotImplementedError as exc:
            print(f"{backend}: skipped, {exc}")
    return backends


def cpu_seconds(dataset) -> float:
    """CPU seconds to consume ``dataset``: the pipeline is single-threaded, and CPU time
    does not count the time other processes on shared cores take from it."""
    start = time.process_time()
    consume(dataset)
    return time.process_time() - start


def self_times(
    pipeline: Callable[[str], grain.IterDataset],
    reference: str,
    xbatch: str,
    backends: Sequence[str],
    count: int,
    repeats: int,
) -> dict[str, float]:
    """Median self time per document (us): ``{"none": the parent's own time, "grain":
    ``reference``'s self time, backend: ``xbatch``'s self time on that backend}``.

    ``pipeline(name)`` builds a fresh pipeline of ``count`` documents packed by packer
    ``name`` (``"none"``: not packed). Each repeat times the unpacked pipeline and every
    packer back to back and subtracts, so that drifts in machine speed (shared cores)
    cancel.
    """
    samples: dict[str, list[float]] = {}
    for _ in range(repeats):
        base = cpu_seconds(pipeline("none"))
        samples.setdefault("grain", []).append(cpu_seconds(pipeline(reference)) - base)
        for backend in backends:
            with kernel_backend(backend):
                elapsed = cpu_seconds(pipeline(xbatch))
            samples.setdefault(backend, []).append(elapsed - base)
        samples.setdefault("none", []).append(base)
    return {name: statistics.median(values) / count * 1e6 for name, values in samples.items()}
