"""The ``xbatch`` command.

``xbatch info``
    xbatch's version, the active kernel backend, where the compiled kernels were loaded
    from (or why not), and the numpy / jax / grain versions.
``xbatch pack [CORPUS]``
    Packs a tokenized corpus into rows of the :class:`xbatch.batch.LLMBatch` layout and
    prints a summary; without ``CORPUS`` it packs a built-in synthetic corpus.
``xbatch bench``
    xbatch's packers against grain's ``FirstFitPackIterDataset`` on the built-in corpus,
    printed as a table of ratios.

Bad files and options end with one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import __version__, _backend
from .compare import (
    _in_process_read_options,
    bench_corpora,
    compare_with_grain,
    format_comparisons,
)
from .corpus import SYNTHETIC_EOD, Corpus, read_corpus, synthetic_corpus
from .packing.pieces import BULK_ALGORITHMS, LONG_DOCUMENTS, SHIFTS

# Documents per ragged chunk handed to the streaming packer (one progress-bar step).
CHUNK_DOCUMENTS = 4_096
ROW_FIELDS = (
    "targets", "inputs", "targets_segmentation", "inputs_segmentation",
    "targets_position", "inputs_position",
)


class CommandError(Exception):
    """A problem with the user's files or options: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line and exits with status 1."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --- progress -------------------------------------------------------------------------


class _NoBar:
    """Stands in for a tqdm bar where tqdm is not installed."""

    n = 0

    def __init__(self, **_: Any) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *_: Any) -> None:
        pass

    def update(self, _: int = 1) -> None:
        pass


def _progress_factory(enabled: bool) -> Callable[..., Any]:
    """tqdm on stderr (it hides itself when stderr is not a terminal), or no bar."""
    if not enabled:
        return _NoBar
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional (the "cli" extra)
        return _NoBar
    return lambda **kwargs: tqdm(disable=None, leave=False, file=sys.stderr, **kwargs)


# --- xbatch pack ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PackOptions:
    """The packer arguments ``xbatch pack`` passes on (see :func:`xbatch.packing.pack_documents`)."""

    seq_len: int
    num_packing_bins: int | None
    eod_token_id: int
    pad_token_id: int
    algorithm: str
    long_documents: str
    shift: str

    @property
    def streams(self) -> bool:
        """Whether the streaming packer can do it (online placement within windows)."""
        return self.num_packing_bins is not None and not self.algorithm.endswith("_decreasing")


