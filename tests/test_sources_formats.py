"""Readers round-trip corpora written by each format's own tool; malformed files fail clearly."""

import struct

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from xbatch.sources import CorpusError, DocumentChunkIterDataset, open_corpus
from xbatch.sources.format_megatron import MAGIC, write_megatron


def documents(seed, count=300):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 20, size=count)
    lengths[::5] = 0  # empty documents
    docs = [rng.integers(0, 60000, size=n).astype(np.int64) for n in lengths]
    docs[2] = np.zeros(4, np.int64)  # token id 0
    return docs


def check(corpus, docs):
    assert len(corpus) == len(docs)
    for i in range(len(docs)):
        np.testing.assert_array_equal(corpus.document(i), docs[i])
    order = np.random.default_rng(0).permutation(len(docs))
    tokens, lengths = corpus.gather(order)
    np.testing.assert_array_equal(tokens, np.concatenate([docs[i] for i in order]))
    np.testing.assert_array_equal(lengths, [len(docs[i]) for i in order])
    chunks = list(DocumentChunkIterDataset(corpus, documents_per_chunk=64, seed=1))
    assert sorted(np.concatenate([c["documents"] for c in chunks]).tolist()) == list(range(len(docs)))


def arrow_table(docs, value_type=pa.int32(), large=False):
    list_type = pa.large_list(value_type) if large else pa.list_(value_type)
    return pa.table({"text": [f"doc {i}" for i in range(len(docs))],
                     "input_ids": pa.array([d.tolist() for d in docs], list_type)})


@pytest.mark.parametrize("kind", ["file", "stream", "zstd", "large_list", "uint16", "sliced"])
def test_arrow_round_trip(tmp_path, kind):
    docs = documents(1)
    table = arrow_table(docs, pa.uint16() if kind == "uint16" else pa.int32(), large=kind == "large_list")
    path = tmp_path / "data.arrow"
    if kind == "stream":
        with ipc.new_stream(path, table.schema) as writer:
            writer.write_table(table, max_chunksize=70)
    elif kind == "sliced":  # batches that are slices of one array (offsets not starting at 0)
        with ipc.new_file(path, table.schema) as writer:
            for low in range(0, len(docs), 100):
                writer.write_batch(table.slice(low, 100).to_batches()[0])
    else:
        options = ipc.IpcWriteOptions(compression="zstd" if kind == "zstd" else None)
        with ipc.new_file(path, table.schema, options=options) as writer:
            writer.write_table(table, max_chunksize=70)
    corpus = open_corpus(path)
    check(corpus, docs)
    shard = corpus.shards[0]
    if kind != "zstd":  # uncompressed: the tokens are the memory-mapped file itself
        assert shard.tokens.base is not None and not shard.tokens.flags.owndata


def test_hugging_face_style_arrow_cache(tmp_path):
    # datasets writes its cache with pyarrow's stream writer, batches of 1,000 rows.
    docs = documents(2, count=2500)
    table = arrow_table(docs)
    with ipc.new_stream(tmp_path / "data-00000-of-00001.arrow", table.schema) as writer:
        writer.write_table(table, max_chunksize=1000)
    check(open_corpus(tmp_path / "data-00000-of-00001.arrow", field="input_ids"), docs)


def test_parquet_round_trip_multi_file(tmp_path):
    parts = [documents(seed, count=150) for seed in (3, 4)]
    paths = []
    for i, docs in enumerate(parts):
        paths.append(tmp_path / f"part-{i}.parquet")
        pq.write_table(arrow_table(docs), paths[-1], row_group_size=40)
    check(open_corpus(paths), parts[0] + parts[1])


def test_array_record_round_trip(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    parts = [documents(seed, count=120) for seed in (5, 6)]
    paths = []
    for i, docs in enumerate(parts):
        paths.append(tmp_path / f"train.array_record-0000{i}-of-00002")
        writer = ArrayRecordWriter(str(paths[-1]), "group_size:16")
        for doc in docs:
            writer.write(np.array(doc, np.int32).tobytes())  # xlstm-jax's record layout
        writer.close()
    check(open_corpus(paths), parts[0] + parts[1])


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint8])
def test_megatron_round_trip(tmp_path, dtype):
    docs = [d % 256 if dtype == np.uint8 else d for d in documents(7)]
    write_megatron(tmp_path / "corpus_text_document", docs, dtype=dtype)
    for path in ("corpus_text_document", "corpus_text_document.bin", "corpus_text_document.idx"):
        corpus = open_corpus(tmp_path / path)
        assert isinstance(corpus.tokens, np.memmap) and corpus.tokens.dtype == dtype
        check(corpus, docs)


