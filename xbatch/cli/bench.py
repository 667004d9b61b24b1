"""``xbatch bench``: xbatch's packers against grain's on the built-in corpus, as ratios."""

from __future__ import annotations

import argparse
import dataclasses

from .. import _backend
from ..compare import bench_corpora, compare_with_grain, format_comparisons
from .common import positive_int


def run(args: argparse.Namespace, out) -> None:
    num_documents = 2_000 if args.quick else args.num_documents
    repeats = 1 if args.quick else args.repeats
    print(
        f"packer self time, {num_documents:,} documents of the built-in corpus, {args.seq_len:,}-token rows, "
        f"{args.bins} bins, median of {repeats}; xbatch backend: {_backend.BACKEND}",
        file=out,
    )
    results = []
    for label, corpus in bench_corpora(num_documents).items():
        mean = corpus.num_tokens / corpus.num_documents
        for result in compare_with_grain(corpus, seq_len=args.seq_len, num_bins=args.bins, repeats=repeats):
            results.append(dataclasses.replace(result, case=f"{result.case} ({label}, mean {mean:.0f})"))
    print(format_comparisons(results), file=out)


def add_parser(commands) -> None:
    bench = commands.add_parser("bench", help="xbatch's packers against grain's on the built-in corpus")
    bench.add_argument("--quick", action="store_true", help="2,000 documents, one repeat: a smoke run")
    bench.add_argument("--num-documents", type=positive_int, default=20_000, help="default 20,000")
    bench.add_argument("--repeats", type=positive_int, default=3, help="timed runs per case (default 3)")
    bench.add_argument("--seq-len", type=positive_int, default=2048, help="tokens per row (default 2048)")
    bench.add_argument("--bins", type=positive_int, default=64, help="packing bins (default 64)")
    bench.set_defaults(run=run)
