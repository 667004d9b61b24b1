"""xbatch's grain packers against grain's own, on the same stream, in one process.

asv runs the classes (``time_*`` / ``peakmem_*``); ``python bench/bench_grain_packers.py``
prints the packers' self time per item (pipeline minus the same pipeline without a
packer), grain/xbatch ratios and items/s at 8 vs 4,096 bins.

Stream: 2,048-token rows, features ``inputs`` and ``targets`` whose lengths are drawn
independently from a lognormal distribution (sigma 1) with the given mean (90 or 600
tokens), clipped to 1..2048; int32 tokens, views into one shared token pool so that the
stream costs little memory. The parent reads without prefetch threads, whose hand-off
would cost more than the packers themselves.
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
from xbatch.packing import BestFitPackIterDataset, FirstFitPackIterDataset

ROW_LENGTH = 2048
NUM_BINS = 64
MEAN_TOKENS = (90, 600)
PACKERS = {
    "grain": grain.experimental.FirstFitPackIterDataset,
    "grain_best_fit": grain.experimental.BestFitPackIterDataset,
    "xbatch": FirstFitPackIterDataset,
    "xbatch_best_fit": BestFitPackIterDataset,
}
NO_PREFETCH = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


@functools.cache
def documents(mean_tokens: int, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` documents {"inputs", "targets"} of int32 tokens, lognormal lengths."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 50_000, 1 << 20, dtype=np.int32)
    sigma = 1.0
    mu = np.log(mean_tokens) - sigma**2 / 2  # the lognormal's mean is exp(mu + sigma^2/2)
    lengths = np.clip(np.rint(rng.lognormal(mu, sigma, (count, 2))), 1, ROW_LENGTH).astype(int)
    starts = rng.integers(0, len(pool) - ROW_LENGTH, (count, 2))
    return [
        {"inputs": pool[s0 : s0 + n0], "targets": pool[s1 : s1 + n1]}
        for (s0, s1), (n0, n1) in zip(starts.tolist(), lengths.tolist())
    ]


def pipeline(packer: str, mean_tokens: int, count: int, num_bins: int = NUM_BINS):
    """The parent over the documents, packed by ``packer`` ("none": not packed)."""
    parent = grain.MapDataset.source(documents(mean_tokens, count)).to_iter_dataset(NO_PREFETCH)
    if packer == "none":
        return parent
    return PACKERS[packer](
        parent,
        length_struct={"inputs": ROW_LENGTH, "targets": ROW_LENGTH},
        num_packing_bins=num_bins,
        seed=0,
    )


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


class GrainPackers:
    """The whole pipeline per packer; self time = this minus packer="none"."""

    params = (
        ["none", "grain", "xbatch", "grain_best_fit", "xbatch_best_fit"],
        list(MEAN_TOKENS),
        ["cython", "numpy"],
    )
    param_names = ["packer", "mean_tokens", "backend"]
    number = 1
    repeat = 5
    timeout = 300
    count = 20_000

    def setup(self, packer, mean_tokens, backend):
        if backend == "numpy" and not packer.startswith("xbatch"):
            raise NotImplementedError("only xbatch has backends")
        self._backend = kernel_backend(backend)
        self._backend.__enter__()
        self.dataset = pipeline(packer, mean_tokens, self.count)
        documents(mean_tokens, self.count)  # built outside the timing

    def teardown(self, packer, mean_tokens, backend):
        self._backend.__exit__(None, None, None)

    def time_pipeline(self, packer, mean_tokens, backend):
        consume(self.dataset)

    def peakmem_pipeline(self, packer, mean_tokens, backend):
        consume(self.dataset)


class XbatchBinCount:
    """Items/s of the xbatch pipeline at few and many bins: placement is O(log bins)."""

    params = ([8, 4096], list(MEAN_TOKENS))
    param_names = ["num_bins", "mean_tokens"]
    number = 1
    repeat = 5
    count = 100_000

    def setup(self, num_bins, mean_tokens):
        self.dataset = pipeline("xbatch", mean_tokens, self.count, num_bins)

    def time_pipeline(self, num_bins, mean_tokens):
        consume(self.dataset)


def _seconds(dataset) -> float:
    """CPU seconds to consume ``dataset``: the pipeline is single-threaded, and CPU time
    does not count the time other processes on shared cores take from it."""
    start = time.process_time()
    consume(dataset)
    return time.process_time() - start


def self_times(mean_tokens: int, count: int, repeats: int, suffix: str, backends: list[str]):
    """Median per-item self time (us) of grain and of xbatch on each backend.

    Each repeat times the unpacked pipeline and every packer back to back and
    subtracts, so that drifts in machine speed (shared cores) cancel.
    """
    samples: dict[str, list[float]] = {}
    for _ in range(repeats):
        base = _seconds(pipeline("none", mean_tokens, count))
        samples.setdefault("grain", []).append(_seconds(pipeline("grain" + suffix, mean_tokens, count)) - base)
        for backend in backends:
            with kernel_backend(backend):
                elapsed = _seconds(pipeline("xbatch" + suffix, mean_tokens, count))
            samples.setdefault(backend, []).append(elapsed - base)
        samples.setdefault("none", []).append(base)
    return {name: statistics.median(values) / count * 1e6 for name, values in samples.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="documents per stream")
    parser.add_argument("--repeats", type=int, default=5, help="median of this many runs")
    parser.add_argument("--backends", default="cython,numpy", help="xbatch kernels to time")
    args = parser.parse_args(argv)
    backends = []
    for backend in args.backends.split(","):
        try:
            with kernel_backend(backend):
                backends.append(backend)
        except NotImplementedError as exc:
            print(f"{backend}: skipped, {exc}")
    print(f"{ROW_LENGTH}-token rows, {NUM_BINS} bins, {args.count} documents, median of {args.repeats}")
    header = f"{'mean':>5} {'algorithm':>10} {'parent us/item':>15} {'grain self':>11} "
    print(header + "".join(f"{'xbatch ' + b:>15} {'ratio':>7}" for b in backends))
    for mean_tokens in MEAN_TOKENS:
        documents(mean_tokens, args.count)
        for suffix, algorithm in (("", "first_fit"), ("_best_fit", "best_fit")):
            us = self_times(mean_tokens, args.count, args.repeats, suffix, backends)
            cells = "".join(f"{us[b]:15.2f} {us['grain'] / us[b]:6.1f}x" for b in backends)
            print(f"{mean_tokens:>5} {algorithm:>10} {us['none']:15.2f} {us['grain']:11.2f} {cells}")
    print("\nitems/s of the xbatch pipeline (first fit, default backend) by bin count:")
    count = 5 * args.count
    for mean_tokens in MEAN_TOKENS:
        documents(mean_tokens, count)
        rates = {
            bins: count / statistics.median(
                _seconds(pipeline("xbatch", mean_tokens, count, bins)) for _ in range(args.repeats)
            )
            for bins in (8, 4096)
        }
        print(
            f"  mean {mean_tokens}: 8 bins {rates[8]:,.0f}/s, 4096 bins {rates[4096]:,.0f}/s "
            f"(4096/8 = {rates[4096] / rates[8]:.2f})"
        )


if __name__ == "__main__":
    main()
