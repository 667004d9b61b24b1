"""Fill ratio against bins for every packing algorithm, rolling best fit's costs and speed.

``python bench/bench_rolling.py`` prints, for lognormal document lengths (sigma 1,
means 90, 420 and 600 tokens, 40,000 documents) and for the lengths of two real corpora
(``bench/data/real_lengths.npz``, made by ``bench/real_corpus.py``: English man pages and
the Python standard library, byte-level BPE tokens), 2,048-token rows:

- the fill ratio of each algorithm against the number of bins (grain's first-fit and
  best-fit windows, rolling best fit, and the bin-free concat-then-split and offline
  best-fit-decreasing), and writes the plot ``docs/_static/fill_vs_bins.png``
  (``--plot PATH`` to write it elsewhere, ``--no-plot`` to skip it);
- what rolling best fit's checkpoint points cost in fill at 8 bins;
- rolling best fit's placement time per piece at 8 to 4,096 bins (the kernel alone:
  push + rows out, median of 7 of CPU time) next to grain-rule first-fit placement
  (``--only-speed`` prints only these; ``--only-streaming``: documents/s through
  ``LLMPackIterDataset``, rolling best fit against first fit).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import sys
import time

import numpy as np

from xbatch import kernels
from xbatch.packing import pack_documents
from xbatch.packing.rolling import RollingOptions, pack_rolling

SEQ_LEN = 2048
NUM_DOCUMENTS = 40_000
MEANS = (90, 420, 600)
BINS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
WINDOWED = ("first_fit", "best_fit", "rolling_best_fit")
BIN_FREE = ("concat_then_split", "best_fit_decreasing")
PLOT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "_static" / "fill_vs_bins.png"
# Token counts of real documents (bench/real_corpus.py says what they are and makes them).
REAL_LENGTHS = pathlib.Path(__file__).resolve().parent / "data" / "real_lengths.npz"
REAL_NAMES = {"manpages": "English man pages", "python_docstrings": "Python 3.11 stdlib docstrings"}


def lognormal_corpus(mean: float, count: int = NUM_DOCUMENTS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(int32 tokens, int64 lengths) with lognormal lengths of the given mean (sigma 1)."""
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(np.log(mean) - 0.5, 1.0, count).astype(np.int64)
    return np.ones(int(lengths.sum()), np.int32), lengths


