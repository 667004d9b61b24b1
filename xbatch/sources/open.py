"""``open_corpus``: one or many files (shards) of any supported format as one Corpus."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from .corpus import Corpus, CorpusError, CorpusShard

# Formats: name -> (module, reader of one path into one or more shards).
FORMATS = ("xbatch", "parquet", "arrow", "megatron", "array_record")
PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
MEGATRON_SUFFIXES = (".bin", ".idx")
ARRAY_RECORD_SUFFIXES = (".array_record", ".arrayrecord")


def detect_format(path: Path) -> str:
    """The format of ``path`` from its name (and for directories, their content)."""
    from .format_xbatch import is_xbatch_corpus

    name = path.name.lower()
    if is_xbatch_corpus(path):
        return "xbatch"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(ARROW_SUFFIXES):
        return "arrow"
    if name.endswith(MEGATRON_SUFFIXES) or (
        not path.exists() and path.with_name(path.name + ".idx").is_file()
    ):
        return "megatron"
    if name.endswith(ARRAY_RECORD_SUFFIXES) or ".array_record-" in name:
        return "array_record"
    if path.is_dir():
        raise CorpusError(f"{path}: a directory, but not an xbatch corpus (no tokens.npy and offsets.npy)")
    suffixes = ARROW_SUFFIXES + PARQUET_SUFFIXES + MEGATRON_SUFFIXES + ARRAY_RECORD_SUFFIXES
    raise CorpusError(f"{path}: cannot tell the corpus format from the name; expected an xbatch corpus "
                      f"directory or a file ending in one of {suffixes}, or pass format= one of {FORMATS}")


def _reader(format: str) -> Callable[[Path, str | None], list[CorpusShard]]:
    if format == "xbatch":
        from .format_xbatch import read_xbatch_shard

        return lambda path, field: [read_xbatch_shard(path)]
    if format in ("parquet", "arrow"):
        from .format_arrow import read_arrow_shards, read_parquet_shard

        if format == "arrow":
            return read_arrow_shards
        return lambda path, field: [read_parquet_shard(path, field)]
    if format == "megatron":
        from .format_megatron import read_megatron_shard

        return lambda path, field: [read_megatron_shard(path)]
    if format == "array_record":
        from .format_array_record import read_array_record_shard

        return lambda path, field: [read_array_record_shard(path)]
    raise CorpusError(f"format: expected one of {FORMATS} or None (from the file names), got {format!r}")


def _as_paths(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    if not isinstance(paths, Sequence) or not paths:
        raise CorpusError(f"paths: expected a path or a non-empty list of paths, got {paths!r}")
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"paths: expected paths (str or os.PathLike), got {path!r}")
    return [Path(path) for path in paths]


def open_corpus(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                format: str | None = None, field: str | None = None) -> Corpus:
    """Opens a tokenized corpus of one or many files as one global document index.

    The documents of ``paths[0]`` come first, then those of ``paths[1]``, and so on.
    Nothing is read per document where the format allows memory mapping:

    - ``"xbatch"``: an xbatch corpus directory (``tokens.npy`` + ``offsets.npy``), memory-mapped;
    - ``"arrow"``: Arrow IPC files or streams (``.arrow``, as Hugging Face ``datasets``
      caches them) with a list-of-integers column, memory-mapped zero-copy;
    - ``"parquet"``: a list-of-integers column, decoded into memory (Parquet is
      compressed); convert large ones to the xbatch format (``xbatch convert``);
    - ``"megatron"``: Megatron-LM/NeMo/GPT-NeoX indexed datasets (``PREFIX.bin`` +
      ``PREFIX.idx``; give either file or the prefix), memory-mapped; each sequence of
      the index is one document;
    - ``"array_record"``: ArrayRecord files whose records are int32 token bytes
      (xlstm-jax's layout), read in batches and decoded into memory.

    Args:
      paths: one path or a list of paths (shards, in order).
      format: one of the above; by default each path's format from its name.
      field: the Parquet/Arrow column holding the token lists; by default the only
        list-of-integers column.

    Returns:
      A :class:`~xbatch.sources.Corpus`; it pickles as these arguments, so grain worker
      processes re-open (re-map) the files instead of copying them.

    Raises:
      CorpusError: a missing or malformed file, naming the file and what was expected.
    """
    path_list = _as_paths(paths)
    if format is not None and format not in FORMATS:
        raise CorpusError(f"format: expected one of {FORMATS} or None (from the file names), got {format!r}")
    shards: list[CorpusShard] = []
    for path in path_list:
        kind = format or detect_format(path)
        if kind != "megatron" and not path.exists():
            raise CorpusError(f"{path}: no such file or directory")
        shards.extend(_reader(kind)(path, field))
    reopen = functools.partial(open_corpus, [str(path) for path in path_list], format=format, field=field)
    name = str(path_list[0]) if len(path_list) == 1 else f"{path_list[0]} (+{len(path_list) - 1} files)"
    return Corpus(shards, name=name, reopen=reopen)


SOURCE_SUFFIXES = ARROW_SUFFIXES + MEGATRON_SUFFIXES + ARRAY_RECORD_SUFFIXES


def is_source_path(path: Path) -> bool:
    """Whether ``xbatch pack`` should read ``path`` through :func:`open_corpus`: an xbatch
    corpus directory, an Arrow, Megatron (file or prefix) or ArrayRecord file."""
    from .format_xbatch import is_xbatch_corpus

    name = path.name.lower()
    return (is_xbatch_corpus(path) or name.endswith(SOURCE_SUFFIXES) or ".array_record-" in name
            or (not path.exists() and path.with_name(path.name + ".idx").is_file()))


def tokens_and_lengths(corpus: Corpus):
    """(tokens, int64 lengths) of every document in corpus order, for bulk consumers such
    as ``xbatch pack``. A single contiguous int32 shard stays memory-mapped (a corpus
    larger than RAM packs); anything else is gathered into memory as int32."""
    import numpy as np

    if len(corpus.shards) == 1 and corpus.shards[0].offsets is not None:
        shard = corpus.shards[0]
        offsets = shard.offsets
        if shard.tokens.dtype == np.int32:
            return shard.tokens[int(offsets[0]):int(offsets[-1])], np.diff(offsets)
    return corpus.gather(np.arange(len(corpus)))
