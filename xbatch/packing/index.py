"""A packing index: where every piece of every document goes, never the rows themselves.

Bulk packing (:func:`~xbatch.packing.bulk.pack_documents`) writes six int32 arrays, 24
bytes per token. A :class:`PackingIndex` records only the placement the same kernels
compute: for every piece, in row order, its document, its first cell within the
document's cells (tokens + EOD) and its length; and where each row's pieces start. That is
16 bytes per piece plus 8 per row, a few bytes per document; rows are built on demand
from the corpus (:class:`~xbatch.packing.packed_rows.PackedRows`) and equal the rows
``pack_documents`` would have written.

Packing is a pure function of one shard, a range of documents (:func:`pack_shard`): the
shard's document lengths and the arguments give its index and :class:`PackingStats`.
Rows never span shards; :func:`merge_indexes` concatenates shard indexes in order, and
their stats merge exactly (every count adds). Memory is bounded by the shard size, so any
corpus packs shard by shard (see :mod:`xbatch.packing.jobs` for the parallel jobs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._atomic import atomic_output
from .._checks import positive_int
from .placement import place_corpus, place_windows
from .pieces import BULK_ALGORITHMS, DECREASING, LONG_DOCUMENTS, SHIFTS, check_choice, check_token_id
from .stats import PackingStats

FORMAT = "xbatch-packing-index"
VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = ("piece_document", "piece_start", "piece_length", "row_offsets")
# The index supports the placement algorithms; "concat_then_split" has no pieces to place.
INDEX_ALGORITHMS = tuple(a for a in BULK_ALGORITHMS if a != "concat_then_split")


@dataclasses.dataclass(frozen=True)
class PackingIndex:
    """Placement of every piece, in row order (rows list their pieces in corpus order).

    Attributes:
      piece_document: int64[pieces], the piece's document (0-based, in the whole corpus).
      piece_start: int32[pieces], the piece's first cell among its document's ``d + 1``
        cells (tokens, then the EOD): 0 unless it continues a split document.
      piece_length: int32[pieces], cells in the piece (1 .. seq_len).
      row_offsets: int64[rows + 1], row ``r`` holds pieces ``row_offsets[r]`` to
        ``row_offsets[r + 1]``, laid out in that order from cell 0.
      arguments: the packing arguments (seq_len, eod_token_id, ...).
      stats: the :class:`PackingStats` of the whole index.
      shards: per shard, in order: first_document, num_documents, rows, pieces.
      corpus: num_documents, num_tokens and the SHA-256 of the int64 document lengths.
    """

    piece_document: np.ndarray
    piece_start: np.ndarray
    piece_length: np.ndarray
    row_offsets: np.ndarray
    arguments: dict[str, Any]
    stats: PackingStats
    shards: tuple[dict[str, int], ...]
    corpus: dict[str, Any]

    @property
    def num_rows(self) -> int:
        return self.row_offsets.shape[0] - 1

    @property
    def nbytes(self) -> int:
        """Bytes of the four arrays (what the index costs on disk, less the manifest)."""
        return sum(getattr(self, name).nbytes for name in ARRAYS)

    def __len__(self) -> int:
        return self.num_rows


def index_arguments(*, seq_len: int, eod_token_id: int, pad_token_id: int = 0,
                    num_packing_bins: int | None = None, algorithm: str = "first_fit",
                    long_documents: str = "split", shift: str = "inputs",
                    max_documents_per_row: int | None = None) -> dict[str, Any]:
    """The packing arguments, checked, as stored in an index (same meaning as for ``pack_documents``)."""
    check_choice("algorithm", algorithm, INDEX_ALGORITHMS)
    check_choice("long_documents", long_documents, LONG_DOCUMENTS)
    check_choice("shift", shift, SHIFTS)
    if num_packing_bins is not None:
        num_packing_bins = positive_int("num_packing_bins", num_packing_bins)
        if algorithm in DECREASING:
            raise ValueError(
                f"algorithm: {algorithm!r} sorts the whole shard and needs num_packing_bins=None, "
                f"got num_packing_bins={num_packing_bins}"
            )
    return {
        "seq_len": positive_int("seq_len", seq_len),
        "eod_token_id": check_token_id("eod_token_id", eod_token_id),
        "pad_token_id": check_token_id("pad_token_id", pad_token_id),
        "num_packing_bins": num_packing_bins,
        "algorithm": algorithm,
        "long_documents": long_documents,
        "shift": shift,
        "max_documents_per_row": None if max_documents_per_row is None
        else positive_int("max_documents_per_row", max_documents_per_row),
    }


def document_lengths(lengths: Any) -> np.ndarray:
    """``lengths`` as int64[documents] >= 0, or a clear error."""
    array = np.asarray(lengths)
    if array.size == 0 and array.dtype == np.float64:
        array = array.astype(np.int64)
    if array.dtype == bool or array.dtype.kind not in "iu" or array.ndim != 1:
        raise ValueError(f"lengths: expected a 1-d integer array, got dtype {array.dtype}, shape {array.shape}")
    array = array.astype(np.int64, copy=False)
    if array.size and array.min() < 0:
        first = int(np.flatnonzero(array < 0)[0])
        raise ValueError(f"lengths: expected lengths >= 0, got {array[first]} for document {first}")
    return array


def corpus_identity(lengths: np.ndarray) -> dict[str, Any]:
    """What ties an index to its corpus: document count, token count, digest of the lengths."""
    lengths = document_lengths(lengths)
    return {
        "num_documents": int(lengths.shape[0]),
        "num_tokens": int(lengths.sum()),
        "lengths_sha256": hashlib.sha256(np.ascontiguousarray(lengths, dtype="<i8").tobytes()).hexdigest(),
    }


def document_cells(lengths: np.ndarray, *, seq_len: int, long_documents: str,
                   first_document: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """The pieces of :func:`~xbatch.packing.pieces.document_pieces`, from lengths alone.

    Returns:
      (document int64, first cell int64, cells int64) per piece in corpus order, the
      tokens truncated, the documents split. No token is read.
    """
    cells = lengths + 1
    documents = np.arange(first_document, first_document + lengths.shape[0], dtype=np.int64)
    too_long = cells > seq_len
    if not too_long.any():
        return documents, np.zeros_like(cells), cells, 0, 0
    if long_documents == "error":
        first = int(np.flatnonzero(too_long)[0])
        raise ValueError(
            f"long_documents='error': document {first_document + first} has {lengths[first]} tokens, which with "
            f"its EOD exceed seq_len={seq_len}; use long_documents='split' or 'truncate'"
        )
    if long_documents == "truncate":
        kept = np.minimum(cells, seq_len)
        return documents, np.zeros_like(cells), kept, int((cells - kept).sum()), 0
    per_document = (cells + seq_len - 1) // seq_len
    first_piece = np.cumsum(per_document) - per_document
    piece_document = np.repeat(documents, per_document)
    part = np.arange(piece_document.shape[0], dtype=np.int64) - np.repeat(first_piece, per_document)
    piece_start = part * seq_len
    piece_length = np.minimum(np.repeat(cells, per_document) - piece_start, seq_len)
    return piece_document, piece_start, piece_length, 0, int((per_document > 1).sum())


def pack_shard(lengths: Any, *, first_document: int = 0, **arguments: Any) -> PackingIndex:
    """Packs one shard, documents ``first_document ..`` with these ``lengths``, into an index.

    A pure function of its arguments (the keyword arguments of :func:`index_arguments`):
    rows equal ``pack_documents`` over the shard's documents with the same arguments.
    Costs about 40 bytes per piece of the shard while it runs; reads no token.
    """
    arguments = index_arguments(**arguments)
    lengths = document_lengths(lengths)
    first_document = positive_int("first_document", first_document, minimum=0)
    seq_len, algorithm = arguments["seq_len"], arguments["algorithm"]
    document, start, length, truncated, split = document_cells(
        lengths, seq_len=seq_len, long_documents=arguments["long_documents"], first_document=first_document)
    cap = arguments["max_documents_per_row"]
    if length.shape[0] == 0:
        bins, num_rows = np.empty(0, np.int64), 0
    elif arguments["num_packing_bins"] is None:
        bins, num_rows = place_corpus(length.reshape(-1, 1), seq_len, algorithm, cap)
    else:
        bins, num_rows = place_windows(length.reshape(-1, 1), seq_len, arguments["num_packing_bins"],
                                        algorithm, cap)
    # Row order; a stable sort keeps each row's pieces in corpus order, as they are laid out.
    order = np.argsort(bins, kind="stable")
    row_offsets = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(bins, minlength=num_rows), out=row_offsets[1:])
    tokens = int(length.sum())
    stats = PackingStats(
        rows=num_rows, documents=int(lengths.shape[0]), pieces=int(length.shape[0]), tokens=tokens,
        capacity=num_rows * seq_len, tokens_truncated=truncated, documents_split=split,
        loss_tokens=tokens if arguments["shift"] == "inputs" else tokens - num_rows,
    )
    return PackingIndex(
        piece_document=document[order],
        piece_start=start[order].astype(np.int32),
        piece_length=length[order].astype(np.int32),
        row_offsets=row_offsets,
        arguments=arguments,
        stats=stats,
        shards=({"first_document": first_document, "num_documents": int(lengths.shape[0]),
                 "rows": num_rows, "pieces": int(length.shape[0])},),
        corpus={},
    )


def merge_stats(stats: Sequence[PackingStats]) -> PackingStats:
    """The stats of several shards packed one after the other: every count adds."""
    fields = [f.name for f in dataclasses.fields(PackingStats)]
    return PackingStats(**{name: sum(getattr(s, name) for s in stats) for name in fields})


def move_documents(index: PackingIndex, documents: int) -> PackingIndex:
    """``index`` with its document numbers raised by ``documents`` (>= 0): a shard packed
    on its own (documents from 0) placed after ``documents`` earlier documents."""
    documents = positive_int("documents", documents, minimum=0)
    return dataclasses.replace(
        index,
        piece_document=np.asarray(index.piece_document, dtype=np.int64) + documents,
        shards=tuple({**shard, "first_document": shard["first_document"] + documents} for shard in index.shards),
    )


def merge_indexes(parts: Sequence[PackingIndex], corpus: dict[str, Any] | None = None) -> PackingIndex:
    """Concatenates shard indexes in order (consecutive documents, the same arguments)."""
    if not parts:
        raise ValueError("parts: expected at least one shard index")
    arguments = parts[0].arguments
    shards = [shard for part in parts for shard in part.shards]
    for part in parts:
        if part.arguments != arguments:
            raise ValueError(f"shard indexes differ in arguments: {part.arguments} and {arguments}")
    for before, after in zip(shards, shards[1:]):
        if after["first_document"] != before["first_document"] + before["num_documents"]:
            raise ValueError(
                f"shards are not consecutive: one ends before document "
                f"{before['first_document'] + before['num_documents']}, the next starts at {after['first_document']}"
            )
    row_offsets, end = [np.zeros(1, np.int64)], 0
    for part in parts:
        row_offsets.append(part.row_offsets[1:] + end)
        end += part.row_offsets[-1]
    return PackingIndex(
        piece_document=np.concatenate([p.piece_document for p in parts]),
        piece_start=np.concatenate([p.piece_start for p in parts]),
        piece_length=np.concatenate([p.piece_length for p in parts]),
        row_offsets=np.concatenate(row_offsets),
        arguments=arguments,
        stats=merge_stats([p.stats for p in parts]),
        shards=tuple(shards),
        corpus=dict(corpus or parts[0].corpus),
    )


def save_index(index: PackingIndex, directory: str | os.PathLike) -> pathlib.Path:
    """Writes the index as ``.npy`` arrays plus ``manifest.json`` into a new ``directory``.

    Atomic: everything is written into a temporary directory beside it, which is renamed
    to ``directory`` only when complete; an existing index there is replaced as a whole.
    """
    directory = pathlib.Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = directory.parent / f".{directory.name}.{os.getpid()}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        for name in ARRAYS:
            with atomic_output(temporary / f"{name}.npy") as file:
                np.save(file, getattr(index, name))
        manifest = {
            "format": FORMAT, "version": VERSION, "arguments": index.arguments,
            "stats": dataclasses.asdict(index.stats), "shards": list(index.shards), "corpus": index.corpus,
            "rows": index.num_rows, "pieces": int(index.piece_document.shape[0]),
        }
        with atomic_output(temporary / MANIFEST) as file:
            file.write(json.dumps(manifest, indent=2).encode())
        old = directory.parent / f".{directory.name}.{os.getpid()}.old"
        if directory.exists():
            os.replace(directory, old)
        os.replace(temporary, directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return directory


def load_index(directory: str | os.PathLike, *, mmap: bool = True) -> PackingIndex:
    """Reads an index :func:`save_index` wrote; the arrays are memory-mapped by default."""
    directory = pathlib.Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{str(directory)!r} holds no packing index (no {MANIFEST})")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(
            f"{str(manifest_path)!r}: format {manifest.get('format')!r} version {manifest.get('version')!r};"
            f" expected {FORMAT!r} version {VERSION}"
        )
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r" if mmap else None) for name in ARRAYS}
    return PackingIndex(**arrays, arguments=manifest["arguments"], stats=PackingStats(**manifest["stats"]),
                        shards=tuple(manifest["shards"]), corpus=manifest["corpus"])


def check_index(index: PackingIndex, lengths: np.ndarray) -> None:
    """Raises a ValueError unless every piece lies inside its document and every row fits.

    Vectorized over the pieces (reads the whole index once); :class:`PackedRows` calls it
    so that reads never leave the corpus, whatever the files hold.
    """
    seq_len = index.arguments["seq_len"]
    offsets, document = index.row_offsets, index.piece_document
    start, length = index.piece_start, index.piece_length
    pieces = document.shape[0]
    if not (start.shape == length.shape == (pieces,)) or offsets.ndim != 1 or offsets.shape[0] < 1:
        raise ValueError("index: piece arrays differ in length or row_offsets is not 1-d")
    if offsets[0] != 0 or offsets[-1] != pieces or (np.diff(offsets) < 0).any():
        raise ValueError(f"index: row_offsets must rise from 0 to the {pieces} pieces")
    if pieces == 0:
        return
    if document.min() < 0 or document.max() >= lengths.shape[0]:
        raise ValueError(f"index: piece documents must lie in 0..{lengths.shape[0] - 1}, the corpus's documents")
    if start.min() < 0 or length.min() < 1 or length.max() > seq_len:
        raise ValueError(f"index: piece starts must be >= 0 and lengths in 1..seq_len={seq_len}")
    if (start.astype(np.int64) + length > lengths[document] + 1).any():
        raise ValueError("index: a piece runs past its document's end (tokens + EOD); wrong corpus?")
    cells = np.add.reduceat(length.astype(np.int64), offsets[:-1][np.diff(offsets) > 0])
    if cells.max() > seq_len:
        raise ValueError(f"index: a row holds {int(cells.max())} cells, more than seq_len={seq_len}")
