"""``xbatch pack [CORPUS]``: packs a tokenized corpus into LLMBatch rows and prints a summary."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import _backend
from .._atomic import atomic_output
from ..compare import _in_process_read_options
from ..corpus import SYNTHETIC_EOD, Corpus, read_corpus, synthetic_corpus
from ..packing.pieces import BULK_ALGORITHMS, LONG_DOCUMENTS, SHIFTS
from .common import CommandError, bins, check_rows_fit, positive_int, progress_factory, rate, row_length, token_id

# Documents per ragged chunk handed to the streaming packer (one progress-bar step).
CHUNK_DOCUMENTS = 4_096
# The engines of --index-out: xbatch.packing.jobs.ENGINES, spelled out here because that
# module loads the packers (and JAX) and `xbatch --help` should not (a test checks both).
ENGINES = ("serial", "processes", "ray")
ROW_FIELDS = (
    "targets", "inputs", "targets_segmentation", "inputs_segmentation",
    "targets_position", "inputs_position",
)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install counts as missing
        return False


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
    train_on_eod: bool = True
    max_documents_per_row: int | None = None

    @property
    def streams(self) -> bool:
        """Whether the streaming packer can do it (online placement within windows)."""
        return self.num_packing_bins is not None and not self.algorithm.endswith("_decreasing")


def pack_corpus(corpus: Corpus, options: PackOptions, progress: Callable[..., Any], *, keep_rows: bool = True):
    """Packs ``corpus``; returns (fields: dict of int32 [rows, seq_len], PackingStats).

    Online algorithms with a bin count run the streaming :class:`LLMPackIterDataset` on
    ragged chunks of ``CHUNK_DOCUMENTS`` documents (what a training pipeline sees, with a
    progress bar); whole-corpus and decreasing algorithms need every document at once
    and run :func:`pack_documents`, as do all algorithms where grain is not installed. Both
    give the same rows for the same arguments. With
    ``keep_rows=False`` the streaming path keeps only the first row (to show it), and
    costs no memory per row.
    """
    from ..packing import pack_documents

    arguments = dataclasses.asdict(options)
    if not options.streams or not _installed("grain"):  # the same rows without grain
        batch, stats = pack_documents(corpus.tokens, corpus.lengths, **arguments, loss_mask=corpus.loss_mask,
                                      prompt_lengths=corpus.prompt_lengths, return_stats=True)
        return {name: getattr(batch, name) for name in ROW_FIELDS}, stats
    import grain

    from ..packing import LLMPackIterDataset

    offsets = np.concatenate([[0], np.cumsum(corpus.lengths)])
    if corpus.loss_mask is not None and corpus.loss_mask.shape != corpus.tokens.shape:
        raise CommandError(  # a chunk's slice would hide the mismatch
            f"loss_mask: expected one value per token, shape {corpus.tokens.shape}, got {corpus.loss_mask.shape}"
        )
    chunks = []
    for start in range(0, corpus.num_documents, CHUNK_DOCUMENTS):
        stop = min(start + CHUNK_DOCUMENTS, corpus.num_documents)
        chunk = {"tokens": corpus.tokens[offsets[start]:offsets[stop]], "lengths": corpus.lengths[start:stop]}
        if corpus.loss_mask is not None:
            chunk["loss_mask"] = corpus.loss_mask[offsets[start]:offsets[stop]]
        if corpus.prompt_lengths is not None:
            chunk["prompt_lengths"] = corpus.prompt_lengths[start:stop]
        chunks.append(chunk)
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
    from ..kernels import document_borders

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


def percent(ratio: float) -> str:
    """``ratio`` as a percentage with two decimals that never rounds up to 100.00% or down
    to 0.00%: 0.999999 is ``99.99+%``."""
    text = f"{ratio:.2%}"
    if ratio < 1 and text == "100.00%":
        return "99.99+%"
    if ratio > 0 and text == "0.00%":
        return "0.00+%"
    return text


def check_corpus(corpus: Corpus, options: PackOptions, *, allow_empty: bool, keep_rows: bool) -> None:
    """The checks that need the whole corpus, before any packing: one line naming the problem."""
    if not allow_empty and corpus.num_tokens == 0:
        what = "no documents" if corpus.num_documents == 0 else f"{corpus.num_documents:,} documents but no tokens"
        raise CommandError(f"{corpus.name}: {what}; pass --allow-empty to pack it anyway")
    cells = corpus.lengths + 1  # each document and its EOD
    if options.long_documents == "error" and corpus.num_documents and cells.max() > options.seq_len:
        first = int(np.flatnonzero(cells > options.seq_len)[0])
        raise CommandError(
            f"{corpus.where(first)} has {int(corpus.lengths[first]):,} tokens, which with its EOD exceed "
            f"--seq-len {options.seq_len:,} (--long-documents error); use --long-documents split or truncate"
        )
    # At least the rows that hold every cell once, when they are kept or packed at once,
    # and a window of up to --bins rows when streaming.
    rows = -(-int(cells.sum()) // options.seq_len) if keep_rows or not options.streams else 0
    if options.streams:
        rows += min(options.num_packing_bins, max(corpus.num_documents, 1))
    check_rows_fit(rows, options.seq_len, "use a smaller --seq-len or --bins, or a smaller corpus")


def summarize(corpus: Corpus, options: PackOptions, stats, seconds: float, output: Path | None) -> str:
    """The summary ``xbatch pack`` prints after packing."""
    bins_text = "the whole corpus" if options.num_packing_bins is None else f"{options.num_packing_bins} bins"
    lines = [
        f"packed {corpus.num_documents:,} documents ({corpus.num_tokens:,} tokens) from {corpus.name}",
        f"  rows                {stats.rows:,} of {options.seq_len:,} tokens ({options.algorithm}, {bins_text})",
        f"  fill ratio          {percent(stats.fill_ratio)} (document and EOD tokens / row capacity)",
        f"  loss tokens         {stats.loss_tokens:,} ({percent(stats.loss_ratio)} of the tokens placed are "
        "targets trained on)",
        f"  documents split     {stats.documents_split:,} (long_documents={options.long_documents})",
        f"  tokens truncated    {stats.tokens_truncated:,}",
        f"  speed               {rate(corpus.num_documents, seconds, 'documents')}, "
        f"{rate(corpus.num_tokens, seconds, 'tokens')} ({seconds:.3f} s packing"
        + (" and collecting the rows)" if output is not None else ")"),
        f"  backend             {_backend.BACKEND}",
    ]
    if options.max_documents_per_row is not None:
        lines.insert(3, f"  documents per row   at most {options.max_documents_per_row:,} (--max-documents-per-row)")
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


def run(args: argparse.Namespace, out) -> None:
    progress = progress_factory(not args.no_progress)
    if args.index_out is not None:  # many files, in parallel, into a packing index
        from . import pack_index

        pack_index.run(args, out, progress)
        return
    for flag, given in (("--engine", args.engine != "serial"), ("--workers", args.workers),
                        ("--shard-documents", args.shard_documents)):
        if given:
            raise CommandError(f"{flag}: goes with --index-out DIR (rows of one corpus are packed in this process)")
    if len(args.corpus) > 1:
        raise CommandError(f"CORPUS: {len(args.corpus)} files given; several files pack into a packing index "
                           "with --index-out DIR (or convert them into one corpus first)")
    if args.lengths is not None and len(args.lengths) > 1:
        raise CommandError(f"--lengths: given {len(args.lengths)} times for one .npy of tokens")
    args.corpus = args.corpus[0] if args.corpus else None
    args.lengths = args.lengths[0] if args.lengths else None
    output = Path(args.output) if args.output else None
    _check_output(output)
    if args.corpus is None:
        if args.num_documents < 1:
            raise CommandError(f"--num-documents: expected an integer >= 1, got {args.num_documents}")
        if args.prompt_field or args.mask_field:
            raise CommandError("--prompt-field, --mask-field: need a CORPUS file (JSON lines or Parquet)")
        corpus = synthetic_corpus(args.num_documents, seed=args.seed)
        eod = SYNTHETIC_EOD if args.eod is None else args.eod
    else:
        if args.eod is None:
            raise CommandError("--eod: required with a corpus file (your tokenizer's end-of-document id)")
        lengths_path = Path(args.lengths) if args.lengths is not None else None
        corpus = read_corpus(Path(args.corpus), field=args.field, lengths_path=lengths_path, progress=progress,
                             prompt_field=args.prompt_field, mask_field=args.mask_field)
        eod = args.eod
    options = PackOptions(
        seq_len=args.seq_len,
        num_packing_bins=args.bins,
        eod_token_id=eod,
        pad_token_id=args.pad,
        algorithm=args.algorithm,
        long_documents=args.long_documents,
        shift=args.shift,
        train_on_eod=not args.no_eod_loss,
        max_documents_per_row=args.max_documents_per_row,
    )
    if options.algorithm.endswith("_decreasing") and options.num_packing_bins is not None:
        raise CommandError(
            f"--algorithm {options.algorithm} sorts the whole corpus; use it with --bins all"
        )
    if args.attention_metadata and options.max_documents_per_row is None:
        raise CommandError("--attention-metadata: needs --max-documents-per-row M (the segment slots per row)")
    if args.attention_metadata and output is None:
        raise CommandError("--attention-metadata: stores seq_lengths and seq_offsets in the --output file; give -o")
    check_corpus(corpus, options, allow_empty=args.allow_empty, keep_rows=output is not None)
    if options.streams and _installed("grain"):
        from ..packing import LLMPackIterDataset  # noqa: F401 - import outside the timing
    else:
        from ..packing import pack_documents  # noqa: F401

    start = time.perf_counter()
    fields, stats = pack_corpus(corpus, options, progress, keep_rows=output is not None)
    seconds = time.perf_counter() - start
    if args.attention_metadata:  # what the packers' attention_metadata=True gives, for every row at once
        from ..packing.attention import row_metadata

        fields.update(row_metadata(fields["inputs_segmentation"], max_segments=options.max_documents_per_row))
    if output is not None:
        try:
            with atomic_output(output) as file:  # an interrupt or full disk keeps the old file
                np.savez(file, **fields)
        except OSError as exc:
            raise CommandError(f"--output: cannot write {output} ({exc.strerror or exc})") from None
    print(summarize(corpus, options, stats, seconds, output), file=out)
    if args.attention_metadata:
        print(f"  attention metadata  seq_lengths [rows, {options.max_documents_per_row}], seq_offsets "
              f"[rows, {options.max_documents_per_row + 1}] in {output} (--attention-metadata)", file=out)
    if stats.rows:
        print(render_row(fields, 0, eod_token_id=eod), file=out)


def add_parser(commands) -> None:
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
    pack.add_argument("corpus", nargs="*", metavar="CORPUS",
                      help="the tokenized corpus; omit for the built-in one; several files with --index-out")
    pack.add_argument("-o", "--output", help="write the packed fields to this .npz")
    pack.add_argument("--index-out", metavar="DIR",
                      help="write a packing index of the CORPUS files (placement only, a few bytes per document; "
                      "rows are built on demand by xbatch.packing.packed_rows.PackedRows) into this new directory "
                      "instead of packing rows; each file is one task, rows never span files")
    pack.add_argument("--engine", choices=ENGINES, default="serial",
                      help="with --index-out: run the files' tasks in this process (serial), a local process pool "
                      "(processes) or on Ray (ray: the cluster of RAY_ADDRESS, or a local one; needs xbatch[ray]); "
                      "all give the same index, byte for byte (default serial)")
    pack.add_argument("--workers", type=positive_int, default=None,
                      help="with --engine processes: pool size (default the CPU count); with ray: most tasks at "
                      "once (default: as many as Ray schedules)")
    pack.add_argument("--shard-documents", type=positive_int, default=None,
                      help="with --index-out: cut each file into shards of at most this many documents, packed "
                      "one after the other (rows never span shards; default: a file is one shard)")
    pack.add_argument("--seq-len", type=row_length, default=2048, help="tokens per row (default 2048)")
    pack.add_argument("--bins", type=bins, default=64,
                      help="packing bins per window, or 'all' for one window over the corpus (default 64)")
    pack.add_argument("--algorithm", choices=BULK_ALGORITHMS, default="first_fit",
                      help="placement; the *_decreasing ones need --bins all (default first_fit)")
    pack.add_argument("--eod", type=token_id, default=None,
                      help=f"end-of-document token id; required with CORPUS ({SYNTHETIC_EOD} for the built-in one)")
    pack.add_argument("--pad", type=token_id, default=0, help="padding token id (default 0)")
    pack.add_argument("--long-documents", choices=LONG_DOCUMENTS, default="split",
                      help="documents longer than a row: split, truncate or error (default split)")
    pack.add_argument("--shift", choices=SHIFTS, default="inputs",
                      help="shift the inputs right (the LLMBatch layout) or the targets left (default inputs)")
    pack.add_argument("--field", help="JSONL object key or Parquet column holding the token lists")
    pack.add_argument("--prompt-field",
                      help="JSONL key or Parquet column of prompt token lists: each document is its prompt "
                      "followed by --field's tokens, and the prompt is not trained on (targets_segmentation 0)")
    pack.add_argument("--mask-field",
                      help="JSONL key or Parquet column of 0/1 lists aligned with --field's tokens: 1 where a "
                      "token is trained on (an .npz carries an array 'loss_mask' or 'prompt_lengths' instead)")
    pack.add_argument("--no-eod-loss", action="store_true",
                      help="do not train on the end-of-document targets (default: trained on)")
    pack.add_argument("--max-documents-per-row", type=positive_int, default=None,
                      help="at most this many documents (pieces) per row, for attention kernels with a static "
                      "segment count (default: no cap)")
    pack.add_argument("--attention-metadata", action="store_true",
                      help="also store seq_lengths [rows, M] and seq_offsets [rows, M+1] (M = "
                      "--max-documents-per-row, -1 padded) in the --output file: the attention metadata of "
                      "each row (see xbatch.packing.attention_metadata)")
    pack.add_argument("--lengths", action="append",
                      help="the .npy of per-document lengths that goes with a .npy of tokens (with --index-out: "
                      "once per .npy input, in order)")
    pack.add_argument("--num-documents", type=int, default=20_000,
                      help="documents in the built-in corpus (default 20,000)")
    pack.add_argument("--seed", type=int, default=0, help="seed of the built-in corpus (default 0)")
    pack.add_argument("--no-progress", action="store_true", help="no progress bar")
    pack.add_argument("--allow-empty", action="store_true",
                      help="pack a corpus without documents or tokens (zero rows) instead of failing")
    pack.set_defaults(run=run)
