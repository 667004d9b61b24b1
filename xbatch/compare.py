"""xbatch's packers against grain's on the same documents: packer self times, as ratios.

Used by ``xbatch bench`` and ``bench/run.py``.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .corpus import (
    LONG_LOG_MEAN,
    SHORT_LOG_MEAN,
    SYNTHETIC_EOD,
    Corpus,
    synthetic_corpus,
)


def _in_process_read_options():
    import grain

    # grain's default prefetch thread adds ~160 us per element and would dominate.
    return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One benchmark case: packer self times in seconds for the same documents.

    Self time is the pipeline's time minus the time of iterating its parent alone, so
    that both sides are charged for packing only. The spreads are each side's timed runs'
    (slowest - fastest) / median: how far one run may be from the figure.
    """

    case: str
    documents: int
    grain_seconds: float
    xbatch_seconds: float
    grain_spread: float = 0.0
    xbatch_spread: float = 0.0

    @property
    def speedup(self) -> float:
        return self.grain_seconds / self.xbatch_seconds


def run_seconds(run: Callable[[], Any], repeats: int, min_seconds: float = 0.0) -> list[float]:
    """Wall times of at least ``repeats`` runs, and of more until they add up to
    ``min_seconds``, after one untimed run, which pays for first calls and first-touched
    memory that a long-running pipeline pays once."""
    run()
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_seconds:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(run: Callable[[], Any], repeats: int, min_seconds: float = 0.0) -> float:
    """Median of :func:`run_seconds`."""
    return statistics.median(run_seconds(run, repeats, min_seconds))


def spread(times: Sequence[float]) -> float:
    """(slowest - fastest) / median of ``times``."""
    return (max(times) - min(times)) / statistics.median(times)


def _drain(dataset) -> None:
    for _ in dataset:
        pass


def _eod_pieces(corpus: Corpus, seq_len: int, eod: int) -> list[np.ndarray]:
    """Each document with the EOD appended, split into ``seq_len``-token pieces: what a
    grain pipeline must feed grain's packer to get xbatch's ``long_documents="split"``."""
    pieces = []
    for document in np.split(corpus.tokens, np.cumsum(corpus.lengths)[:-1]):
        with_eod = np.append(document, np.int32(eod))
        pieces.extend(with_eod[start:start + seq_len] for start in range(0, with_eod.shape[0], seq_len))
    return pieces


def _grain_llm_row(eod: int) -> Callable[[dict], dict]:
    """The rename-and-shift map users chain after grain's packer to get the LLM layout."""

    def to_llm_row(row: dict) -> dict:
        targets = row["targets"]
        inputs = np.concatenate([np.array([eod], targets.dtype), targets[:-1]])
        return {
            "inputs": inputs,
            "targets": targets,
            "inputs_position": row["targets_positions"],
            "inputs_segmentation": row["targets_segment_ids"],
            "targets_position": row["targets_positions"],
            "targets_segmentation": row["targets_segment_ids"],
        }

    return to_llm_row