def test_megatron_layout_by_hand(tmp_path):
    # The published layout, written field by field: two sequences, [5, 6, 7] and [0].
    (tmp_path / "c.bin").write_bytes(np.array([5, 6, 7, 0], np.int32).tobytes())
    header = struct.pack("<9sQBQQ", MAGIC, 1, 4, 2, 3)
    body = np.array([3, 1], np.int32).tobytes() + np.array([0, 12], np.int64).tobytes()
    (tmp_path / "c.idx").write_bytes(header + body + np.array([0, 1, 2], np.int64).tobytes())
    corpus = open_corpus(tmp_path / "c")
    assert [corpus.document(i).tolist() for i in range(2)] == [[5, 6, 7], [0]]


def test_megatron_core_reads_ours(tmp_path):
    indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset",
                                  reason="megatron-core (needs torch) is not installed")
    docs = documents(8, count=50)
    write_megatron(tmp_path / "c", docs, dtype=np.uint16)
    theirs = indexed.IndexedDataset(str(tmp_path / "c"))
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(theirs[i], doc)


def test_malformed_files(tmp_path):
    docs = documents(9, count=10)
    write_megatron(tmp_path / "m", docs)
    idx = (tmp_path / "m.idx").read_bytes()
    (tmp_path / "bad.bin").write_bytes((tmp_path / "m.bin").read_bytes())
    for content, message in [
        (b"XXXXXXXXX" + idx[9:], "not a Megatron index"),
        (idx[:20], "too short"),
        (idx[:60], "need"),
        (idx[:17] + bytes([6]) + idx[18:], "dtype float64"),
        (idx[:17] + bytes([42]) + idx[18:], "unknown dtype code 42"),
        (idx[:9] + struct.pack("<Q", 2) + idx[17:], "version 2"),
    ]:
        (tmp_path / "bad.idx").write_bytes(content)
        with pytest.raises(CorpusError, match=message):
            open_corpus(tmp_path / "bad.idx")
    (tmp_path / "bad.bin").write_bytes(b"\0" * 8)
    (tmp_path / "bad.idx").write_bytes(idx)
    with pytest.raises(CorpusError, match="inside the 2 tokens"):
        open_corpus(tmp_path / "bad")
    with pytest.raises(CorpusError, match="no such file"):
        open_corpus(tmp_path / "missing.idx")

    table = pa.table({"a": pa.array([[1], None], pa.list_(pa.int32())), "b": pa.array([[1], [2]], pa.list_(pa.int64()))})
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(CorpusError, match="name the token-list column"):
        open_corpus(tmp_path / "t.parquet")
    with pytest.raises(CorpusError, match="1 null rows"):
        open_corpus(tmp_path / "t.parquet", field="a")
    with pytest.raises(CorpusError, match="no column 'c'"):
        open_corpus(tmp_path / "t.parquet", field="c")
    pq.write_table(pa.table({"s": ["x"]}), tmp_path / "s.parquet")
    with pytest.raises(CorpusError, match="column 's' is string"):
        open_corpus(tmp_path / "s.parquet", field="s")
    (tmp_path / "junk.parquet").write_bytes(b"junk")
    with pytest.raises(CorpusError, match="junk.parquet: cannot read it as Parquet"):
        open_corpus(tmp_path / "junk.parquet")
    (tmp_path / "junk.arrow").write_bytes(b"junk")
    with pytest.raises(CorpusError, match="junk.arrow: cannot read it as an Arrow"):
        open_corpus(tmp_path / "junk.arrow")

    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(str(tmp_path / "odd.array_record"), "group_size:1")
    writer.write(np.array([1, 2], np.int32).tobytes())
    writer.write(b"abc")
    writer.close()
    with pytest.raises(CorpusError, match="record 1 has 3 bytes"):
        open_corpus(tmp_path / "odd.array_record")
    (tmp_path / "junk.array_record").write_bytes(b"junk")
    with pytest.raises(CorpusError, match="junk.array_record: cannot read"):
        open_corpus(tmp_path / "junk.array_record")
