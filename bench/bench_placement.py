"""Placement throughput: items/s of first-fit placement by bin count and implementation.

asv runs the ``Placement`` class; ``python bench/bench_placement.py`` prints the same
cases side by side in one process, with grain's ``FirstFitPackIterDataset`` on the same
items as the reference. Items are single-feature documents with lognormal lengths (mean
about 90 tokens) into 2,048-token bins.

grain's figure is its whole packer (placement plus copying tokens into rows); ours is
placement alone, so the ratio says how much of grain's per-item cost placement removes,
not a like-for-like packer comparison (see ``bench_grain_packers.py`` for that).
"""

from __future__ import annotations

import sys

import numpy as np

from xbatch import _backend, _kernels_numpy
from xbatch.compare import median_seconds

BIN_COUNTS = (8, 64, 512, 4096)
ROW_LENGTH = 2048
IMPLEMENTATIONS = ("cython", "numpy", "grain")
# Fewer items for the slow implementations keep one case under a second or so.
NUM_ITEMS = {"cython": 200_000, "numpy": 4_000, "grain": 4_000}


def make_lengths(num_items: int, seed: int = 0) -> np.ndarray:
    """int64[num_items, 1] document lengths (tokens), lognormal with mean about 90."""
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(mean=4.0, sigma=1.0, size=num_items)
    return np.clip(lengths, 1, ROW_LENGTH).astype(np.int64).reshape(-1, 1)


def place_all(module, lengths: np.ndarray, num_bins: int) -> None:
    """Places every item window by window (grain's semantics), resetting between windows."""
    packer = module.BinPacker(
        np.array([ROW_LENGTH]), np.array([1]), num_bins, 0, False
    )
    out = np.empty(len(lengths), dtype=np.int64)
    done = 0
    while done < len(lengths):
        done += packer.place(lengths[done:], out[done:])
        packer.reset()


def grain_pack_all(items: list, num_bins: int) -> None:
    import grain

    parent = grain.MapDataset.source(items).to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    )
    packed = grain.experimental.FirstFitPackIterDataset(
        parent,
        length_struct={"inputs": ROW_LENGTH},
        num_packing_bins=num_bins,
        shuffle_bins=False,
    )
    for _ in packed:
        pass


class Placement:
    """asv: first-fit placement of lognormal documents into 2,048-token bins."""

    params = (list(BIN_COUNTS), list(IMPLEMENTATIONS))
    param_names = ["num_bins", "implementation"]

    def setup(self, num_bins: int, implementation: str) -> None:
        self.lengths = make_lengths(NUM_ITEMS[implementation])
        if implementation == "cython":
            self.module = _backend.compiled_module()
            if self.module is None:
                raise NotImplementedError("the compiled extension is not built")
        elif implementation == "numpy":
            self.module = _kernels_numpy
        else:
            try:
                import grain  # noqa: F401
            except ImportError as exc:
                raise NotImplementedError("grain is not installed") from exc
            self.items = [{"inputs": np.zeros(n, dtype=np.int32)} for n in self.lengths[:, 0]]

    def time_place(self, num_bins: int, implementation: str) -> None:
        if implementation == "grain":
            grain_pack_all(self.items, num_bins)
        else:
            place_all(self.module, self.lengths, num_bins)

    def peakmem_place(self, num_bins: int, implementation: str) -> None:
        self.time_place(num_bins, implementation)


def items_per_second(case: Placement, num_bins: int, implementation: str, repeats: int) -> float:
    case.setup(num_bins, implementation)
    seconds = median_seconds(lambda: case.time_place(num_bins, implementation), repeats)
    return NUM_ITEMS[implementation] / seconds


def main(repeats: int = 5) -> None:
    """Prints items/s per bin count and implementation (median of ``repeats`` runs)."""
    case = Placement()
    rates: dict[tuple[int, str], float] = {}
    for implementation in IMPLEMENTATIONS:
        for num_bins in BIN_COUNTS:
            try:
                rates[num_bins, implementation] = items_per_second(case, num_bins, implementation, repeats)
            except NotImplementedError as exc:
                print(f"skipped {implementation}: {exc}", file=sys.stderr)
                break
    print(f"first-fit placement, {ROW_LENGTH}-token bins, items/s (median of {repeats})")
    header = f"{'bins':>6} " + " ".join(f"{name:>14}" for name in IMPLEMENTATIONS)
    print(header + f" {'cython/grain':>13} {'numpy/grain':>12}")
    for num_bins in BIN_COUNTS:
        cells = [rates.get((num_bins, name)) for name in IMPLEMENTATIONS]
        text = " ".join(f"{c:>14,.0f}" if c else f"{'-':>14}" for c in cells)
        grain_rate = rates.get((num_bins, "grain"))
        ratios = [
            f"{rates[num_bins, name] / grain_rate:>{w}.1f}x"
            if grain_rate and (num_bins, name) in rates
            else f"{'-':>{w + 1}}"
            for name, w in (("cython", 12), ("numpy", 11))
        ]
        print(f"{num_bins:>6} {text} {' '.join(ratios)}")
    if (8, "cython") in rates and (4096, "cython") in rates:
        print(f"cython 4096 bins / 8 bins: {rates[4096, 'cython'] / rates[8, 'cython']:.2f}")


if __name__ == "__main__":
    main()
