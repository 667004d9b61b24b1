"""ArrayRecord files whose records are int32 token bytes (xlstm-jax's tokenized datasets).

Each record is ``np.array(tokens, np.int32).tobytes()``. ArrayRecord compresses its
chunks, so the file is read with the ``array_record`` package in batches of records and
decoded into one in-memory shard (no Python object kept per document).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from .corpus import CorpusError, CorpusShard

BATCH_RECORDS = 65_536


def read_array_record_shard(path: Path, *, dtype=np.int32) -> CorpusShard:
    """One ArrayRecord file of int32 token records as an in-memory shard."""
    try:
        from array_record.python.array_record_module import ArrayRecordReader
    except ImportError:
        raise CorpusError(f"{path}: reading ArrayRecord needs the array_record package "
                          "(pip install array_record)") from None
    dtype = np.dtype(dtype)
    try:
        reader = ArrayRecordReader(str(path), "readahead_buffer_size:0")
    except (OSError, RuntimeError, ValueError) as exc:
        raise CorpusError(f"{path}: cannot read it as an ArrayRecord file ({exc})") from None
    try:
        count = reader.num_records()
        token_parts, length_parts = [], []
        for low in range(0, count, BATCH_RECORDS):
            records = reader.read(list(range(low, min(low + BATCH_RECORDS, count))))
            sizes = np.fromiter(map(len, records), dtype=np.int64, count=len(records))
            bad = np.flatnonzero(sizes % dtype.itemsize)
            if bad.size:
                i = int(bad[0])
                raise CorpusError(f"{path}: record {low + i} has {sizes[i]} bytes, not a whole number of "
                                  f"{dtype} tokens (expected np.array(tokens, np.int32).tobytes())")
            token_parts.append(np.frombuffer(b"".join(records), dtype=dtype))
            length_parts.append(sizes // dtype.itemsize)
    except (OSError, RuntimeError, ValueError) as exc:
        if isinstance(exc, CorpusError):
            raise
        raise CorpusError(f"{path}: cannot read its records ({exc})") from None
    except BaseException:
        with contextlib.suppress(Exception):  # a broken file may fail to close, too
            reader.close()
        raise
    try:
        reader.close()  # array_record reports some broken files only here
    except (OSError, RuntimeError, ValueError) as exc:
        raise CorpusError(f"{path}: cannot read it as an ArrayRecord file ({exc})") from None
    tokens = np.concatenate(token_parts) if token_parts else np.zeros(0, dtype)
    lengths = np.concatenate(length_parts) if length_parts else np.zeros(0, np.int64)
    offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return CorpusShard.from_offsets(tokens, offsets, str(path))
