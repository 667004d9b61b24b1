"""Plain benchmark runner: xbatch against grain, side by side, one process, no asv.

    python bench/run.py [--num-documents N] [--repeats R]

Prints ONE table: for each case of ``xbatch bench`` (the drop-in packer, and the LLM
layout from documents, ragged chunks and in bulk, on short and long documents), grain's
documents/s, xbatch's on the compiled and on the NumPy backend, and the ratios. Times are
packer self times (pipeline minus iterating its parent alone, parents read in-process with
grain's ``ReadOptions(num_threads=0)``), medians of at least ``--repeats`` runs and at
least ``--min-time`` seconds of runs per pipeline; the widest spread of any case's runs is
printed below the table. Progress goes to stderr, one line per case.
The per-topic asv suites (``bench_*.py``, run with asv or as scripts) go deeper.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from xbatch import _backend, _kernels_numpy, compare


@contextlib.contextmanager
def kernels_of(backend: str):
    """Routes every xbatch kernel call to ``backend`` ("cython" or "numpy") inside the block."""
    module = _kernels_numpy if backend == "numpy" else _backend.compiled_module()
    if module is None:
        raise RuntimeError("the compiled extension is not built")
    saved = _backend.impl, _backend.BACKEND
    _backend.impl, _backend.BACKEND = module, backend
    try:
        yield
    finally:
        _backend.impl, _backend.BACKEND = saved


def measure(num_documents: int, repeats: int, backends: list[str],
            min_seconds: float = 0.0) -> tuple[dict[str, dict[str, float]], float]:
    """(documents/s by case, for "grain" and each backend (grain's best over the runs);
    the widest spread of any pipeline's runs)."""
    rates: dict[str, dict[str, float]] = {}
    spreads = [0.0]

    def progress(result: compare.Comparison) -> None:
        spreads.extend((result.grain_spread, result.xbatch_spread))
        print(f"  {result.case}: {result.speedup:.1f}x (spread {result.xbatch_spread:.0%})", file=sys.stderr,
              flush=True)

    for backend in backends:
        with kernels_of(backend):
            for label, corpus in compare.bench_corpora(num_documents).items():
                mean = corpus.num_tokens / corpus.num_documents
                print(f"{backend}, {label}:", file=sys.stderr, flush=True)
                for result in compare.compare_with_grain(corpus, repeats=repeats, min_seconds=min_seconds,
                                                         on_result=progress):
                    case = rates.setdefault(f"{result.case} ({label}, mean {mean:.0f})", {})
                    case[backend] = result.documents / result.xbatch_seconds
                    case["grain"] = max(case.get("grain", 0.0), result.documents / result.grain_seconds)
    return rates, max(spreads)


def format_table(rates: dict[str, dict[str, float]], backends: list[str]) -> str:
    width = max(map(len, rates))
    columns = ["grain", *backends]
    ratios = [(b, "grain") for b in backends] + ([("cython", "numpy")] if len(backends) == 2 else [])
    header = f"{'case (documents/s)':<{width}}" + "".join(f"{c:>12}" for c in columns)
    header += "".join(f"{f'{a}/{b}':>14}" for a, b in ratios)
    lines = [header]
    for case, rate in rates.items():
        line = f"{case:<{width}}" + "".join(f"{rate[c]:>12,.0f}" for c in columns)
        line += "".join(f"{rate[a] / rate[b]:>13.1f}x" for a, b in ratios)
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-documents", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed runs per pipeline, at least")
    args = parser.parse_args(argv)
    backends = ["cython", "numpy"]
    if _backend.compiled_module() is None:
        print("the compiled extension is not built: NumPy backend only", file=sys.stderr)
        backends = ["numpy"]
    print(f"xbatch vs grain, packer self time, {args.num_documents:,} documents per corpus, "
          f"2,048-token rows, 64 bins, median of >= {args.repeats} runs and >= {args.min_time:g} s per pipeline")
    rates, widest = measure(args.num_documents, args.repeats, backends, args.min_time)
    print(format_table(rates, backends))
    print(f"widest spread of any pipeline's runs: {widest:.0%} of its median ((slowest - fastest) / median)")


if __name__ == "__main__":
    main()