def compare_with_grain(corpus: Corpus, *, seq_len: int = 2048, num_bins: int = 64, repeats: int = 3,
                       min_seconds: float = 0.0,
                       on_result: Callable[[Comparison], Any] | None = None) -> list[Comparison]:
    """Times xbatch's packers (on the active backend) against grain's on ``corpus``.

    Every pipeline runs at least ``repeats`` times and until its runs add up to
    ``min_seconds``; each figure is a median. ``on_result`` gets each case as soon as it
    is measured (for progress).

    Cases: the drop-in ``FirstFitPackIterDataset`` on ``inputs`` + ``targets`` (documents
    truncated to a row, as grain requires); and the LLM layout from documents one per
    element, from ragged chunks of 1,000 documents, and in bulk, each against grain's
    packer followed by the rename-and-shift map. grain gets its EOD-terminated pieces
    precomputed, outside the timing.
    """
    import grain

    from .packing import FirstFitPackIterDataset, LLMPackIterDataset, pack_documents

    eod = SYNTHETIC_EOD
    options = _in_process_read_options()

    def source(items: Sequence[Any]):
        return grain.MapDataset.source(items).to_iter_dataset(options)

    def self_seconds(pipeline: Callable[[], Any], items: Sequence[Any]) -> tuple[float, float]:
        """(median self time, spread of the pipeline's runs)."""
        parent = median_seconds(lambda: _drain(source(items)), repeats, min_seconds)
        times = run_seconds(pipeline, repeats, min_seconds)
        return max(statistics.median(times) - parent, 1e-9), spread(times)

    results: list[Comparison] = []

    def record(case: str, grain_timing: tuple[float, float], xbatch_timing: tuple[float, float]) -> None:
        result = Comparison(case, n, grain_timing[0], xbatch_timing[0], grain_timing[1], xbatch_timing[1])
        results.append(result)
        if on_result is not None:
            on_result(result)

    documents = np.split(corpus.tokens, np.cumsum(corpus.lengths)[:-1])
    n = corpus.num_documents
    pairs = [{"inputs": d[:seq_len], "targets": d[:seq_len]} for d in documents]
    length_struct = {"inputs": seq_len, "targets": seq_len}
    record(
        "drop-in FirstFitPackIterDataset, 2 features",
        self_seconds(lambda: _drain(grain.experimental.FirstFitPackIterDataset(
            source(pairs), length_struct=length_struct, num_packing_bins=num_bins)), pairs),
        self_seconds(lambda: _drain(FirstFitPackIterDataset(
            source(pairs), length_struct=length_struct, num_packing_bins=num_bins)), pairs),
    )
    pieces = [{"targets": piece} for piece in _eod_pieces(corpus, seq_len, eod)]
    grain_llm = self_seconds(lambda: _drain(grain.experimental.FirstFitPackIterDataset(
        source(pieces), length_struct={"targets": seq_len}, num_packing_bins=num_bins, shuffle_bins=False,
    ).map(_grain_llm_row(eod))), pieces)
    llm_options = {"seq_len": seq_len, "num_packing_bins": num_bins, "eod_token_id": eod}
    offsets = np.concatenate([[0], np.cumsum(corpus.lengths)])
    chunks = [
        {"tokens": corpus.tokens[offsets[i]:offsets[min(i + 1000, n)]], "lengths": corpus.lengths[i:i + 1000]}
        for i in range(0, n, 1000)
    ]
    record("LLM rows, one document per element", grain_llm,
           self_seconds(lambda: _drain(LLMPackIterDataset(source(documents), **llm_options)), documents))
    record("LLM rows, ragged chunks of 1,000 documents", grain_llm,
           self_seconds(lambda: _drain(LLMPackIterDataset(source(chunks), **llm_options)), chunks))
    bulk = run_seconds(lambda: pack_documents(corpus.tokens, corpus.lengths, **llm_options), repeats, min_seconds)
    record("LLM rows, bulk pack_documents", grain_llm, (statistics.median(bulk), spread(bulk)))
    return results


COLUMNS = f"{'grain docs/s':>13}  {'spread':>6}  {'xbatch docs/s':>13}  {'spread':>6}  {'speed-up':>8}"


def format_comparison(result: Comparison, width: int) -> str:
    """One line of :func:`format_comparisons`."""
    return (
        f"{result.case:<{width}}  {result.documents / result.grain_seconds:>13,.0f}  "
        f"{result.grain_spread:>6.0%}  {result.documents / result.xbatch_seconds:>13,.0f}  "
        f"{result.xbatch_spread:>6.0%}  {result.speedup:>7.1f}x"
    )


def format_comparisons(results: Sequence[Comparison]) -> str:
    """A table of documents/s for grain and xbatch, their spreads and the speed-up."""
    width = max(len(result.case) for result in results)
    return "\n".join([f"{'case':<{width}}  {COLUMNS}", *(format_comparison(r, width) for r in results)])


def bench_corpora(num_documents: int) -> dict[str, Corpus]:
    """The benchmark's corpora by label: short (mean ~90 tokens) and long (mean ~600) documents."""
    return {
        "short docs": synthetic_corpus(num_documents, log_mean=SHORT_LOG_MEAN),
        "long docs": synthetic_corpus(num_documents, log_mean=LONG_LOG_MEAN),
    }
