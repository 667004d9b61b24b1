"""End to end, from the corpus file to batches: xbatch's source -> packer -> batch against
the xlstm-jax-style grain chain, in one process.

``python bench/bench_end_to_end.py`` writes one synthetic corpus per mean length (90 and
600 tokens; lognormal, sigma 1, clipped to 1..2,047 so grain's packer, which cannot split,
takes every document; int32 ids) as an ArrayRecord file (int32 token bytes per record,
xlstm-jax's layout), a Parquet file and an xbatch corpus directory, then times, from a
warm page cache (one untimed run first), shuffled, 2,048-token rows, 64 bins, batches of 16:

- grain: ``MapDataset.source(ArrayRecordDataSource(file)).shuffle(seed)`` -> decode + EOD
  map -> ``to_iter_dataset()`` (grain's DEFAULT ReadOptions) -> ``FirstFitPackIterDataset``
  -> rename + shift map -> ``batch``; and the same after ``ParquetIterDataset`` (file
  order: grain has no global shuffle for it);
- xbatch: ``llm_batches(open_corpus(file), ...)`` (DocumentChunkIterDataset ->
  LLMPackIterDataset -> batch with ``stack_rows``) from each file;

tokens/s = non-padding cells of the batches per second (median of ``--repeats``);
grain reads the first ``--grain-tokens`` tokens' worth of batches, xbatch the whole file.
``--open-documents N`` also times opening an N-document xbatch corpus and its resident
memory (in a fresh process); ``--workers 2`` times ``mp_prefetch`` workers and checks that
their rows are those of the same slices packed in one process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grain
import numpy as np

import xbatch
from xbatch.compare import median_seconds
from xbatch.sources import DocumentChunkIterDataset, llm_batches, open_corpus, write_xbatch_corpus

SEQ_LEN = 2048
NUM_BINS = 64
BATCH = 16
EOD = 1
SEED = 0


def synthetic(mean_tokens: int, num_tokens: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mu = np.log(mean_tokens) - 0.5  # lognormal mean exp(mu + sigma^2 / 2), sigma 1
    lengths = np.clip(np.rint(rng.lognormal(mu, 1.0, 2 * num_tokens // mean_tokens)), 1, SEQ_LEN - 1)
    lengths = lengths.astype(np.int64)[: np.searchsorted(np.cumsum(lengths), num_tokens) + 1]
    return rng.integers(2, 50_000, int(lengths.sum()), dtype=np.int32), lengths


def write_files(folder: Path, tokens: np.ndarray, lengths: np.ndarray) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from array_record.python.array_record_module import ArrayRecordWriter

    offsets = np.concatenate([[0], np.cumsum(lengths)])
    paths = {"xbatch": folder / "corpus.xbatch", "array_record": folder / "corpus.array_record",
             "parquet": folder / "corpus.parquet"}
    write_xbatch_corpus(paths["xbatch"], tokens, offsets=offsets)
    writer = ArrayRecordWriter(str(paths["array_record"]), "group_size:1")
    for i in range(len(lengths)):
        writer.write(tokens[offsets[i]:offsets[i + 1]].tobytes())
    writer.close()
    column = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(tokens))
    pq.write_table(pa.table({"input_ids": column.cast(pa.list_(pa.int32()))}), paths["parquet"],
                   row_group_size=100_000)
    return paths


def _grain_row(row: dict) -> dict:
    targets = row["targets"]
    inputs = np.concatenate([np.array([EOD], targets.dtype), targets[:-1]])
    return {"inputs": inputs, "targets": targets, "inputs_position": row["targets_positions"],
            "inputs_segmentation": row["targets_segment_ids"], "targets_position": row["targets_positions"],
            "targets_segmentation": row["targets_segment_ids"]}


def grain_chain(path: Path, kind: str) -> grain.IterDataset:
    """xlstm-jax's chain with grain's own readers and default options."""
    if kind == "array_record":
        source = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(str(path))).shuffle(SEED)
        documents = source.map(lambda record: np.append(np.frombuffer(record, np.int32), np.int32(EOD)))
        documents = documents.to_iter_dataset()  # default ReadOptions
    else:
        documents = grain.experimental.ParquetIterDataset(str(path)).map(
            lambda row: np.append(np.asarray(row["input_ids"], np.int32), np.int32(EOD)))
    packed = grain.experimental.FirstFitPackIterDataset(
        documents.map(lambda tokens: {"targets": tokens}), length_struct={"targets": SEQ_LEN},
        num_packing_bins=NUM_BINS, shuffle_bins=False)
    return packed.map(_grain_row).batch(BATCH, drop_remainder=True)


def xbatch_chain(corpus, **kwargs) -> grain.IterDataset:
    return llm_batches(corpus, batch_size=BATCH, seq_len=SEQ_LEN, eod_token_id=EOD, num_packing_bins=NUM_BINS,
                       seed=SEED, num_epochs=1, **kwargs)


def tokens_per_second(make, max_tokens: float, repeats: int) -> tuple[float, float]:
    """(median tokens per wall second, median tokens per CPU second of this process, all
    its threads) of iterating ``make()`` until ``max_tokens``. On a shared machine the CPU
    figure is the one-core speed; the wall figure includes waiting for a core."""
    counted, cpu = [], []

    def run():
        total = 0
        start = time.process_time()
        for batch in make():
            segmentation = batch["targets_segmentation"] if isinstance(batch, dict) else batch.targets_segmentation
            total += int(np.count_nonzero(segmentation))
            if total >= max_tokens:
                break
        cpu.append(time.process_time() - start)
        counted.append(total)

    seconds = median_seconds(run, repeats)
    return counted[-1] / seconds, counted[-1] / statistics.median(cpu[1:])


def open_figures(folder: Path, num_documents: int) -> dict:
    """Writes an ``num_documents``-document xbatch corpus (1-3 uint16 tokens each, with
    :class:`XbatchCorpusWriter`, as ``xbatch convert`` does), then opens it in a fresh
    process: seconds to open; the process' private (anonymous) and file-backed resident
    memory after opening and after reading one shuffled chunk of 4,096 documents."""
    from xbatch.sources import XbatchCorpusWriter

    path = folder / "huge.xbatch"
    rng = np.random.default_rng(0)
    with XbatchCorpusWriter(path, dtype=np.uint16) as writer:
        for low in range(0, num_documents, 10_000_000):
            lengths = rng.integers(1, 4, size=min(10_000_000, num_documents - low))
            writer.add(np.full(int(lengths.sum()), 7, np.uint16), lengths)
    probe = f"""