def pack_corpus(corpus: Corpus, options: PackOptions, progress: Callable[..., Any], *, keep_rows: bool = True):
    """Packs ``corpus``; returns (fields: dict of int32 [rows, seq_len], PackingStats).

    Online algorithms with a bin count run the streaming :class:`LLMPackIterDataset` on
    ragged chunks of ``CHUNK_DOCUMENTS`` documents (what a training pipeline sees, with a
    progress bar); whole-corpus and decreasing algorithms need every document at once
    and run :func:`pack_documents`. Both give the same rows for the same arguments. With
    ``keep_rows=False`` the streaming path keeps only the first row (to show it), and
    costs no memory per row.
    """
    from .packing import pack_documents

    arguments = dataclasses.asdict(options)
    if not options.streams:
        batch, stats = pack_documents(corpus.tokens, corpus.lengths, **arguments, return_stats=True)
        return {name: getattr(batch, name) for name in ROW_FIELDS}, stats
    import grain

    from .packing import LLMPackIterDataset

    offsets = np.concatenate([[0], np.cumsum(corpus.lengths)])
    chunks = [
        {
            "tokens": corpus.tokens[offsets[start]:offsets[min(start + CHUNK_DOCUMENTS, corpus.num_documents)]],
            "lengths": corpus.lengths[start:start + CHUNK_DOCUMENTS],
        }
        for start in range(0, corpus.num_documents, CHUNK_DOCUMENTS)
    ]
    parent = grain.MapDataset.source(chunks).to_iter_dataset(_in_process_read_options())
    iterator = iter(LLMPackIterDataset(parent, **arguments))
    # Rows are written straight into arrays sized for the most rows possible (one per
    # piece); pages never written are never touched, so the excess costs no memory.
    max_rows = int((-(-(corpus.lengths + 1) // options.seq_len)).sum()) if keep_rows else 1
    fields = {name: np.empty((max_rows, options.seq_len), np.int32) for name in ROW_FIELDS}
    num_rows = 0
    with progress(total=corpus.num_documents, unit="doc", unit_scale=True, desc="packing") as bar:
        for row in iterator:
            if num_rows < max_rows:
                for name in ROW_FIELDS:
                    fields[name][num_rows] = row[name]
            num_rows += 1
            if num_rows % 256 == 0:
                bar.update(iterator.stats.documents - bar.n)
    return {name: field[:num_rows] for name, field in fields.items()}, iterator.stats


def render_row(fields: dict[str, np.ndarray], row: int, *, eod_token_id: int, width: int = 16) -> str:
    """One packed row as the seed's table: ``width`` columns around its first document border.

    ``E`` stands for the end-of-document token in ``targets`` and ``inputs``.
    """
    from .kernels import document_borders

    seq_len = fields["targets"].shape[1]
    borders = document_borders(fields["inputs_segmentation"][row:row + 1])[0].astype(np.int32)
    later = np.flatnonzero(borders[1:]) + 1
    start = 0 if later.size == 0 else int(max(0, min(later[0] - width // 2, seq_len - width)))
    stop = min(start + width, seq_len)
    table = {name: fields[name][row, start:stop] for name in ROW_FIELDS}
    table["doc borders"] = borders[start:stop]

    def cell(name: str, value: int) -> str:
        return "E" if name in ("targets", "inputs") and value == eod_token_id else str(int(value))

    cells = {name: [cell(name, value) for value in values] for name, values in table.items()}
    column_width = max(len(text) for texts in cells.values() for text in texts)
    label_width = max(len(name) for name in cells)
    lines = [f"row {row}, columns {start}..{stop - 1} of {seq_len} (E = end of document, id {eod_token_id}):"]
    for name, texts in cells.items():
        lines.append(f"  {name:<{label_width}}  [" + ", ".join(f"{t:>{column_width}}" for t in texts) + "]")
    return "\n".join(lines)


def _rate(count: float, seconds: float, unit: str) -> str:
    """``count / seconds`` as text such as ``1.23 M tokens/s``."""
    value = count / seconds if seconds > 0 else 0.0
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {prefix} {unit}/s"
    return f"{value:.0f} {unit}/s"


def summarize(corpus: Corpus, options: PackOptions, stats, seconds: float, output: Path | None) -> str:
    """The summary ``xbatch pack`` prints after packing."""
    bins = "the whole corpus" if options.num_packing_bins is None else f"{options.num_packing_bins} bins"
    lines = [
        f"packed {corpus.num_documents:,} documents ({corpus.num_tokens:,} tokens) from {corpus.name}",
        f"  rows                {stats.rows:,} of {options.seq_len:,} tokens ({options.algorithm}, {bins})",
        f"  fill ratio          {stats.fill_ratio:.2%} (document and EOD tokens / row capacity)",
        f"  documents split     {stats.documents_split:,} (long_documents={options.long_documents})",
        f"  tokens truncated    {stats.tokens_truncated:,}",
        f"  speed               {_rate(corpus.num_documents, seconds, 'documents')}, "
        f"{_rate(corpus.num_tokens, seconds, 'tokens')} ({seconds:.3f} s packing"
        + (" and collecting the rows)" if output is not None else ")"),
        f"  backend             {_backend.BACKEND}",
    ]
    if output is not None:
        lines.append(f"  written to          {output}")
    return "\n".join(lines)


def _check_output(path: Path | None) -> None:
    """Fails before the work, not after it, on an output that cannot be written."""
    if path is None:
        return
    if path.suffix != ".npz":
        raise CommandError(f"--output: expected a file name ending in .npz, got {str(path)!r}")
    if not path.parent.is_dir():
        raise CommandError(f"--output: the directory {str(path.parent)!r} does not exist")


def command_pack(args: argparse.Namespace, out) -> None:
    output = Path(args.output) if args.output else None
    _check_output(output)
    progress = _progress_factory(not args.no_progress)
    if args.corpus is None:
        if args.num_documents < 1:
            raise CommandError(f"--num-documents: expected an integer >= 1, got {args.num_documents}")
        corpus = synthetic_corpus(args.num_documents, seed=args.seed)
        eod = SYNTHETIC_EOD if args.eod is None else args.eod
    else:
        if args.eod is None:
            raise CommandError("--eod: required with a corpus file (your tokenizer's end-of-document id)")
        lengths_path = Path(args.lengths) if args.lengths else None
        corpus = read_corpus(Path(args.corpus), field=args.field, lengths_path=lengths_path, progress=progress)
        eod = args.eod
    options = PackOptions(
        seq_len=args.seq_len,
        num_packing_bins=args.bins,
        eod_token_id=eod,
        pad_token_id=args.pad,
        algorithm=args.algorithm,
        long_documents=args.long_documents,
        shift=args.shift,
    )
    if options.algorithm.endswith("_decreasing") and options.num_packing_bins is not None:
        raise CommandError(
            f"--algorithm {options.algorithm} sorts the whole corpus; use it with --bins all"
        )
    from .packing import LLMPackIterDataset, pack_documents  # noqa: F401 - import outside the timing

    start = time.perf_counter()
    fields, stats = pack_corpus(corpus, options, progress, keep_rows=output is not None)
    seconds = time.perf_counter() - start
    if output is not None:
        try:
            np.savez(output, **fields)
        except OSError as exc:
            raise CommandError(f"--output: cannot write {output} ({exc.strerror or exc})") from None
    print(summarize(corpus, options, stats, seconds, output), file=out)
    if stats.rows:
        print(render_row(fields, 0, eod_token_id=eod), file=out)


# --- xbatch bench ---------------------------------------------------------------------


def command_bench(args: argparse.Namespace, out) -> None:
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


# --- xbatch info ----------------------------------------------------------------------


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe_installation() -> str:
    """xbatch's version and backend, where the compiled kernels come from, library versions."""
    compiled = _backend.compiled_module()
    if _backend.BACKEND == "cython":
        extension = compiled.__file__
    elif compiled is not None:
        extension = f"built at {compiled.__file__}, not used: {_backend.FALLBACK_REASON}"
    else:
        extension = f"not used: {_backend.FALLBACK_REASON}"
    rows = [
        ("xbatch", __version__),
        ("backend", _backend.BACKEND),
        ("extension", extension),
        ("python", sys.version.split()[0]),
        *((name, _version(name)) for name in ("numpy", "jax", "grain", "tqdm", "pyarrow")),
    ]
    return "\n".join(f"{name:<10} {value}" for name, value in rows)


def command_info(args: argparse.Namespace, out) -> None:
    print(describe_installation(), file=out)


# --- the command line -----------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _bins(text: str) -> int | None:
    return None if text == "all" else _positive_int(text)


def _token_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= np.iinfo(np.int32).max:
        raise argparse.ArgumentTypeError(f"expected a token id in [0, 2**31), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xbatch", description="Packs tokenized documents into fixed-shape LLM batches.")
    parser.add_argument("--version", action="version", version=f"xbatch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser("info", help="versions, the active backend and where its kernels come from")
    info.set_defaults(run=command_info)

    pack = commands.add_parser(
        "pack",
        help="pack a tokenized corpus (or a built-in synthetic one) into LLMBatch rows",
        description="Packs documents into rows of --seq-len tokens in the LLMBatch layout and prints a "
        "summary. CORPUS: an .npz with 1-d arrays 'tokens' and 'lengths' (tokens of all documents back "
        "to back, tokens per document); a .npy of tokens with --lengths LENGTHS.npy; JSON lines "
        "(.jsonl, .jsonl.gz), one token list per line or an object with --field; or Parquet (.parquet, "
        "needs pyarrow), a list-of-integers column named by --field. Without CORPUS: a built-in "
        "synthetic corpus (32,000-token vocabulary, EOD 1, lognormal lengths).",
    )
    pack.add_argument("corpus", nargs="?", help="the tokenized corpus; omit for the built-in one")
    pack.add_argument("-o", "--output", help="write the packed fields to this .npz")
    pack.add_argument("--seq-len", type=_positive_int, default=2048, help="tokens per row (default 2048)")
    pack.add_argument("--bins", type=_bins, default=64,
                      help="packing bins per window, or 'all' for one window over the corpus (default 64)")
    pack.add_argument("--algorithm", choices=BULK_ALGORITHMS, default="first_fit",
                      help="placement; the *_decreasing ones need --bins all (default first_fit)")
    pack.add_argument("--eod", type=_token_id, default=None,
                      help=f"end-of-document token id; required with CORPUS ({SYNTHETIC_EOD} for the built-in one)")
    pack.add_argument("--pad", type=_token_id, default=0, help="padding token id (default 0)")
    pack.add_argument("--long-documents", choices=LONG_DOCUMENTS, default="split",
                      help="documents longer than a row: split, truncate or error (default split)")
    pack.add_argument("--shift", choices=SHIFTS, default="inputs",
                      help="shift the inputs right (the LLMBatch layout) or the targets left (default inputs)")
    pack.add_argument("--field", help="JSONL object key or Parquet column holding the token lists")
    pack.add_argument("--lengths", help="the .npy of per-document lengths that goes with a .npy of tokens")
    pack.add_argument("--num-documents", type=int, default=20_000,
                      help="documents in the built-in corpus (default 20,000)")
    pack.add_argument("--seed", type=int, default=0, help="seed of the built-in corpus (default 0)")
    pack.add_argument("--no-progress", action="store_true", help="no progress bar")
    pack.set_defaults(run=command_pack)

    bench = commands.add_parser("bench", help="xbatch's packers against grain's on the built-in corpus")
    bench.add_argument("--quick", action="store_true", help="2,000 documents, one repeat: a smoke run")
    bench.add_argument("--num-documents", type=_positive_int, default=20_000, help="default 20,000")
    bench.add_argument("--repeats", type=_positive_int, default=3, help="timed runs per case (default 3)")
    bench.add_argument("--seq-len", type=_positive_int, default=2048, help="tokens per row (default 2048)")
    bench.add_argument("--bins", type=_positive_int, default=64, help="packing bins (default 64)")
    bench.set_defaults(run=command_bench)
    return parser


def main(argv: Sequence[str] | None = None, out=None) -> int:
    """Runs the ``xbatch`` command with ``argv`` (default ``sys.argv[1:]``); the exit status.

    User errors (bad files, options, or arguments the packers reject) print one line on
    stderr and give 1.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad option (one line, status 1)
        return exc.code
    if args.command is None:
        parser.print_help(out or sys.stdout)
        return 1
    try:
        args.run(args, out or sys.stdout)
    except (CommandError, ValueError, TypeError) as exc:
        print(f"xbatch {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"xbatch {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
