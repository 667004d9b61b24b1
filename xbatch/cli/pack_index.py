"""``xbatch pack FILE [FILE ...] --index-out DIR``: a packing index over many files, in parallel.

Each input file is one task: it is read (only the document lengths are kept) and packed
into a :class:`~xbatch.packing.index.PackingIndex` by the pure
:func:`~xbatch.packing.index.pack_shard`, with its documents numbered from 0. The tasks
run in this process, a local process pool or on Ray (:func:`xbatch.packing.jobs.run_tasks`);
their indexes are then numbered after the files before them and merged in file order, so
every engine writes the same index, byte for byte. Rows never span files (nor shards of
``--shard-documents`` documents): the index holds the rows ``pack_documents`` gives each
file (each shard) in turn.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..corpus import read_corpus
from ..packing.index import corpus_identity, index_arguments, merge_indexes, move_documents, pack_shard, save_index
from ..packing.jobs import run_tasks, shard_ranges
from .common import CommandError, NoBar, rate, size_text


def pack_file(path: str, field: str | None, lengths_path: str | None, arguments: dict[str, Any],
              shard_documents: int | None) -> tuple[Any, np.ndarray]:
    """One task: (the file's index, documents numbered from 0; its int64 document lengths).

    Module-level, so that the process pool and Ray send it by name.
    """
    lengths, lines = _file_lengths(Path(path), field, None if lengths_path is None else Path(lengths_path))
    if arguments["long_documents"] == "error" and lengths.size and lengths.max() + 1 > arguments["seq_len"]:
        first = int(np.flatnonzero(lengths + 1 > arguments["seq_len"])[0])
        line = "" if lines is None else f" (line {int(lines[first])})"
        raise CommandError(
            f"{path}: document {first}{line} has {int(lengths[first]):,} tokens, which with its EOD exceed --seq-len "
            f"{arguments['seq_len']:,} (--long-documents error); use --long-documents split or truncate"
        )
    ranges = shard_ranges(lengths.shape[0], shard_documents or max(lengths.shape[0], 1))
    parts = [pack_shard(lengths[a:b], first_document=a, **arguments) for a, b in ranges]
    index = merge_indexes(parts)
    # Each shard records the file it came from (the manifest lists them).
    shards = tuple({"source": path, **shard} for shard in index.shards)
    return dataclasses.replace(index, shards=shards), lengths


def _file_lengths(path: Path, field: str | None, lengths_path: Path | None) -> tuple[np.ndarray, Any]:
    """(int64 document lengths, each document's line or None) of one input file, refusing
    what an index cannot hold."""
    from ..sources.open import is_source_path

    if is_source_path(path):  # memory-mapped formats: the lengths alone, no token is read
        from ..sources import CorpusError as SourceError
        from ..sources import open_corpus

        try:
            source = open_corpus(path, field=field)
        except SourceError as exc:
            raise CommandError(str(exc)) from None
        if source.has_token_column("loss_mask"):
            raise CommandError(f"{path}: has a loss_mask column; a packing index holds no loss masks yet")
        return source.lengths().astype(np.int64, copy=False), None
    corpus = read_corpus(path, field=field, lengths_path=lengths_path, progress=NoBar)
    if corpus.loss_mask is not None or corpus.prompt_lengths is not None:
        raise CommandError(f"{path}: has a loss mask or prompt lengths; a packing index holds no loss masks yet")
    return corpus.lengths.astype(np.int64, copy=False), corpus.lines


def _lengths_paths(corpora: list[str], lengths: list[str] | None) -> list[str | None]:
    """The --lengths file of each input: one per .npy input, in order."""
    npy = [path for path in corpora if path.lower().endswith(".npy")]
    given = list(lengths or [])
    if len(given) != len(npy):
        raise CommandError(
            f"--lengths: expected one per .npy input, in order ({len(npy)}: {', '.join(npy) or 'none'}), "
            f"got {len(given)}"
        )
    paired = dict(zip(npy, given))
    return [paired.get(path) for path in corpora]


def check_options(args: argparse.Namespace) -> None:
    """The options ``--index-out`` does not go with: one line naming them."""
    if not args.corpus:
        raise CommandError("--index-out: needs CORPUS files (rows are built on demand from the files and the index)")
    for flag, given in (("--output", args.output), ("--prompt-field", args.prompt_field),
                        ("--mask-field", args.mask_field), ("--no-eod-loss", args.no_eod_loss),
                        ("--attention-metadata", getattr(args, "attention_metadata", False))):
        if given:
            raise CommandError(f"{flag}: not with --index-out (an index holds the placement only, no rows and no "
                               "loss masks)")
    if args.eod is None:
        raise CommandError("--eod: required with a corpus file (your tokenizer's end-of-document id)")
    if args.algorithm.endswith("_decreasing") and args.bins is not None:
        raise CommandError(f"--algorithm {args.algorithm} sorts the whole corpus; use it with --bins all")
    if args.workers is not None and args.engine == "serial":
        raise CommandError("--workers: goes with --engine processes or ray (serial runs in this process)")


def run(args: argparse.Namespace, out, progress) -> None:
    check_options(args)
    output = Path(args.index_out)
    if not output.parent.is_dir():
        raise CommandError(f"--index-out: the directory {str(output.parent)!r} does not exist")
    arguments = index_arguments(
        seq_len=args.seq_len, eod_token_id=args.eod, pad_token_id=args.pad, num_packing_bins=args.bins,
        algorithm=args.algorithm, long_documents=args.long_documents, shift=args.shift,
        max_documents_per_row=args.max_documents_per_row,
    )
    tasks = [(path, args.field, lengths, arguments, args.shard_documents)
             for path, lengths in zip(args.corpus, _lengths_paths(args.corpus, args.lengths))]
    start = time.perf_counter()
    with progress(total=len(tasks), unit="file", desc=f"indexing ({args.engine})") as bar:
        results = run_tasks(pack_file, tasks, engine=args.engine, workers=args.workers,
                            done=lambda _: bar.update(1))
    parts, first = [], 0
    for part, lengths in results:
        parts.append(move_documents(part, first))
        first += lengths.shape[0]
    lengths = np.concatenate([lengths for _, lengths in results])
    index = merge_indexes(parts, corpus=corpus_identity(lengths))
    seconds = time.perf_counter() - start
    if index.stats.tokens == 0 and not args.allow_empty:
        what = "no documents" if lengths.shape[0] == 0 else f"{lengths.shape[0]:,} documents but no tokens"
        raise CommandError(f"{', '.join(args.corpus)}: {what}; pass --allow-empty to index it anyway")
    try:
        save_index(index, output)  # a temporary directory, renamed when complete
    except OSError as exc:
        raise CommandError(f"--index-out: cannot write {output} ({exc.strerror or exc})") from None
    print(summarize(index, len(tasks), args, seconds, output), file=out)


def summarize(index, files: int, args: argparse.Namespace, seconds: float, output: Path) -> str:
    from .pack import percent

    stats, corpus = index.stats, index.corpus
    documents = corpus["num_documents"]
    bins_text = "the whole file" if args.bins is None else f"{args.bins} bins"
    workers = "" if args.engine == "serial" else f", {args.workers or 'default'} workers"
    return "\n".join([
        f"indexed {documents:,} documents ({corpus['num_tokens']:,} tokens) from {files:,} "
        f"file{'s' if files != 1 else ''}",
        f"  rows                {stats.rows:,} of {args.seq_len:,} tokens ({args.algorithm}, {bins_text}; rows "
        "never span files)",
        f"  fill ratio          {percent(stats.fill_ratio)} (document and EOD tokens / row capacity)",
        f"  documents split     {stats.documents_split:,} (long_documents={args.long_documents})",
        f"  tokens truncated    {stats.tokens_truncated:,}",
        f"  index               {size_text(index.nbytes)}, {index.nbytes / max(documents, 1):.1f} bytes per "
        "document (the placement; rows are built on demand)",
        f"  speed               {rate(documents, seconds, 'documents')} ({seconds:.3f} s reading and placing; "
        f"engine {args.engine}{workers})",
        f"  written to          {output}",
    ])