import time, json, numpy as np
def rss():
    fields = dict(line.split(':', 1) for line in open('/proc/self/status'))
    return {{key: int(fields[key].split()[0]) * 1024 for key in ('VmRSS', 'RssAnon', 'RssFile')}}
def grown(now, before):
    return {{key: now[key] - before[key] for key in now}}
from xbatch.sources import open_corpus, DocumentChunkIterDataset
import grain  # imported before the first figure: its memory is not the corpus'
before = rss()
start = time.perf_counter()
corpus = open_corpus({str(path)!r})
seconds = time.perf_counter() - start
opened = grown(rss(), before)
start = time.perf_counter()
chunk = next(iter(DocumentChunkIterDataset(corpus, seed=1)))
first = time.perf_counter() - start
print(json.dumps(dict(documents=len(corpus), open_seconds=seconds, rss_open=opened,
                      rss_first_chunk=grown(rss(), before), first_chunk_seconds=first,
                      offsets_bytes=corpus.offsets.nbytes, tokens_bytes=corpus.tokens.nbytes)))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def worker_figures(path: Path, workers: int, repeats: int) -> dict:
    """mp_prefetch: tokens/s, and rows == the workers' slices packed in one process."""
    from xbatch.packing import LLMPackIterDataset

    rates = []
    for _ in range(repeats):  # steady state: from the first batch on (workers started)
        iterator = iter(xbatch_chain(open_corpus(path), worker_count=workers, drop_remainder=False))
        next(iterator)
        start, total = time.perf_counter(), 0
        for batch in iterator:
            total += int(np.count_nonzero(batch.targets_segmentation))
        rates.append(total / (time.perf_counter() - start))
    rate = statistics.median(rates)

    def rows_of(batches):
        return sorted(row.tobytes() for batch in batches for row in np.asarray(batch.targets))

    multi = rows_of(xbatch_chain(open_corpus(path), worker_count=workers, drop_remainder=False))
    sliced = []
    for worker in range(workers):
        chunks = DocumentChunkIterDataset(open_corpus(path), seed=SEED)
        chunks.set_slice(slice(worker, None, workers))
        packer = LLMPackIterDataset(chunks, seq_len=SEQ_LEN, num_packing_bins=NUM_BINS, eod_token_id=EOD)
        sliced.extend(row["targets"].tobytes() for row in packer)
    single = xbatch_chain(open_corpus(path), drop_remainder=False)
    single_tokens = np.bincount(np.concatenate([np.asarray(b.targets)[np.asarray(b.targets_segmentation) > 0]
                                                for b in single]))
    multi_tokens = np.bincount(np.concatenate([np.frombuffer(r, np.int32) for r in multi]))
    return {"workers": workers, "tokens_per_second": rate, "rows": len(multi), "load": os.getloadavg()[0],
            "rows_equal_sliced_single_process": multi == sorted(sliced),
            "documents_once": bool(np.array_equal(multi_tokens[2:], single_tokens[2:])
                                   and multi_tokens[EOD] == single_tokens[EOD])}


