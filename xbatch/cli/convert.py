"""``xbatch convert INPUT OUTPUT``: writes a tokenized corpus in xbatch's own format."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .common import CommandError

# Documents copied per step: bounds the memory the conversion holds.
BLOCK_DOCUMENTS = 1 << 20
DTYPES = ("int32", "uint16", "uint32", "int64")


def run(args: argparse.Namespace, out) -> None:
    from ..corpus import CorpusError as PackCorpusError
    from ..corpus import read_corpus
    from ..sources import Corpus, CorpusError, XbatchCorpusWriter, open_corpus
    from ..sources.open import detect_format

    source = Path(args.input)
    start = time.perf_counter()
    try:
        try:
            detect_format(source)
            corpus = open_corpus(source, field=args.field)
        except CorpusError:
            if not source.is_file() or not source.name.lower().endswith((".npz", ".npy", ".jsonl", ".json",
                                                                          ".jsonl.gz", ".json.gz")):
                raise
            read = read_corpus(source, field=args.field, lengths_path=None, progress=_no_progress)
            corpus = Corpus.from_arrays(read.tokens, lengths=read.lengths, name=str(source))
        with XbatchCorpusWriter(args.output, dtype=args.dtype, overwrite=args.overwrite) as writer:
            for low in range(0, len(corpus), BLOCK_DOCUMENTS):
                tokens, lengths = corpus.gather(np.arange(low, min(low + BLOCK_DOCUMENTS, len(corpus))))
                writer.add(tokens, lengths)
    except FileExistsError:
        raise CommandError(f"{args.output}: already exists (--overwrite replaces it)") from None
    except (CorpusError, PackCorpusError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    seconds = time.perf_counter() - start
    print(f"{args.output}: {writer.num_documents:,} documents, {writer.num_tokens:,} tokens ({args.dtype}) "
          f"from {source} in {seconds:.1f} s", file=out)


def _no_progress(*args, **kwargs):
    import contextlib

    class Bar:
        n = 0

        def update(self, count):
            self.n += count

    return contextlib.nullcontext(Bar())


def add_parser(commands) -> None:
    convert = commands.add_parser(
        "convert", help="write a tokenized corpus in xbatch's own (memory-mapped) format",
        description="Reads INPUT (an xbatch corpus, Arrow, Parquet, Megatron .bin/.idx, ArrayRecord, "
        ".npz or JSON lines) and writes OUTPUT, an xbatch corpus directory (tokens.npy + offsets.npy), "
        "streaming in blocks of documents; the directory appears complete or not at all.")
    convert.add_argument("input", help="the tokenized corpus to read")
    convert.add_argument("output", help="the xbatch corpus directory to write")
    convert.add_argument("--field", help="the Arrow/Parquet column (or JSONL key) holding the token lists")
    convert.add_argument("--dtype", choices=DTYPES, default="int32",
                         help="token dtype on disk (uint16 for vocabularies below 65,536; default int32)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    convert.set_defaults(run=run)
