"""Packing index benchmarks: build time and bytes per document, rows on demand, parallel jobs.

Run from the repository root: ``python bench/bench_packing_index.py [--only build|rows|jobs]``.
Everything is timed in this one process (the parallel jobs start their own workers);
each figure is the median of ``--repeats`` runs after one untimed warm-up. Documents have
geometric lengths with a mean of about 90 tokens (capped at 100,000); rows are
``--seq-len`` tokens. What each figure includes is printed beside it.

1. ``build``: the placement index of ``--documents`` documents (lengths in memory, no
   token read) against bulk ``pack_documents`` (which writes every row), Megatron-LM's
   ``build_sample_idx`` and OLMo-core's ``InstancePacker``, on the same corpus.
2. ``rows``: rows/s of :class:`~xbatch.packing.packed_rows.PackedRows` (random batches
   of ``--batch`` rows gathered from the corpus) against reading the same rows
   pre-written by ``pack_documents`` to ``.npy`` files (memory-mapped, in the page cache).
3. ``jobs``: documents/s of ``xbatch pack FILES --index-out`` (``run_tasks`` over
   ``--files`` files, one task per file) in one process against a pool of ``--workers``
   processes (and Ray, when installed), for three input formats: xbatch corpus
   directories (only the offsets are read), ``.npz`` files (the tokens are read too) and
   JSON lines (every token is parsed); and the pool's start-up alone.

Peers, measured only where they load:
- Megatron-LM's ``build_sample_idx`` (``helpers_cpp`` of ``megatron-core``): set
  ``MEGATRON_HELPERS`` to the path of ``helpers_cpp*.so`` (it needs no torch; install
  with ``pip install --no-deps megatron-core`` into a scratch directory).
- OLMo-core's ``InstancePacker`` (best-fit decreasing, pure Python): set
  ``OLMO_CORE_UTILS`` to ``olmo_core/data/utils.py``; its ``SegmentTree*`` and
  ``InstancePacker`` classes are loaded from the source (the module itself imports torch).
"""

from __future__ import annotations

import argparse
import ast
import collections
import importlib.util
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from xbatch.packing import pack_documents
from xbatch.packing.index import pack_shard
from xbatch.packing.jobs import build_index, run_tasks
from xbatch.packing.packed_rows import FIELDS, PackedRows


