"""``xbatch bench``: xbatch's packers against grain's on the built-in corpus, as ratios.

Each case's line is printed as soon as it is measured. Figures are packer self times
(pipeline minus iterating its parent alone, parents read in-process with grain's
``ReadOptions(num_threads=0)``), medians over at least ``--repeats`` runs and at least
``--min-time`` seconds of runs per pipeline; the spread columns say how far apart the
runs were.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools

from .. import _backend
from ..compare import COLUMNS, bench_corpora, compare_with_grain, format_comparison
from .common import check_rows_fit, positive_float, positive_int, row_length

# Room for the longest case name and its corpus label.
CASE_WIDTH = 66


def run(args: argparse.Namespace, out) -> None:
    num_documents = 2_000 if args.quick else args.num_documents
    repeats = 3 if args.quick else args.repeats
    min_seconds = 0.2 if args.quick else args.min_time
    # grain and xbatch each hold a window of up to --bins rows.
    check_rows_fit(2 * min(args.bins, num_documents), args.seq_len, "use a smaller --seq-len or --bins")
    import grain  # noqa: F401 - the comparison needs grain: fail before printing anything

    print(
        f"packer self time (reading and tokenizing excluded; grain parents with ReadOptions(num_threads=0)), "
        f"{num_documents:,} documents of the built-in corpus, {args.seq_len:,}-token rows, {args.bins} bins, "
        f"median of >= {repeats} runs and >= {min_seconds:g} s per pipeline; spread = (slowest - fastest run) / "
        f"median; xbatch backend: {_backend.BACKEND}",
        file=out,
    )
    print(f"{'case':<{CASE_WIDTH}}  {COLUMNS}", file=out, flush=True)
    for label, corpus in bench_corpora(num_documents).items():
        mean = corpus.num_tokens / corpus.num_documents
        show = functools.partial(_show, out=out, suffix=f" ({label}, mean {mean:.0f})")
        compare_with_grain(corpus, seq_len=args.seq_len, num_bins=args.bins, repeats=repeats,
                           min_seconds=min_seconds, on_result=show)


def _show(result, *, out, suffix: str) -> None:
    result = dataclasses.replace(result, case=result.case + suffix)
    print(format_comparison(result, CASE_WIDTH), file=out, flush=True)


def add_parser(commands) -> None:
    bench = commands.add_parser("bench", help="xbatch's packers against grain's on the built-in corpus")
    bench.add_argument("--quick", action="store_true",
                       help="2,000 documents, >= 3 runs and >= 0.2 s per pipeline: a smoke run")
    bench.add_argument("--num-documents", type=positive_int, default=20_000, help="default 20,000")
    bench.add_argument("--repeats", type=positive_int, default=5, help="timed runs per pipeline, at least (default 5)")
    bench.add_argument("--min-time", type=positive_float, default=1.0,
                       help="seconds of timed runs per pipeline, at least (default 1.0)")
    bench.add_argument("--seq-len", type=row_length, default=2048, help="tokens per row (default 2048)")
    bench.add_argument("--bins", type=positive_int, default=64, help="packing bins (default 64)")
    bench.set_defaults(run=run)
