"""Megatron-LM indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``), memory-mapped.

The format of Megatron-LM, NeMo and GPT-NeoX tokenized corpora (``MMapIndexedDataset``
/ ``IndexedDataset``). ``PREFIX.idx``, little-endian::

    b"MMIDIDX\\x00\\x00"          9-byte magic
    version        uint64      1
    dtype code     uint8       1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64,
                               7 float32, 8 uint16 (floats are not token ids: rejected)
    sequence count uint64      S
    document count uint64      D
    sequence_lengths   int32[S]   tokens per sequence
    sequence_pointers  int64[S]   byte offset of each sequence in PREFIX.bin
    document_indices   int64[D]   first sequence of each document (+ the end)

``PREFIX.bin`` holds the sequences' tokens in that dtype. Each *sequence* is one
document here (what ``len(IndexedDataset)`` counts and ``dataset[i]`` returns).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import CorpusError, CorpusShard

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
          8: np.uint16}
_HEADER = struct.Struct("<9sQBQQ")


def megatron_paths(path: Path) -> tuple[Path, Path]:
    """(PREFIX.bin, PREFIX.idx) for a path to either file or to the prefix."""
    text = str(path)
    if text.endswith((".bin", ".idx")):
        text = text[:-4]
    return Path(text + ".bin"), Path(text + ".idx")


def read_megatron_shard(path: Path) -> CorpusShard:
    """A Megatron ``.bin``/``.idx`` pair as one memory-mapped shard."""
    bin_path, idx_path = megatron_paths(path)
    for required in (idx_path, bin_path):
        if not required.is_file():
            raise CorpusError(f"{required}: no such file (a Megatron indexed dataset needs {bin_path.name} "
                              f"and {idx_path.name})")
    size = idx_path.stat().st_size
    with open(idx_path, "rb") as file:
        head = file.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise CorpusError(f"{idx_path}: {size} bytes, too short for a Megatron index header ({_HEADER.size})")
    magic, version, code, sequences, documents = _HEADER.unpack(head)
    if magic != MAGIC:
        raise CorpusError(f"{idx_path}: not a Megatron index (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise CorpusError(f"{idx_path}: Megatron index version {version}, expected {VERSION}")
    if code not in DTYPES:
        raise CorpusError(f"{idx_path}: unknown dtype code {code}, expected one of {sorted(DTYPES)}")
    dtype = np.dtype(DTYPES[code])
    if dtype.kind not in "iu":
        raise CorpusError(f"{idx_path}: tokens of dtype {dtype} (code {code}); token ids must be integers")
    need = _HEADER.size + sequences * 12 + documents * 8
    if size < need:
        raise CorpusError(f"{idx_path}: {size} bytes, but {sequences} sequences and {documents} documents "
                          f"need {need}")
    lengths = np.memmap(idx_path, dtype=np.int32, mode="r", offset=_HEADER.size, shape=(sequences,)) \
        if sequences else np.zeros(0, np.int32)
    pointers = np.memmap(idx_path, dtype=np.int64, mode="r", offset=_HEADER.size + sequences * 4,
                         shape=(sequences,)) if sequences else np.zeros(0, np.int64)
    bin_size = bin_path.stat().st_size
    if bin_size % dtype.itemsize:
        raise CorpusError(f"{bin_path}: {bin_size} bytes, not a whole number of {dtype} tokens")
    tokens = np.memmap(bin_path, dtype=dtype, mode="r") if bin_size else np.zeros(0, dtype)
    # Token offsets from byte pointers: 8 bytes per document, computed once.
    starts = np.asarray(pointers) // dtype.itemsize
    if sequences and (np.asarray(pointers[:1]) % dtype.itemsize).any():
        raise CorpusError(f"{idx_path}: sequence pointers must be multiples of {dtype.itemsize} bytes")
    ends = starts + np.asarray(lengths, dtype=np.int64)
    if sequences and (int(starts.min()) < 0 or int(lengths.min()) < 0 or int(ends.max()) > tokens.shape[0]):
        raise CorpusError(f"{idx_path}: sequences must lie inside the {tokens.shape[0]} tokens of {bin_path.name}")
    if sequences and np.array_equal(starts[1:], ends[:-1]):
        offsets = np.empty(sequences + 1, dtype=np.int64)
        offsets[:-1] = starts
        offsets[-1] = ends[-1]
        del starts, ends
        return CorpusShard.from_offsets(tokens, offsets, str(bin_path))
    return CorpusShard(tokens, starts, ends, str(bin_path))


def write_megatron(prefix: str | os.PathLike[str], documents: Any, *, dtype: Any = np.int32) -> tuple[Path, Path]:
    """Writes documents (a sequence of token arrays) as ``PREFIX.bin`` + ``PREFIX.idx``,
    the layout Megatron's ``IndexedDatasetBuilder`` writes (one sequence per document).
    For tests and conversions; not atomic."""
    dtype = np.dtype(dtype)
    codes = {np.dtype(value): key for key, value in DTYPES.items()}
    bin_path, idx_path = megatron_paths(Path(str(prefix) + ".bin"))
    lengths = []
    with open(bin_path, "wb") as out:
        for document in documents:
            array = np.asarray(document, dtype=dtype)
            out.write(array.tobytes())
            lengths.append(array.shape[0])
    length_array = np.array(lengths, dtype=np.int32)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    if lengths:
        np.cumsum(length_array[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    document_indices = np.arange(len(lengths) + 1, dtype=np.int64)
    with open(idx_path, "wb") as out:
        out.write(_HEADER.pack(MAGIC, VERSION, codes[dtype], len(lengths), len(document_indices)))
        out.write(length_array.tobytes())
        out.write(pointers.tobytes())
        out.write(document_indices.tobytes())
    return bin_path, idx_path
