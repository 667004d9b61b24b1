"""The LLM packer (bulk and streaming) against grain's packer + shift, in one process.

asv runs the classes (``time_*`` / ``peakmem_*`` / ``track_*``);
``python bench/bench_llm_packing.py`` prints tokens/s of bulk ``pack_documents``, the
fill ratio of each algorithm, streaming tokens/s and documents/s from ragged chunks of
1,000 documents next to grain's ``FirstFitPackIterDataset`` + EOD/shift maps on the same
documents (as a ratio), documents/s at 8 vs 4,096 bins, and tokens/s with loss masks
(per-token masks or prompt lengths; SFT-like: the first 10-60% of each document is its
prompt) next to the same packing without them (as a ratio), for first fit (bulk, chunks,
documents) and concat-then-split (chunks).

Corpus: 2,048-token rows; document lengths lognormal (sigma 1) with mean 90 or 600
tokens, clipped to 1..2,047 (so grain, which cannot split, takes every document); int32
tokens. Parents read without prefetch threads, whose hand-off would cost more than the
packers themselves.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import grain
import numpy as np

import xbatch
from xbatch.compare import median_seconds
from xbatch.packing import LLMPackIterDataset, pack_documents

SEQ_LEN = 2048
NUM_BINS = 64
EOD = 1
MEAN_TOKENS = (90, 600)
CHUNK_DOCUMENTS = 1000
NO_PREFETCH = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


@functools.cache
def corpus(mean_tokens: int, num_tokens: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32[about num_tokens], lengths int64[documents]) with lognormal lengths."""
    rng = np.random.default_rng(seed)
    sigma = 1.0
    mu = np.log(mean_tokens) - sigma**2 / 2  # the lognormal's mean is exp(mu + sigma^2/2)
    lengths = np.clip(np.rint(rng.lognormal(mu, sigma, 2 * num_tokens // mean_tokens)), 1, SEQ_LEN - 1)
    lengths = lengths.astype(np.int64)[: np.searchsorted(np.cumsum(lengths), num_tokens) + 1]
    return rng.integers(0, 50_000, int(lengths.sum()), dtype=np.int32), lengths


def ragged_chunks(tokens: np.ndarray, lengths: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The corpus as ``{"tokens", "lengths"}`` chunks of CHUNK_DOCUMENTS documents (views)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [
        {"tokens": tokens[offsets[i]:offsets[min(i + CHUNK_DOCUMENTS, len(lengths))]],
         "lengths": lengths[i:i + CHUNK_DOCUMENTS]}
        for i in range(0, len(lengths), CHUNK_DOCUMENTS)
    ]


def single_documents(tokens: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [tokens[offsets[i]:offsets[i + 1]] for i in range(len(lengths))]


def _with_eod(document: np.ndarray) -> dict[str, np.ndarray]:
    return {"targets": np.concatenate([document, np.array([EOD], np.int32)])}


def _shift(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    targets = row["targets"]
    return {
        "inputs": np.concatenate([np.array([EOD], targets.dtype), targets[:-1]]),
        "targets": targets,
        "inputs_position": row["targets_positions"],
        "inputs_segmentation": row["targets_segment_ids"],
        "targets_position": row["targets_positions"].copy(),
        "targets_segmentation": row["targets_segment_ids"].copy(),
    }


def grain_pipeline(documents: list[np.ndarray], num_bins: int = NUM_BINS):
    """What users chain today: append EOD, grain's first fit, shift into the LLM layout."""
    parent = grain.MapDataset.source(documents).map(_with_eod).to_iter_dataset(NO_PREFETCH)
    packed = grain.experimental.FirstFitPackIterDataset(
        parent, length_struct={"targets": SEQ_LEN}, num_packing_bins=num_bins, shuffle_bins=False
    )
    return packed.map(_shift)


def xbatch_pipeline(elements: list, num_bins: int = NUM_BINS):
    parent = grain.MapDataset.source(elements).to_iter_dataset(NO_PREFETCH)
    return LLMPackIterDataset(parent, seq_len=SEQ_LEN, num_packing_bins=num_bins, eod_token_id=EOD)


@functools.cache
def prompt_lengths(mean_tokens: int, num_tokens: int, seed: int = 1) -> np.ndarray:
    """int64[documents]: a prompt of 10-60% of each document of ``corpus(mean_tokens, num_tokens)``."""
    lengths = corpus(mean_tokens, num_tokens)[1]
    share = np.random.default_rng(seed).uniform(0.1, 0.6, lengths.shape[0])
    return np.floor(lengths * share).astype(np.int64)


def masked_elements(pipeline: str, masks: str, mean_tokens: int, num_tokens: int) -> list:
    """The corpus as the parent elements of ``pipeline`` ("chunks" or "documents"), carrying
    ``masks`` ("none", "loss_mask" or "prompt_lengths")."""
    tokens, lengths = corpus(mean_tokens, num_tokens)
    prompts = prompt_lengths(mean_tokens, num_tokens)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    mask = (np.arange(tokens.size) >= np.repeat(offsets[:-1] + prompts, lengths)).astype(np.int32)
    if pipeline == "chunks":
        chunks = ragged_chunks(tokens, lengths)
        for index, chunk in enumerate(chunks):
            first = index * CHUNK_DOCUMENTS
            last = first + len(chunk["lengths"])
            if masks == "loss_mask":
                chunk["loss_mask"] = mask[offsets[first]:offsets[last]]
            elif masks == "prompt_lengths":
                chunk["prompt_lengths"] = prompts[first:last]
        return chunks
    documents = single_documents(tokens, lengths)
    if masks == "loss_mask":
        return [{"tokens": d, "loss_mask": mask[offsets[i]:offsets[i + 1]]} for i, d in enumerate(documents)]
    if masks == "prompt_lengths":
        return [{"tokens": d, "prompt_length": int(p)} for d, p in zip(documents, prompts)]
    return documents


def consume(dataset) -> int:
    count = 0
    for _ in dataset:
        count += 1
    return count


class BulkPack:
    """``pack_documents`` of a 16M-token corpus."""

    params = [[NUM_BINS, None], list(MEAN_TOKENS)]
    param_names = ["num_packing_bins", "mean_tokens"]
    num_tokens = 1 << 24

    def setup(self, num_packing_bins, mean_tokens):
        self.tokens, self.lengths = corpus(mean_tokens, self.num_tokens)

    def time_pack_documents(self, num_packing_bins, mean_tokens):
        pack_documents(self.tokens, self.lengths, seq_len=SEQ_LEN, eod_token_id=EOD,
                       num_packing_bins=num_packing_bins)

    def peakmem_pack_documents(self, num_packing_bins, mean_tokens):
        pack_documents(self.tokens, self.lengths, seq_len=SEQ_LEN, eod_token_id=EOD,
                       num_packing_bins=num_packing_bins)


class FillRatio:
    """Real tokens / row capacity by algorithm (64 bins, or the whole corpus for ``*_decreasing``)."""

    params = [["first_fit", "best_fit", "first_fit_decreasing", "best_fit_decreasing"], list(MEAN_TOKENS)]
    param_names = ["algorithm", "mean_tokens"]
    num_tokens = 1 << 22

    def setup(self, algorithm, mean_tokens):
        self.tokens, self.lengths = corpus(mean_tokens, self.num_tokens)

    def track_fill_ratio(self, algorithm, mean_tokens):
        bins = None if algorithm.endswith("_decreasing") else NUM_BINS
        _, stats = pack_documents(self.tokens, self.lengths, seq_len=SEQ_LEN, eod_token_id=EOD,
                                  num_packing_bins=bins, algorithm=algorithm, return_stats=True)
        return stats.fill_ratio


class Stream:
    """Streaming into the LLM layout: xbatch from ragged chunks or single documents, grain."""

    params = [["xbatch_chunks", "xbatch_documents", "grain"], list(MEAN_TOKENS)]
    param_names = ["pipeline", "mean_tokens"]
    num_tokens = 1 << 21

    def setup(self, pipeline, mean_tokens):
        tokens, lengths = corpus(mean_tokens, self.num_tokens)
        if pipeline == "xbatch_chunks":
            self.dataset = xbatch_pipeline(ragged_chunks(tokens, lengths))
        elif pipeline == "xbatch_documents":
            self.dataset = xbatch_pipeline(single_documents(tokens, lengths))
        else:
            self.dataset = grain_pipeline(single_documents(tokens, lengths))

    def time_stream(self, pipeline, mean_tokens):
        consume(self.dataset)

    def peakmem_stream(self, pipeline, mean_tokens):
        consume(self.dataset)


class ManyBins:
    """Ragged-chunk streaming at 8 vs 4,096 bins (several 4,096-row windows)."""

    params = [[8, 4096]]
    param_names = ["num_packing_bins"]
    num_tokens = 1 << 25

    def setup(self, num_packing_bins):
        self.dataset = xbatch_pipeline(ragged_chunks(*corpus(600, self.num_tokens)), num_packing_bins)

    def time_stream(self, num_packing_bins):
        consume(self.dataset)

    def peakmem_stream(self, num_packing_bins):
        consume(self.dataset)


class Masks:
    """Loss masks against none: bulk ``pack_documents``, streaming (chunks, documents) and
    streaming concat-then-split (``concat``: the same chunks)."""

    params = [["none", "loss_mask", "prompt_lengths"], ["bulk", "chunks", "documents", "concat"],
              ["inputs", "targets"], list(MEAN_TOKENS)]
    param_names = ["masks", "pipeline", "shift", "mean_tokens"]
    num_tokens = 1 << 21

    def setup(self, masks, pipeline, shift, mean_tokens):
        self.tokens, self.lengths = corpus(mean_tokens, self.num_tokens)
        if pipeline == "bulk":
            prompts = prompt_lengths(mean_tokens, self.num_tokens)
            offsets = np.cumsum(self.lengths) - self.lengths
            mask = (np.arange(self.tokens.size) >= np.repeat(offsets + prompts, self.lengths)).astype(np.int32)
            self.kwargs = {"none": {}, "loss_mask": {"loss_mask": mask},
                           "prompt_lengths": {"prompt_lengths": prompts}}[masks]
            self.dataset = None
        else:
            elements = masked_elements("chunks" if pipeline == "concat" else pipeline, masks, mean_tokens,
                                       self.num_tokens)
            algorithm = "concat_then_split" if pipeline == "concat" else "first_fit"
            self.dataset = LLMPackIterDataset(grain.MapDataset.source(elements).to_iter_dataset(NO_PREFETCH),
                                              seq_len=SEQ_LEN, num_packing_bins=NUM_BINS, eod_token_id=EOD,
                                              shift=shift, algorithm=algorithm)
        self.shift = shift

    def time_pack(self, masks, pipeline, shift, mean_tokens):
        if self.dataset is None:
            pack_documents(self.tokens, self.lengths, seq_len=SEQ_LEN, eod_token_id=EOD,
                           num_packing_bins=NUM_BINS, shift=self.shift, **self.kwargs)
        else:
            consume(self.dataset)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    parser.add_argument("--cpu-time", action="store_true",
                        help="loss masks: time with the process's CPU time (steadier on a shared machine)")
    parser.add_argument("--only", choices=["bulk", "fill", "stream", "bins", "masks", "cap"], action="append",
                        help="run only these sections (repeatable; default: all)")
    parser.add_argument("--pipelines", nargs="+", choices=Masks.params[1], default=Masks.params[1],
                        help="loss masks: only these pipelines")
    args = parser.parse_args(argv)
    sections = set(args.only or ["bulk", "fill", "stream", "bins", "masks", "cap"])
    print(f"xbatch {xbatch.__version__}, kernels: {xbatch.BACKEND}; {SEQ_LEN}-token rows, median of {args.repeats}")

    if "bulk" in sections:
        print(f"\nbulk pack_documents, {BulkPack.num_tokens / 1e6:.1f}M tokens:")
        for mean_tokens in MEAN_TOKENS:
            for bins in BulkPack.params[0]:
                case = BulkPack()
                case.setup(bins, mean_tokens)
                seconds = median_seconds(lambda: case.time_pack_documents(bins, mean_tokens), args.repeats)
                window = f"{bins} bins" if bins else "whole corpus"
                print(f"  mean {mean_tokens:>3}, {window:>12}: {case.tokens.size / seconds / 1e6:7.1f} M tokens/s")

    if "fill" in sections:
        print(f"\nfill ratio, {FillRatio.num_tokens / 1e6:.1f}M tokens ({NUM_BINS} bins; *_decreasing: whole corpus):")
        for mean_tokens in MEAN_TOKENS:
            ratios = []
            for algorithm in FillRatio.params[0]:
                case = FillRatio()
                case.setup(algorithm, mean_tokens)
                ratios.append(f"{algorithm} {case.track_fill_ratio(algorithm, mean_tokens):.4f}")
            print(f"  mean {mean_tokens:>3}: " + ", ".join(ratios))

    if "stream" in sections:
        print(f"\nstreaming into the LLM layout, {Stream.num_tokens / 1e6:.1f}M tokens, {NUM_BINS} bins:")
        for mean_tokens in MEAN_TOKENS:
            tokens, lengths = corpus(mean_tokens, Stream.num_tokens)
            rates = {}
            for pipeline in Stream.params[0]:
                case = Stream()
                case.setup(pipeline, mean_tokens)
                rates[pipeline] = 1 / median_seconds(lambda: case.time_stream(pipeline, mean_tokens), args.repeats)
            for pipeline, rate in rates.items():
                print(f"  mean {mean_tokens:>3}, {pipeline:>16}: {tokens.size * rate / 1e6:8.2f} M tokens/s "
                      f"{len(lengths) * rate:12,.0f} documents/s  ({rate / rates['grain']:6.1f}x grain)")

    if "bins" in sections:
        print(f"\nragged chunks at 8 vs 4,096 bins, {ManyBins.num_tokens / 1e6:.1f}M tokens, mean 600:")
        documents = len(corpus(600, ManyBins.num_tokens)[1])
        rates = {}
        for bins in ManyBins.params[0]:
            case = ManyBins()
            case.setup(bins)
            rates[bins] = documents / median_seconds(lambda: case.time_stream(bins), args.repeats)
        print(f"  8 bins {rates[8]:,.0f} documents/s, 4096 bins {rates[4096]:,.0f} documents/s "
              f"(4096/8 = {rates[4096] / rates[8]:.2f})")

    if "masks" in sections:
        clock = time.process_time if args.cpu_time else time.perf_counter
        print(f"\nloss masks, {Masks.num_tokens / 1e6:.1f}M tokens, {NUM_BINS} bins, M tokens/s, runs interleaved, "
              f"{'CPU' if args.cpu_time else 'wall'} time (with masks / none = the masks' cost):")
        masks_kinds, _, shifts, _ = Masks.params
        pipelines = args.pipelines
        for mean_tokens in MEAN_TOKENS:
            for pipeline in pipelines:
                for shift in shifts:
                    cases = {}
                    for masks in masks_kinds:
                        cases[masks] = Masks()
                        cases[masks].setup(masks, pipeline, shift, mean_tokens)
                        cases[masks].time_pack(masks, pipeline, shift, mean_tokens)  # untimed warm-up
                    times = {masks: [] for masks in masks_kinds}
                    for _ in range(args.repeats):  # interleaved: a busy spell hits every variant alike
                        for masks, case in cases.items():
                            start = clock()
                            case.time_pack(masks, pipeline, shift, mean_tokens)
                            times[masks].append(clock() - start)
                    seconds = {masks: statistics.median(values) for masks, values in times.items()}
                    rate = {masks: cases[masks].tokens.size / value / 1e6 for masks, value in seconds.items()}
                    print(f"  mean {mean_tokens:>3}, {pipeline:>9}, shift={shift:<7}: none {rate['none']:7.1f}, "
                          + ", ".join(f"{kind} {rate[kind]:7.1f} ({seconds[kind] / seconds['none']:.2f}x)"
                                      for kind in masks_kinds[1:]))

    if "cap" in sections:
        print(f"\nconcat_then_split with max_documents_per_row=M: fill ratio (bulk, 4.2M tokens; first_fit with "
              f"{NUM_BINS} bins in brackets) and streaming time from ragged chunks (2.1M tokens, CPU time, median):")
        caps = (None, 64, 32, 16, 8, 4)
        for mean_tokens in MEAN_TOKENS:
            tokens, lengths = corpus(mean_tokens, 1 << 22)
            fills = []
            for cap in caps:
                options = dict(seq_len=SEQ_LEN, eod_token_id=EOD, max_documents_per_row=cap, return_stats=True)
                _, concat = pack_documents(tokens, lengths, algorithm="concat_then_split", **options)
                _, first_fit = pack_documents(tokens, lengths, num_packing_bins=NUM_BINS, **options)
                fills.append(f"M={cap or '-'} {concat.fill_ratio:.2%} ({first_fit.fill_ratio:.2%})")
            print(f"  mean {mean_tokens:>3}: " + ", ".join(fills))
            elements = masked_elements("chunks", "none", mean_tokens, Masks.num_tokens)
            seconds = {}
            for cap in (None, 32):
                dataset = LLMPackIterDataset(grain.MapDataset.source(elements).to_iter_dataset(NO_PREFETCH),
                                             seq_len=SEQ_LEN, num_packing_bins=NUM_BINS, eod_token_id=EOD,
                                             algorithm="concat_then_split", max_documents_per_row=cap)
                consume(dataset)  # untimed warm-up
                times = []
                for _ in range(args.repeats):
                    start = time.process_time()
                    consume(dataset)
                    times.append(time.process_time() - start)
                seconds[cap] = statistics.median(times)
            print(f"  mean {mean_tokens:>3}: streaming, no cap {Masks.num_tokens / seconds[None] / 1e6:.1f} M tokens/s, "
                  f"M=32 {Masks.num_tokens / seconds[32] / 1e6:.1f} M tokens/s ({seconds[32] / seconds[None]:.2f}x)")


if __name__ == "__main__":
    main()
