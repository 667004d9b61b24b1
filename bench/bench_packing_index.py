"""Packing index benchmarks: build time and bytes per document, rows on demand, parallel jobs.

Run from the repository root: ``python bench/bench_packing_index.py [--documents N]``.
Everything runs in this one process (the parallel job starts its own workers), timings
are medians of ``--repeats`` runs after one untimed warm-up. Documents have geometric
lengths with a mean of about 90 tokens; rows are ``--seq-len`` tokens.

Peers, measured only where they load:
- Megatron-LM's ``build_sample_idx`` (``helpers_cpp`` of ``megatron-core``): set
  ``MEGATRON_HELPERS`` to the path of ``helpers_cpp*.so`` (it needs no torch).
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
from xbatch.packing.jobs import build_index
from xbatch.packing.packed_rows import FIELDS, PackedRows


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--big-documents", type=int, default=10_000_000)
    parser.add_argument("--olmo-documents", type=int, default=200_000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    n, seq_len = args.documents, args.seq_len
    lengths = make_lengths(n)
    tokens = np.random.default_rng(1).integers(1, 50_000, int(lengths.sum()), dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    print(f"corpus: {n:,} documents, {tokens.shape[0]:,} tokens, seq_len={seq_len}, medians of {args.repeats}")

    # 1. Index build against bulk packing and the peers -------------------------------
    bulk = median_seconds(lambda: pack_documents(tokens, lengths, seq_len=seq_len, eod_token_id=0), args.repeats)
    index = build_index(lengths, seq_len=seq_len, eod_token_id=0)
    build = median_seconds(lambda: build_index(lengths, seq_len=seq_len, eod_token_id=0), args.repeats)
    rows_bytes = 6 * 4 * index.num_rows * seq_len
    print(f"pack_documents (writes the rows):  {bulk:8.3f} s  {rows_bytes / n:10.1f} B/document")
    print(f"xbatch index, first_fit:           {build:8.3f} s  {index.nbytes / n:10.1f} B/document"
          f"  ({bulk / build:.1f}x faster than pack_documents)")
    megatron = load_megatron()
    if megatron is None:
        print("Megatron build_sample_idx: not measured (set MEGATRON_HELPERS to megatron-core's helpers_cpp*.so)")
    else:
        sizes = lengths.astype(np.int32)
        document_index = np.arange(n, dtype=np.int32)
        tokens_per_epoch = int(lengths.sum())
        def megatron_index():
            return megatron.build_sample_idx_int32(sizes, document_index, seq_len, 1, tokens_per_epoch, True, True)
        sample_idx = megatron_index()
        seconds = median_seconds(megatron_index, args.repeats)
        nbytes = sample_idx.nbytes + document_index.nbytes
        print(f"Megatron build_sample_idx:         {seconds:8.3f} s  {nbytes / n:10.1f} B/document"
              f"  (concatenates documents across samples; no placement, no padding)")
    packer_class = load_olmo_packer()
    m = args.olmo_documents
    small = lengths[:m]
    ours = median_seconds(lambda: pack_shard(small, seq_len=seq_len, eod_token_id=0,
                                             algorithm="best_fit_decreasing"), args.repeats)
    if packer_class is None:
        print("OLMo-core InstancePacker: not measured (set OLMO_CORE_UTILS to olmo_core/data/utils.py)")
    else:
        cells = np.minimum(small + 1, seq_len)  # OLMo truncates long documents; same cells as ours
        ends = np.cumsum(cells)
        document_indices = np.stack([ends - cells, ends], axis=1).astype(np.uint64)
        def olmo():
            return packer_class(seq_len).pack_documents(document_indices)
        instances, _, _ = olmo()
        seconds = median_seconds(olmo, 1)
        nbytes = document_indices.nbytes + 8 * sum(len(i) for i in instances) + 8 * (len(instances) + 1)
        print(f"OLMo-core InstancePacker ({m:,} docs): {seconds:8.3f} s  {nbytes / m:6.1f} B/document as arrays;"
              f" xbatch best_fit_decreasing index {ours:.3f} s ({seconds / ours:.0f}x faster)")

    # 2. Rows on demand against reading pre-written rows -------------------------------
    rows = PackedRows(tokens, offsets, index)
    rng = np.random.default_rng(2)
    batches = [rng.integers(0, len(rows), args.batch) for _ in range(100)]
    with tempfile.TemporaryDirectory() as directory:
        written = pack_documents(tokens, lengths, seq_len=seq_len, eod_token_id=0)
        for field in FIELDS:
            np.save(os.path.join(directory, f"{field}.npy"), getattr(written, field))
        del written
        maps = {f: np.load(os.path.join(directory, f"{f}.npy"), mmap_mode="r") for f in FIELDS}
        def prewritten():
            for batch in batches:
                {f: np.asarray(maps[f][batch]) for f in FIELDS}
        def on_demand():
            for batch in batches:
                rows.read_rows(batch)
        read = median_seconds(prewritten, args.repeats)
        built = median_seconds(on_demand, args.repeats)
        total = len(batches) * args.batch
        print(f"rows/s, random batches of {args.batch}: on demand {total / built:,.0f},"
              f" pre-written .npy (page cache) {total / read:,.0f} ({read / built:.2f}x)")

    # 3. The parallel job against one process, on lengths alone --------------------------
    big = make_lengths(args.big_documents, seed=3)
    serial = median_seconds(lambda: build_index(big, seq_len=seq_len, eod_token_id=0), 1)
    pooled = median_seconds(lambda: build_index(big, seq_len=seq_len, eod_token_id=0, engine="processes",
                                                workers=os.cpu_count()), 1)
    print(f"{args.big_documents:,} documents: serial {args.big_documents / serial:,.0f} docs/s,"
          f" {os.cpu_count()} processes {args.big_documents / pooled:,.0f} docs/s ({serial / pooled:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
