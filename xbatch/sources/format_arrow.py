"""Arrow IPC (memory-mapped, zero-copy) and Parquet (decoded) files with a token-list column.

Hugging Face ``datasets`` caches tokenized datasets as Arrow IPC streams
(``data-00000-of-00001.arrow``) with a ``list<int32>`` column such as ``input_ids``;
``Dataset.to_parquet`` writes Parquet. A list column's values and offsets are read
straight from Arrow's buffers: for an uncompressed Arrow file they are views of the
memory-mapped file, so nothing is copied or decoded per document.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .corpus import CorpusError, CorpusShard


def _pyarrow(path: Path):
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise CorpusError(f"{path}: reading Arrow or Parquet needs pyarrow (pip install pyarrow)") from None
    return pa


def _token_column(pa, schema, field: str | None, path: Path) -> str:
    def is_token_list(data_type) -> bool:
        return (pa.types.is_list(data_type) or pa.types.is_large_list(data_type)) and pa.types.is_integer(
            data_type.value_type)

    candidates = [column.name for column in schema if is_token_list(column.type)]
    if field is None:
        if len(candidates) != 1:
            raise CorpusError(f"{path}: name the token-list column with field= (list-of-integer columns: "
                              f"{candidates}, all columns: {schema.names})")
        return candidates[0]
    if field not in schema.names:
        raise CorpusError(f"{path}: no column {field!r} (columns: {schema.names})")
    if field not in candidates:
        raise CorpusError(f"{path}: column {field!r} is {schema.field(field).type}, expected a list of integers")
    return field


def _list_parts(pa, column, path: Path, field: str) -> tuple[np.ndarray, Any, int, np.ndarray]:
    """(offsets int64[n+1] into the values buffer, values buffer, child offset, values dtype)."""
    if column.null_count:
        raise CorpusError(f"{path}: column {field!r} has {column.null_count} null rows; expected a token list "
                          "in every row")
    values = column.values
    if values.null_count:
        raise CorpusError(f"{path}: column {field!r} has null tokens inside its lists")
    offset_type = np.int64 if pa.types.is_large_list(column.type) else np.int32
    buffers = column.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[column.offset:column.offset + len(column) + 1]
    dtype = np.dtype(values.type.to_pandas_dtype())
    return offsets.astype(np.int64), buffers[3], values.offset, dtype


def read_arrow_shards(path: Path, field: str | None) -> list[CorpusShard]:
    """An Arrow IPC file or stream, memory-mapped: one shard; documents are the rows of
    the token-list column, record batch after record batch. Zero-copy when the file is
    uncompressed; a compressed file's batches are decoded into memory."""
    pa = _pyarrow(path)
    import pyarrow.ipc as ipc

    try:
        source = pa.memory_map(str(path), "r")
        try:
            reader = ipc.open_file(source)
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
            schema = reader.schema
        except pa.ArrowInvalid:
            source.seek(0)
            stream = ipc.open_stream(source)
            schema = stream.schema
            batches = list(stream)
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(f"{path}: cannot read it as an Arrow IPC file or stream ({exc})") from None
    field = _token_column(pa, schema, field, path)
    index = schema.get_field_index(field)
    # The whole file as bytes: batches whose values lie inside it are read in place.
    whole = None
    if source.size():
        source.seek(0)
        whole = source.read_buffer(source.size())  # zero-copy: the mapped file
    base = whole.address if whole is not None else 0
    parts, dtype = [], None
    for batch in batches:
        offsets, values, child_offset, batch_dtype = _list_parts(pa, batch.column(index), path, field)
        if dtype is None:
            dtype = batch_dtype
        elif batch_dtype != dtype:
            raise CorpusError(f"{path}: column {field!r} changes dtype between record batches")
        parts.append((offsets, values, child_offset))
    dtype = dtype or np.dtype(np.int32)
    in_place = whole is not None and all(
        values is None or (base <= values.address and values.address + values.size <= base + whole.size
                           and (values.address - base) % dtype.itemsize == 0)
        for _, values, _ in parts)
    if in_place:
        tokens = np.frombuffer(whole, dtype=dtype, count=whole.size // dtype.itemsize)
        starts, ends = [], []
        for offsets, values, child_offset in parts:
            first = 0 if values is None else (values.address - base) // dtype.itemsize + child_offset
            starts.append(offsets[:-1] + first)
            ends.append(offsets[1:] + first)
    else:  # compressed or unaligned: copy the values, batch after batch
        chunks, starts, ends, total = [], [], [], 0
        for offsets, values, child_offset in parts:
            array = np.frombuffer(values, dtype=dtype)[child_offset:] if values is not None else np.zeros(0, dtype)
            low = int(offsets[0]) if offsets.size else 0
            high = int(offsets[-1]) if offsets.size else 0
            chunks.append(array[low:high])
            starts.append(offsets[:-1] - low + total)
            ends.append(offsets[1:] - low + total)
            total += high - low
        tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype)
    starts_all = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    ends_all = np.concatenate(ends) if ends else np.zeros(0, np.int64)
    contiguous = starts_all.size == 0 or bool(np.array_equal(starts_all[1:], ends_all[:-1]))
    if contiguous:
        offsets = np.concatenate([starts_all[:1], ends_all]) if starts_all.size else np.zeros(1, np.int64)
        shard = CorpusShard.from_offsets(tokens, offsets, str(path))
    else:
        shard = CorpusShard(tokens, starts_all, ends_all, str(path))
    # Keep the memory map open as long as the arrays that view it.
    object.__setattr__(shard, "_keep", (source, batches, whole))
    return [shard]


def read_parquet_shard(path: Path, field: str | None) -> CorpusShard:
    """A Parquet file's token-list column, decoded into one in-memory shard (row group by
    row group; peak memory: the tokens plus one row group)."""
    pa = _pyarrow(path)
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(f"{path}: cannot read it as Parquet ({exc})") from None
    field = _token_column(pa, file.schema_arrow, field, path)
    chunks, lengths = [], []
    try:
        for group in range(file.num_row_groups):
            column = file.read_row_group(group, columns=[field]).column(0)
            for piece in column.chunks:
                offsets, values, child_offset, dtype = _list_parts(pa, piece, path, field)
                array = np.frombuffer(values, dtype=dtype)[child_offset:] if values is not None else np.zeros(0, dtype)
                chunks.append(np.array(array[int(offsets[0]):int(offsets[-1])]))
                lengths.append(np.diff(offsets))
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(f"{path}: cannot read column {field!r} ({exc})") from None
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    length_array = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    offsets = np.zeros(length_array.shape[0] + 1, dtype=np.int64)
    np.cumsum(length_array, out=offsets[1:])
    return CorpusShard.from_offsets(tokens, offsets, str(path))
