"""xbatch's ConcatThenSplitIterDataset against grain's, on the same stream, in one process.

asv runs the class (``time_*`` / ``peakmem_*``); ``python bench/bench_concat_then_split.py``
prints the packers' self time per document (pipeline minus the same pipeline without a
packer, CPU seconds, median of the repeats) and grain/xbatch ratios.

Streams (see ``_selftime.py``): 2,048-token rows; documents with lognormal lengths (sigma
1) of mean 90 or 600 tokens, int32 tokens that are views into one shared token pool.
Layouts: ``tokens`` (one feature, the pretraining case) and ``inputs+targets`` (two
features of independent lengths: rows end when either is full).
"""

from __future__ import annotations

import argparse

import grain

try:  # asv imports this folder as a package; the script runs from inside it
    from ._selftime import MEAN_TOKENS, ROW_LENGTH, available_backends, consume, documents, kernel_backend, parent, self_times
except ImportError:
    from _selftime import MEAN_TOKENS, ROW_LENGTH, available_backends, consume, documents, kernel_backend, parent, self_times

from xbatch.packing import ConcatThenSplitIterDataset

LAYOUTS = {"tokens": ("tokens",), "inputs+targets": ("inputs", "targets")}
PACKERS = {"grain": grain.experimental.ConcatThenSplitIterDataset, "xbatch": ConcatThenSplitIterDataset}


def pipeline(packer: str, mean_tokens: int, count: int, layout: str = "tokens"):
    """The parent over the documents, packed by ``packer`` ("none": not packed)."""
    keys = LAYOUTS[layout]
    if packer == "none":
        return parent(mean_tokens, count, keys)
    return PACKERS[packer](parent(mean_tokens, count, keys), length_struct={key: ROW_LENGTH for key in keys})


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
        documents(mean_tokens, self.count, LAYOUTS[layout])  # built outside the timing

    def teardown(self, packer, mean_tokens, layout, backend):
        self._backend.__exit__(None, None, None)

    def time_pipeline(self, packer, mean_tokens, layout, backend):
        consume(self.dataset)

    def peakmem_pipeline(self, packer, mean_tokens, layout, backend):
        consume(self.dataset)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="documents per stream")
    parser.add_argument("--repeats", type=int, default=5, help="median of this many runs")
    parser.add_argument("--backends", default="cython,numpy", help="xbatch kernels to time")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="feature layouts to time")
    args = parser.parse_args(argv)
    backends = available_backends(args.backends)
    print(f"{ROW_LENGTH}-token rows, {args.count} documents, median of {args.repeats}, us per document")
    header = f"{'mean':>5} {'layout':>15} {'parent':>8} {'grain self':>11} "
    print(header + "".join(f"{'xbatch ' + b:>15} {'ratio':>7}" for b in backends))
    for layout in args.layouts.split(","):
        for mean_tokens in MEAN_TOKENS:
            documents(mean_tokens, args.count, LAYOUTS[layout])
            def build(packer, m=mean_tokens, layout=layout):
                return pipeline(packer, m, args.count, layout)

            us = self_times(build, "grain", "xbatch", backends, args.count, args.repeats)
            cells = "".join(f"{us[b]:15.2f} {us['grain'] / us[b]:6.1f}x" for b in backends)
            print(f"{mean_tokens:>5} {layout:>15} {us['none']:8.2f} {us['grain']:11.2f} {cells}")


if __name__ == "__main__":
    main()