def median_seconds(function, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_lengths(n: int, seed: int = 0) -> np.ndarray:
    return np.minimum(np.random.default_rng(seed).geometric(1 / 90, n), 100_000).astype(np.int64)


def load_megatron():
    path = os.environ.get("MEGATRON_HELPERS")
    if not path:
        return None
    spec = importlib.util.spec_from_file_location("helpers_cpp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_olmo_packer():
    path = os.environ.get("OLMO_CORE_UTILS")
    if not path:
        return None
    tree = ast.parse(open(path).read())
    keep = [node for node in tree.body
            if isinstance(node, ast.ClassDef) and node.name in ("SegmentTreeNode", "SegmentTree", "InstancePacker")]
    namespace = {"np": np, "deque": collections.deque, "defaultdict": collections.defaultdict,
                 "math": __import__("math")}
    exec("from typing import *\nfrom dataclasses import dataclass\n", namespace)
    exec(compile(ast.Module(body=keep, type_ignores=[]), path, "exec"), namespace)
    return namespace["InstancePacker"]


def bench_build(args) -> None:
    n, seq_len, repeats = args.documents, args.seq_len, args.repeats
    lengths = make_lengths(n)
    tokens = np.random.default_rng(1).integers(1, 50_000, int(lengths.sum()), dtype=np.int32)
    print(f"1. index build: {n:,} documents, {tokens.shape[0]:,} tokens, seq_len={seq_len}, median of {repeats}")
    start = time.perf_counter()
    pack_documents(tokens, lengths, seq_len=seq_len, eod_token_id=0)  # fresh memory: its pages are touched first
    first_bulk = time.perf_counter() - start
    bulk = median_seconds(lambda: pack_documents(tokens, lengths, seq_len=seq_len, eod_token_id=0), repeats,
                          warm_up=False)
    index = build_index(lengths, seq_len=seq_len, eod_token_id=0)
    build = median_seconds(lambda: build_index(lengths, seq_len=seq_len, eod_token_id=0), repeats)
    rows_bytes = 6 * 4 * index.num_rows * seq_len
    print(f"  pack_documents, first_fit, whole corpus (writes rows)  {bulk:8.3f} s  {rows_bytes / n:8.1f} B/document"
          f"  (first call in this process, into fresh memory: {first_bulk:.3f} s)")
    print(f"  xbatch index, first_fit, whole corpus (build_index)    {build:8.3f} s  {index.nbytes / n:8.1f} B/document"
          f"  ({bulk / build:.1f}x faster than pack_documents)")
    decreasing = median_seconds(lambda: pack_shard(lengths, seq_len=seq_len, eod_token_id=0,
                                                   algorithm="best_fit_decreasing"), repeats)
    print(f"  xbatch index, best_fit_decreasing, whole corpus        {decreasing:8.3f} s")
    megatron = load_megatron()
    if megatron is None:
        print("  Megatron build_sample_idx: not measured (set MEGATRON_HELPERS to megatron-core's helpers_cpp*.so)")
    else:
        sizes = lengths.astype(np.int32)
        document_index = np.arange(n, dtype=np.int32)
        tokens_per_epoch = int(lengths.sum())

        def megatron_index():
            return megatron.build_sample_idx_int32(sizes, document_index, seq_len, 1, tokens_per_epoch, True, True)

        sample_idx = megatron_index()
        seconds = median_seconds(megatron_index, repeats)
        nbytes = sample_idx.nbytes + document_index.nbytes
        print(f"  Megatron build_sample_idx (int32)                      {seconds:8.3f} s  {nbytes / n:8.1f} B/document"
              "  (concatenates documents and cuts every seq_len + 1 tokens: no placement, no padding;"
              " bytes: sample_idx + document_index)")
    packer_class = load_olmo_packer()
    if packer_class is None:
        print("  OLMo-core InstancePacker: not measured (set OLMO_CORE_UTILS to olmo_core/data/utils.py)")
    else:
        cells = np.minimum(lengths + 1, seq_len)  # OLMo truncates long documents; the same cells as ours
        ends = np.cumsum(cells)
        document_indices = np.stack([ends - cells, ends], axis=1).astype(np.uint64)

        def olmo():
            return packer_class(seq_len).pack_documents(document_indices)

        instances, _, _ = olmo()
        seconds = median_seconds(olmo, max(1, repeats // 2), warm_up=False)
        nbytes = document_indices.nbytes + 8 * sum(len(i) for i in instances) + 8 * (len(instances) + 1)
        print(f"  OLMo-core InstancePacker (best-fit decreasing)         {seconds:8.3f} s  {nbytes / n:8.1f} B/document"
              f"  (as arrays: document ranges + instance lists; {seconds / decreasing:.0f}x the time of xbatch's"
              " best_fit_decreasing index)")


def bench_rows(args) -> None:
    n, seq_len, repeats, batch = args.documents, args.seq_len, args.repeats, args.batch
    lengths = make_lengths(n)
    tokens = np.random.default_rng(1).integers(1, 50_000, int(lengths.sum()), dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    with tempfile.TemporaryDirectory() as directory:
        np.save(os.path.join(directory, "tokens.npy"), tokens)
        token_map = np.load(os.path.join(directory, "tokens.npy"), mmap_mode="r")
        index = build_index(lengths, seq_len=seq_len, eod_token_id=0)
        rows = PackedRows(token_map, offsets, index)
        written = pack_documents(tokens, lengths, seq_len=seq_len, eod_token_id=0)
        for field in FIELDS:
            np.save(os.path.join(directory, f"{field}.npy"), getattr(written, field))
        del written
        maps = {f: np.load(os.path.join(directory, f"{f}.npy"), mmap_mode="r") for f in FIELDS}
        rng = np.random.default_rng(2)
        batches = [np.sort(rng.integers(0, len(rows), batch)) for _ in range(args.batches)]
        total = len(batches) * batch
        out = {f: np.empty((batch, seq_len), np.int32) for f in FIELDS}
        print(f"2. rows/s: {len(batches)} random batches of {batch} rows of {seq_len} tokens ({index.num_rows:,} rows,"
              f" corpus and rows memory-mapped from the page cache), median of {repeats}")
        cases = {
            "pre-written rows, new arrays (maps[f][batch])": lambda: [
                {f: maps[f][b] for f in FIELDS} for b in batches],
            "on demand, new arrays (rows.read_rows(batch))": lambda: [rows.read_rows(b) for b in batches],
            "pre-written rows, reused arrays (np.take(..., out=))": lambda: [
                {f: np.take(maps[f], b, axis=0, out=out[f]) for f in FIELDS} for b in batches],
            "on demand, reused arrays (read_rows(batch, out=))": lambda: [rows.read_rows(b, out=out) for b in batches],
        }
        seconds = {name: median_seconds(case, repeats) for name, case in cases.items()}
        names = list(cases)
        for name in names:
            print(f"  {name:55s} {total / seconds[name]:12,.0f} rows/s")
        print(f"  on demand / pre-written: {seconds[names[0]] / seconds[names[1]]:.2f}x with new arrays, "
              f"{seconds[names[2]] / seconds[names[3]]:.2f}x with reused arrays")


def _write_files(directory: str, kind: str, files: int, per_file: int) -> list[str]:
    """``files`` corpus files of ``per_file`` documents each, in one format."""
    paths = []
    for k in range(files):
        lengths = make_lengths(per_file, seed=10 + k)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        path = os.path.join(directory, f"part-{k}" + {"xbatch": "", "npz": ".npz", "jsonl": ".jsonl"}[kind])
        if kind == "xbatch":
            # The index job reads only offsets.npy; tokens.npy is a sparse file of the right size.
            os.mkdir(path)
            np.lib.format.open_memmap(os.path.join(path, "tokens.npy"), mode="w+", dtype=np.uint16,
                                      shape=(int(offsets[-1]),)).flush()
            np.save(os.path.join(path, "offsets.npy"), offsets)
        else:
            tokens = np.random.default_rng(k).integers(1, 50_000, int(offsets[-1]), dtype=np.int32)
            if kind == "npz":
                np.savez(path, tokens=tokens, lengths=lengths)
            else:
                with open(path, "w") as file:
                    for a, b in zip(offsets[:-1], offsets[1:]):
                        file.write("[" + ",".join(map(str, tokens[a:b].tolist())) + "]\n")
        paths.append(path)
    return paths


def _noop(value: int) -> int:
    import xbatch.cli.pack_index  # noqa: F401 - what a pack_file task imports

    return value


def bench_jobs(args) -> None:
    from xbatch.cli.pack_index import pack_file
    from xbatch.packing.index import index_arguments

    repeats = args.repeats
    arguments = index_arguments(seq_len=args.seq_len, eod_token_id=0, num_packing_bins=64)
    engines = {"serial (one process)": dict(engine="serial"),
               f"processes, {args.workers} workers": dict(engine="processes", workers=args.workers)}
    has_ray = importlib.util.find_spec("ray") is not None
    if has_ray:
        engines[f"ray, local instance of {args.workers} CPUs"] = dict(engine="ray")
    print(f"3. parallel job: the tasks of xbatch pack FILES --index-out (run_tasks(pack_file, ...), first_fit, 64 bins),"
          f" one per file, median of {repeats}; each figure includes reading the files, placing, returning the"
          " indexes to this process, and for the pool starting its processes (Ray's instance is started once,"
          " before timing, its workers at niceness 0)")
    startup = median_seconds(lambda: run_tasks(_noop, [(k,) for k in range(args.workers)], engine="processes",
                                               workers=args.workers), repeats)
    print(f"  start-up of a pool of {args.workers} spawned processes importing xbatch's packing "
          f"(one empty task each): {startup:.2f} s")
    if has_ray:
        import ray

        # Ray starts its workers at niceness 15; on a shared machine they would then lose
        # the CPU to everything else. The serial engine and the pool run at 0: so does Ray here.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    sizes = {"xbatch": (args.files, args.file_documents), "npz": (args.files, args.file_documents // 8),
             "jsonl": (args.files // 2, args.file_documents // 80)}
    for kind in args.kinds:
        files, per_file = sizes[kind]
        what = {"xbatch": "xbatch corpus directories (only offsets.npy is read)",
                "npz": ".npz files (tokens and lengths read)", "jsonl": "JSON lines files (every token parsed)"}[kind]
        with tempfile.TemporaryDirectory(dir=args.scratch) as directory:
            paths = _write_files(directory, kind, files, per_file)
            tasks = [(path, None, None, arguments, None) for path in paths]
            total = files * per_file
            print(f"  {files} {what}, {per_file:,} documents each ({total:,} in all):")
            seconds = {}
            for name, engine in engines.items():
                seconds[name] = median_seconds(lambda: run_tasks(pack_file, tasks, **engine), repeats)
                serial = seconds[next(iter(seconds))]
                print(f"    {name:45s} {total / seconds[name]:12,.0f} documents/s  ({seconds[name]:6.2f} s,"
                      f" {serial / seconds[name]:.2f}x one process)")
    print(f"  load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("build", "rows", "jobs"), action="append")
    parser.add_argument("--documents", type=int, default=1_000_000, help="corpus of parts 1 and 2")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--file-documents", type=int, default=4_000_000,
                        help="documents per xbatch corpus file (/8 per .npz file, /80 per JSON lines file, half"
                        " as many of those)")
    parser.add_argument("--kinds", nargs="+", choices=("xbatch", "npz", "jsonl"), default=["xbatch", "npz", "jsonl"])
    parser.add_argument("--scratch", default=None, help="directory for the job's files (default: the temp dir)")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    parts = args.only or ["build", "rows", "jobs"]
    print(f"load average at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for part in parts:
        {"build": bench_build, "rows": bench_rows, "jobs": bench_jobs}[part](args)


if __name__ == "__main__":
    sys.exit(main())