class EndToEnd:
    """asv: ``llm_batches`` from an xbatch corpus file (2 M tokens), shuffled, to batches."""

    params = [[90, 600]]
    param_names = ["mean_tokens"]

    def setup(self, mean_tokens):
        self.folder = Path(tempfile.mkdtemp(prefix="xbatch-asv-"))
        tokens, lengths = synthetic(mean_tokens, 2_000_000)
        self.path = write_xbatch_corpus(self.folder / "c.xbatch", tokens, lengths=lengths)

    def teardown(self, mean_tokens):
        shutil.rmtree(self.folder, ignore_errors=True)

    def _drain(self):
        for _ in xbatch_chain(open_corpus(self.path)):
            pass

    def time_llm_batches(self, mean_tokens):
        self._drain()

    def peakmem_llm_batches(self, mean_tokens):
        self._drain()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=float, default=20e6, help="tokens per corpus file")
    parser.add_argument("--grain-tokens", type=float, default=2e6, help="tokens grain packs per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--means", type=int, nargs="+", default=[90, 600])
    parser.add_argument("--open-documents", type=int, default=0, help="e.g. 100000000 (needs ~1 GB of disk)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    from absl import flags  # grain's worker processes read absl flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="xbatch-e2e-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"xbatch {xbatch.__version__} ({xbatch.BACKEND}), grain {getattr(grain, '__version__', '?')}; "
          f"{SEQ_LEN}-token rows, {NUM_BINS} bins, batches of {BATCH}, shuffled; median of {args.repeats}")
    try:
        for mean in args.means:
            tokens, lengths = synthetic(mean, int(args.tokens))
            (folder / f"mean{mean}").mkdir(exist_ok=True)
            paths = write_files(folder / f"mean{mean}", tokens, lengths)
            print(f"\nmean {mean} tokens: {len(lengths):,} documents, {tokens.size:,} tokens")
            results = {}
            print(f"  {'pipeline':34s} {'M tokens/s wall':>16s} {'M tokens/CPU-s':>15s}")
            for kind in ("array_record", "parquet"):
                results[f"grain {kind}"] = tokens_per_second(lambda: grain_chain(paths[kind], kind),
                                                             args.grain_tokens, args.repeats)
                note = "   (file order: no global shuffle)" if kind == "parquet" else ""
                wall, cpu = results[f"grain {kind}"]
                print(f"  {'grain chain from ' + kind:34s} {wall / 1e6:16.2f} {cpu / 1e6:15.2f}{note}")
            for kind in ("xbatch", "array_record", "parquet"):
                start = time.perf_counter()
                corpus = open_corpus(paths[kind])
                opened = time.perf_counter() - start
                results[f"xbatch {kind}"] = tokens_per_second(lambda: xbatch_chain(corpus), float("inf"), args.repeats)
                wall, cpu = results[f"xbatch {kind}"]
                print(f"  {'xbatch from ' + kind:34s} {wall / 1e6:16.1f} {cpu / 1e6:15.1f}   (open: {opened:.2f} s)")
            base = results["grain array_record"]
            for kind in ("xbatch", "array_record"):
                ours = results[f"xbatch {kind}"]
                print(f"  xbatch from {kind} / grain chain from array_record: {ours[0] / base[0]:6.1f}x wall, "
                      f"{ours[1] / base[1]:6.1f}x CPU")
            ours, theirs = results["xbatch parquet"], results["grain parquet"]
            print(f"  xbatch from parquet / grain ParquetIterDataset chain: {ours[0] / theirs[0]:6.1f}x wall, "
                  f"{ours[1] / theirs[1]:6.1f}x CPU")
            if args.workers and mean == args.means[-1]:
                figures = worker_figures(paths["xbatch"], args.workers, args.repeats)
                print(f"  mp_prefetch, {args.workers} workers: {figures['tokens_per_second'] / 1e6:.1f} M tokens/s wall "
                      f"after the first batch (load {figures['load']:.1f}); "
                      f"{figures['rows']} rows; rows == the workers' slices packed in one process: "
                      f"{figures['rows_equal_sliced_single_process']}; every document once (token multiset == "
                      f"single process): {figures['documents_once']}")
        if args.open_documents:
            figures = open_figures(folder, args.open_documents)
            mib = {key: {k: v / 2**20 for k, v in figures[key].items()} for key in ("rss_open", "rss_first_chunk")}
            print(f"\nopening a {figures['documents']:,}-document xbatch corpus: {figures['open_seconds']:.3f} s, "
                  f"resident +{mib['rss_open']['VmRSS']:.1f} MiB; first shuffled chunk "
                  f"{figures['first_chunk_seconds'] * 1e3:.1f} ms, then resident +{mib['rss_first_chunk']['VmRSS']:.1f}"
                  f" MiB: private +{mib['rss_first_chunk']['RssAnon']:.1f} MiB, mapped file pages "
                  f"+{mib['rss_first_chunk']['RssFile']:.1f} MiB (files: offsets {figures['offsets_bytes'] / 2**20:.0f}"
                  f" MiB, tokens {figures['tokens_bytes'] / 2**20:.0f} MiB)")
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
