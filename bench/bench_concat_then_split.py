"""xbatch's ConcatThenSplitIterDataset against grain's, on the same stream, in one process.

asv runs the class (``time_*`` / ``peakmem_*``); ``python bench/bench_concat_then_split.py``
prints the packers' self time per document (pipeline minus the same pipeline without a
packer, CPU seconds, median of the repeats) and grain/xbatch ratios.

Streams: 2,048-token rows; documents with lognormal lengths (sigma 1) of mean 90 or 600
tokens, clipped to 1..2,048, int32 tokens that are views into one shared token pool.
Layouts: ``tokens`` (one feature, the pretraining case) and ``inputs+targets`` (two
features of independent lengths: rows end when either is full). The parent reads without
prefetch threads, whose hand-off would cost more than the packers themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time

import grain
import numpy as np

from xbatch import _backend, _kernels_numpy
from xbatch.packing import ConcatThenSplitIterDataset

ROW_LENGTH = 2048
MEAN_TOKENS = (90, 600)
LAYOUTS = {"tokens": ("tokens",), "inputs+targets": ("inputs", "targets")}
PACKERS = {"grain": grain.experimental.ConcatThenSplitIterDataset, "xbatch": ConcatThenSplitIterDataset}
NO_PREFETCH = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


@functools.cache
def documents(mean_tokens: int, count: int, layout: str, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` documents with the layout's features, lognormal lengths."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 50_000, 1 << 20, dtype=np.int32)
    keys = LAYOUTS[layout]
    sigma = 1.0
    mu = np.log(mean_tokens) - sigma**2 / 2  # the lognormal's mean is exp(mu + sigma^2/2)
    lengths = np.clip(np.rint(rng.lognormal(mu, sigma, (count, len(keys)))), 1, ROW_LENGTH).astype(int)
    starts = rng.integers(0, len(pool) - ROW_LENGTH, (count, len(keys)))
    return [
        {key: pool[s : s + n] for key, s, n in zip(keys, row_starts, row_lengths)}
        for row_starts, row_lengths in zip(starts.tolist(), lengths.tolist())
    ]


def pipeline(packer: str, mean_tokens: int, count: int, layout: str = "tokens"):
    """The parent over the documents, packed by ``packer`` ("none": not packed)."""
    parent = grain.MapDataset.source(documents(mean_tokens, count, layout)).to_iter_dataset(NO_PREFETCH)
    if packer == "none":
        return parent
    return PACKERS[packer](parent, length_struct={key: ROW_LENGTH for key in LAYOUTS[layout]})


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


class ConcatThenSplit:
    """The whole pipeline per packer; self time = this minus packer="none"."""

    params = (["none", "grain", "xbatch"], list(MEAN_TOKENS), list(LAYOUTS), ["cython", "numpy"])
    param_names = ["packer", "mean_tokens", "layout", "backend"]
    number = 1
    repeat = 5
    timeout = 300
    count = 20_000

    def setup(self, packer, mean_tokens, layout, backend):
        if backend == "numpy" and packer != "xbatch":
            raise NotImplementedError("only xbatch has backends")
        self._backend = kernel_backend(backend)
        self._backend.__enter__()
        self.dataset = pipeline(packer, mean_tokens, self.count, layout)
        documents(mean_tokens, self.count, layout)  # built outside the timing

    def teardown(self, packer, mean_tokens, layout, backend):
        self._backend.__exit__(None, None, None)

    def time_pipeline(self, packer, mean_tokens, layout, backend):
        consume(self.dataset)

    def peakmem_pipeline(self, packer, mean_tokens, layout, backend):
        consume(self.dataset)


def _seconds(dataset) -> float:
    """CPU seconds to consume ``dataset``: the pipeline is single-threaded, and CPU time
    does not count the time other processes on shared cores take from it."""
    start = time.process_time()
    consume(dataset)
    return time.process_time() - start


def self_times(mean_tokens: int, count: int, repeats: int, layout: str, backends: list[str]):
    """Median per-document self time (us) of grain and of xbatch on each backend.

    Each repeat times the unpacked pipeline and every packer back to back and subtracts,
    so that drifts in machine speed (shared cores) cancel.
    """
    samples: dict[str, list[float]] = {}
    for _ in range(repeats):
        base = _seconds(pipeline("none", mean_tokens, count, layout))
        samples.setdefault("grain", []).append(_seconds(pipeline("grain", mean_tokens, count, layout)) - base)
        for backend in backends:
            with kernel_backend(backend):
                elapsed = _seconds(pipeline("xbatch", mean_tokens, count, layout))
            samples.setdefault(backend, []).append(elapsed - base)
        samples.setdefault("none", []).append(base)
    return {name: statistics.median(values) / count * 1e6 for name, values in samples.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="documents per stream")
    parser.add_argument("--repeats", type=int, default=5, help="median of this many runs")
    parser.add_argument("--backends", default="cython,numpy", help="xbatch kernels to time")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="feature layouts to time")
    args = parser.parse_args(argv)
    backends = []
    for backend in args.backends.split(","):
        try:
            with kernel_backend(backend):
                backends.append(backend)
        except NotImplementedError as exc:
            print(f"{backend}: skipped, {exc}")
    print(f"{ROW_LENGTH}-token rows, {args.count} documents, median of {args.repeats}, us per document")
    header = f"{'mean':>5} {'layout':>15} {'parent':>8} {'grain self':>11} "
    print(header + "".join(f"{'xbatch ' + b:>15} {'ratio':>7}" for b in backends))
    for layout in args.layouts.split(","):
        for mean_tokens in MEAN_TOKENS:
            documents(mean_tokens, args.count, layout)
            us = self_times(mean_tokens, args.count, args.repeats, layout, backends)
            cells = "".join(f"{us[b]:15.2f} {us['grain'] / us[b]:6.1f}x" for b in backends)
            print(f"{mean_tokens:>5} {layout:>15} {us['none']:8.2f} {us['grain']:11.2f} {cells}")


if __name__ == "__main__":
    main()
