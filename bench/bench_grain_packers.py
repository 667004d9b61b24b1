"""xbatch's grain packers against grain's own, on the same stream, in one process.

asv runs the classes (``time_*`` / ``peakmem_*``); ``python bench/bench_grain_packers.py``
prints the packers' self time per item (pipeline minus the same pipeline without a
packer), grain/xbatch ratios and items/s at 8 vs 4,096 bins.

Stream (see ``_selftime.py``): 2,048-token rows, features ``inputs`` and ``targets``
whose lengths are drawn independently from a lognormal distribution (sigma 1) with the
given mean (90 or 600 tokens); int32 tokens, views into one shared token pool.
"""

from __future__ import annotations

import argparse
import statistics

import grain

try:  # asv imports this folder as a package; the script runs from inside it
    from ._selftime import MEAN_TOKENS, ROW_LENGTH, available_backends, consume, cpu_seconds, documents, kernel_backend, parent, self_times
except ImportError:
    from _selftime import MEAN_TOKENS, ROW_LENGTH, available_backends, consume, cpu_seconds, documents, kernel_backend, parent, self_times

from xbatch.packing import BestFitPackIterDataset, FirstFitPackIterDataset

NUM_BINS = 64
KEYS = ("inputs", "targets")
PACKERS = {
    "grain": grain.experimental.FirstFitPackIterDataset,
    "grain_best_fit": grain.experimental.BestFitPackIterDataset,
    "xbatch": FirstFitPackIterDataset,
    "xbatch_best_fit": BestFitPackIterDataset,
}


def pipeline(packer: str, mean_tokens: int, count: int, num_bins: int = NUM_BINS):
    """The parent over the documents, packed by ``packer`` ("none": not packed)."""
    if packer == "none":
        return parent(mean_tokens, count, KEYS)
    return PACKERS[packer](
        parent(mean_tokens, count, KEYS),
        length_struct={key: ROW_LENGTH for key in KEYS},
        num_packing_bins=num_bins,
        seed=0,
    )


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
        documents(mean_tokens, self.count, KEYS)  # built outside the timing

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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="documents per stream")
    parser.add_argument("--repeats", type=int, default=5, help="median of this many runs")
    parser.add_argument("--backends", default="cython,numpy", help="xbatch kernels to time")
    args = parser.parse_args(argv)
    backends = available_backends(args.backends)
    print(f"{ROW_LENGTH}-token rows, {NUM_BINS} bins, {args.count} documents, median of {args.repeats}")
    header = f"{'mean':>5} {'algorithm':>10} {'parent us/item':>15} {'grain self':>11} "
    print(header + "".join(f"{'xbatch ' + b:>15} {'ratio':>7}" for b in backends))
    for mean_tokens in MEAN_TOKENS:
        documents(mean_tokens, args.count, KEYS)
        for suffix, algorithm in (("", "first_fit"), ("_best_fit", "best_fit")):
            def build(packer, m=mean_tokens, s=suffix):
                return pipeline(packer if packer == "none" else packer + s, m, args.count)

            us = self_times(build, "grain", "xbatch", backends, args.count, args.repeats)
            cells = "".join(f"{us[b]:15.2f} {us['grain'] / us[b]:6.1f}x" for b in backends)
            print(f"{mean_tokens:>5} {algorithm:>10} {us['none']:15.2f} {us['grain']:11.2f} {cells}")
    print("\nitems/s of the xbatch pipeline (first fit, default backend) by bin count:")
    count = 5 * args.count
    for mean_tokens in MEAN_TOKENS:
        documents(mean_tokens, count, KEYS)
        rates = {
            bins: count / statistics.median(
                cpu_seconds(pipeline("xbatch", mean_tokens, count, bins)) for _ in range(args.repeats)
            )
            for bins in (8, 4096)
        }
        print(
            f"  mean {mean_tokens}: 8 bins {rates[8]:,.0f}/s, 4096 bins {rates[4096]:,.0f}/s "
            f"(4096/8 = {rates[4096] / rates[8]:.2f})"
        )


if __name__ == "__main__":
    main()