def real_corpus(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(int32 tokens, int64 lengths) with the lengths of a real corpus (token values do
    not change placement)."""
    with np.load(REAL_LENGTHS) as corpora:
        lengths = corpora[name].astype(np.int64)
    return np.ones(int(lengths.sum()), np.int32), lengths


def fill(tokens, lengths, algorithm, bins=None) -> float:
    _, stats = pack_documents(tokens, lengths, seq_len=SEQ_LEN, eod_token_id=1, algorithm=algorithm,
                              num_packing_bins=bins, return_stats=True)
    return stats.fill_ratio


def fill_table(mean: float | str) -> dict[str, list[float]]:
    """Fill by algorithm and bins, for lognormal lengths of ``mean`` or a real corpus's
    lengths (``mean`` its name in ``REAL_LENGTHS``)."""
    tokens, lengths = real_corpus(mean) if isinstance(mean, str) else lognormal_corpus(mean)
    table = {algorithm: [fill(tokens, lengths, algorithm, b) for b in BINS] for algorithm in WINDOWED}
    table.update({algorithm: [fill(tokens, lengths, algorithm)] * len(BINS) for algorithm in BIN_FREE})
    return table


def checkpoint_costs(mean: float | str, num_bins: int = 8) -> list[tuple[str, float]]:
    """Fill at ``num_bins`` for checkpoint intervals from 256 pieces to none at all."""
    tokens, lengths = real_corpus(mean) if isinstance(mean, str) else lognormal_corpus(mean)
    default = RollingOptions.for_bins(num_bins)
    rows = []
    for every in (256, 1024, default.checkpoint_every, 10**12):
        options = dataclasses.replace(default, checkpoint_every=every)
        _, stats = pack_rolling(tokens, lengths, seq_len=SEQ_LEN, eod_token_id=1, pad_token_id=0,
                                num_bins=num_bins, long_documents="split", shift="inputs", options=options)
        rows.append(("never" if every == 10**12 else f"{every:,}", stats.fill_ratio))
    return rows


def placement_speed(bin_counts=(8, 64, 512, 4096), num_pieces: int = 400_000,
                    repeats: int = 7) -> list[tuple[int, float, float, float]]:
    """(bins, rolling ns/piece, rolling drain ns/piece, grain-rule first-fit ns/piece) on
    the active backend: medians of ``repeats`` rounds of process CPU time (the machine
    may be shared; wall time would count other processes' turns), the cases interleaved
    in each round so that a busy spell hits all of them.

    Rolling: a new packer, every piece pushed, the rows taken out (placement). Its drain
    (best-fit-decreasing of what is held at the end, once per checkpoint interval) is
    timed apart and spread over the default interval, ``1024 * bins`` pieces. First fit:
    :class:`xbatch.kernels.BinPacker` placing every piece with grain's window rule.
    """
    rng = np.random.default_rng(1)
    lengths = np.clip(rng.lognormal(np.log(420) - 0.5, 1.0, num_pieces).astype(np.int64) + 1, 1, SEQ_LEN)
    column = lengths.reshape(-1, 1)
    times = {(num_bins, case): [] for num_bins in bin_counts for case in ("rolling", "drain", "first_fit")}
    for round_index in range(repeats + 1):  # round 0 is a warm-up
        for num_bins in bin_counts:
            options = RollingOptions.for_bins(num_bins)
            start = time.process_time()
            packer = options.packer(SEQ_LEN, num_bins)
            packer.push(lengths)
            packer.take_rows()
            middle = time.process_time()
            packer.drain()
            packer.take_rows()
            end = time.process_time()
            first_fit = kernels.BinPacker(SEQ_LEN, num_bins=num_bins)
            out, placed = np.empty(num_pieces, np.int64), 0
            while placed < num_pieces:
                placed += first_fit.place(column[placed:], out[placed:])
                first_fit.reset()
            if round_index:
                times[num_bins, "rolling"].append((middle - start) / num_pieces)
                times[num_bins, "drain"].append((end - middle) / options.checkpoint_every)
                times[num_bins, "first_fit"].append((time.process_time() - end) / num_pieces)
    return [(num_bins, *(statistics.median(times[num_bins, case]) * 1e9 for case in ("rolling", "drain", "first_fit")))
            for num_bins in bin_counts]


def describe(mean: float | str) -> str:
    if isinstance(mean, str):
        lengths = real_corpus(mean)[1]
        return f"{REAL_NAMES[mean]} ({lengths.shape[0]:,} documents, mean {lengths.mean():.0f} tokens)"
    return f"lognormal lengths, mean {mean} tokens ({NUM_DOCUMENTS:,} documents)"


def plot(tables: dict[float | str, dict[str, list[float]]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"first_fit": ("C0", "o", "-"), "best_fit": ("C1", "s", "-"), "rolling_best_fit": ("C2", "D", "-"),
              "concat_then_split": ("C3", None, ":"), "best_fit_decreasing": ("k", None, "--")}
    columns = min(3, len(tables))
    rows = -(-len(tables) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.6 * rows), sharey=True, squeeze=False)
    axes = axes.reshape(-1)
    for axis in axes[len(tables):]:
        axis.set_visible(False)
    for axis, (mean, table) in zip(axes, tables.items()):
        for algorithm, values in table.items():
            color, marker, line = styles[algorithm]
            axis.plot(BINS, [100 * v for v in values], color=color, marker=marker, linestyle=line, markersize=4,
                      label=algorithm + (" (no bins)" if algorithm in BIN_FREE else ""))
        axis.set_xscale("log", base=2)
        axis.set_title(describe(mean).replace(" (", "\n("), fontsize=9)
        axis.set_xlabel("bins (num_packing_bins)")
        axis.set_ylim(85, 100.2)
        axis.grid(True, alpha=0.3)
    for row in range(rows):
        axes[row * columns].set_ylabel("fill ratio (%)")
    axes[0].legend(loc="lower right", fontsize=8)
    figure.suptitle(f"Fill ratio against bins ({SEQ_LEN:,}-token rows)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp.png")
    figure.savefig(temporary, dpi=110)
    temporary.replace(path)  # written atomically: a committed image is never half a file


def streaming_speed(num_documents: int = 20_000, repeats: int = 3) -> dict[str, float]:
    """Documents per second of CPU time through :class:`LLMPackIterDataset`, one document
    per element from an in-memory grain source (lognormal lengths of mean 600, 8 bins,
    every row consumed), for ``first_fit`` and ``rolling_best_fit``; medians of
    ``repeats`` rounds, the algorithms alternating."""
    import grain

    from xbatch.packing import LLMPackIterDataset

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(600) - 0.5, 1.0, num_documents).astype(np.int64), 1, None)
    documents = [rng.integers(0, 32000, n).astype(np.int32) for n in lengths]
    times = {"first_fit": [], "rolling_best_fit": []}
    for _ in range(repeats):
        for algorithm in times:
            source = grain.MapDataset.source(documents).to_iter_dataset(
                grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
            dataset = LLMPackIterDataset(source, seq_len=SEQ_LEN, num_packing_bins=8, eod_token_id=1,
                                         algorithm=algorithm)
            start = time.process_time()
            for _ in dataset:
                pass
            times[algorithm].append(time.process_time() - start)
    return {algorithm: num_documents / statistics.median(values) for algorithm, values in times.items()}


def print_placement_speed() -> None:
    print("placement, ns of CPU time per piece (median of 7; rolling: push + rows out, its drain spread over "
          "the default checkpoint interval; first fit: grain's window rule)")
    speeds = placement_speed()
    for num_bins, rolling_ns, drain_ns, first_fit_ns in speeds:
        print(f"  {num_bins:>5} bins  rolling_best_fit {rolling_ns:6.1f} (+ drain {drain_ns:4.1f})  "
              f"first_fit {first_fit_ns:6.1f}  rolling/first_fit {rolling_ns / first_fit_ns:4.2f}x  "
              f"speed vs 8 bins {speeds[0][1] / rolling_ns:4.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", type=pathlib.Path, default=PLOT)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--only-speed", action="store_true", help="only the placement times")
    parser.add_argument("--only-streaming", action="store_true", help="only the streaming documents/s")
    args = parser.parse_args(argv)
    if args.only_speed:
        print_placement_speed()
        return 0
    if args.only_streaming:
        rates = streaming_speed()
        print("streaming, one document per element, 8 bins, documents per CPU second (median of 3): "
              + ", ".join(f"{algorithm} {rate / 1e3:.1f}k" for algorithm, rate in rates.items()))
        return 0
    tables = {}
    real = list(REAL_NAMES) if REAL_LENGTHS.exists() else []
    for mean in [*MEANS, *real]:
        tables[mean] = table = fill_table(mean)
        print(f"fill ratio (%), {describe(mean)}, {SEQ_LEN}-token rows")
        print("  bins  " + "".join(f"{name:>21}" for name in table))
        for i, bins in enumerate(BINS):
            print(f"  {bins:>4}  " + "".join(f"{100 * values[i]:>21.2f}" for values in table.values()))
    for mean in [*MEANS, *real]:
        print(f"rolling_best_fit at 8 bins, {describe(mean)}: fill (%) by checkpoint interval (pieces)")
        for every, value in checkpoint_costs(mean):
            print(f"  {every:>16}  {100 * value:.2f}")
    print_placement_speed()
    if not args.no_plot:
        plot(tables, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
