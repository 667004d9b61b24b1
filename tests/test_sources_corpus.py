"""Corpus, xbatch's own format and open_corpus."""

import pickle

import numpy as np
import pytest

from xbatch.sources import Corpus, CorpusError, XbatchCorpusWriter, open_corpus, write_xbatch_corpus


def random_documents(seed, count=50, max_length=40, dtype=np.int32):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_length, size=count)
    lengths[::7] = 0  # empty documents
    documents = [rng.integers(0, 1000, size=n).astype(dtype) for n in lengths]
    documents[1] = np.zeros(5, dtype)  # token id 0 is a token
    return documents


def assert_documents(corpus, documents):
    assert len(corpus) == len(documents)
    for i, document in enumerate(documents):
        np.testing.assert_array_equal(corpus.document(i), document)
    tokens, lengths = corpus.gather(np.arange(len(documents))[::-1])
    np.testing.assert_array_equal(lengths, [len(d) for d in documents[::-1]])
    np.testing.assert_array_equal(tokens, np.concatenate(documents[::-1]))
    assert tokens.dtype == np.int32


def test_from_documents_and_arrays():
    documents = random_documents(0)
    corpus = Corpus.from_documents(documents)
    assert_documents(corpus, documents)
    assert corpus.num_tokens == sum(map(len, documents))
    np.testing.assert_array_equal(corpus.lengths(), [len(d) for d in documents])
    same = Corpus.from_arrays(corpus.tokens, offsets=corpus.offsets)
    assert_documents(same, documents)
    assert corpus.document(-1).tolist() == documents[-1].tolist()


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_xbatch_format_round_trip(tmp_path, dtype):
    documents = random_documents(1, dtype=dtype)
    corpus = Corpus.from_documents(documents)
    path = write_xbatch_corpus(tmp_path / "c.xbatch", corpus.tokens.astype(dtype), offsets=corpus.offsets,
                               token_columns={"loss_mask": corpus.tokens % 2 == 0})
    opened = open_corpus(path)
    assert isinstance(opened.tokens, np.memmap) and isinstance(opened.offsets, np.memmap)
    assert opened.tokens.dtype == dtype
    assert_documents(opened, documents)
    assert opened.shards[0].token_columns["loss_mask"].shape == opened.tokens.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.xbatch"]  # no temporary left


def test_multi_file_corpus_and_pickle(tmp_path):
    parts = [random_documents(seed, count=20) for seed in range(3)]
    paths = []
    for i, documents in enumerate(parts):
        corpus = Corpus.from_documents(documents)
        paths.append(write_xbatch_corpus(tmp_path / f"p{i}", corpus.tokens, offsets=corpus.offsets))
    corpus = open_corpus(paths)
    every = [d for documents in parts for d in documents]
    assert_documents(corpus, every)
    assert corpus.shard_starts.tolist() == [0, 20, 40, 60]
    shard, local = corpus.locate([0, 25, 59])
    assert shard.tolist() == [0, 1, 2] and local.tolist() == [0, 5, 19]
    rng = np.random.default_rng(0)
    order = rng.integers(0, 60, size=200)
    tokens, lengths = corpus.gather(order)
    np.testing.assert_array_equal(tokens, np.concatenate([every[i] for i in order]))
    restored = pickle.loads(pickle.dumps(corpus))
    assert isinstance(restored.shards[0].tokens, np.memmap)  # re-opened, not copied
    assert len(pickle.dumps(corpus)) < 2000
    assert_documents(restored, every)
    with pytest.raises(CorpusError, match="3 shards"):
        corpus.tokens
    in_memory = Corpus.from_documents(every)
    assert_documents(pickle.loads(pickle.dumps(in_memory)), every)


def test_streaming_writer(tmp_path):
    documents = random_documents(2)
    with XbatchCorpusWriter(tmp_path / "w", dtype=np.uint16) as writer:
        for low in range(0, len(documents), 9):
            part = documents[low:low + 9]
            writer.add(np.concatenate(part), [len(d) for d in part])
    assert_documents(open_corpus(tmp_path / "w"), documents)
    with pytest.raises(ValueError, match="do not fit uint16"):
        with XbatchCorpusWriter(tmp_path / "bad", dtype=np.uint16) as writer:
            writer.add(np.array([70000]), [1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_write_refuses_to_overwrite(tmp_path):
    write_xbatch_corpus(tmp_path / "c", np.arange(3), lengths=[3])
    with pytest.raises(FileExistsError, match="already exists"):
        write_xbatch_corpus(tmp_path / "c", np.arange(2), lengths=[2])
    write_xbatch_corpus(tmp_path / "c", np.arange(2), lengths=[2], overwrite=True)
    assert open_corpus(tmp_path / "c").document(0).tolist() == [0, 1]


def test_malformed_xbatch_corpora(tmp_path):
    folder = tmp_path / "c"
    write_xbatch_corpus(folder, np.arange(10), lengths=[4, 6])
    np.save(folder / "offsets.npy", np.array([0, 4, 11]))
    with pytest.raises(CorpusError, match="offsets.npy: expected offsets from 0 to 10"):
        open_corpus(folder)
    np.save(folder / "offsets.npy", np.array([0, 4, 10], dtype=np.int32))
    with pytest.raises(CorpusError, match="offsets.npy: expected a 1-d int64 array"):
        open_corpus(folder)
    np.save(folder / "offsets.npy", np.array([0, 12, 10]))
    corpus = open_corpus(folder)  # opening checks O(1) facts; reading the document does the rest
    with pytest.raises(CorpusError, match="document 0 has range \\[0, 12\\)"):
        corpus.document(0)
    with pytest.raises(CorpusError, match="range 0 is \\[0, 12\\)"):
        corpus.gather([0])
    with pytest.raises(CorpusError, match="document 0 has range"):
        corpus.shards[0].validate()
    (folder / "tokens.npy").write_bytes(b"not numpy")
    with pytest.raises(CorpusError, match="tokens.npy: cannot memory-map"):
        open_corpus(folder)
    np.save(folder / "tokens.npy", np.arange(10.0))
    np.save(folder / "offsets.npy", np.array([0, 4, 10]))
    with pytest.raises(CorpusError, match="tokens.npy: expected a 1-d integer array"):
        open_corpus(folder)


def test_open_corpus_errors(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        open_corpus(tmp_path / "missing.parquet")
    with pytest.raises(CorpusError, match="cannot tell the corpus format"):
        open_corpus(tmp_path / "corpus.txt")
    with pytest.raises(CorpusError, match="not an xbatch corpus"):
        open_corpus(tmp_path)
    with pytest.raises(CorpusError, match="format: expected one of"):
        open_corpus(tmp_path, format="csv")
    with pytest.raises(CorpusError, match="paths"):
        open_corpus([])


def test_document_errors():
    corpus = Corpus.from_documents([[1, 2], [3]])
    with pytest.raises(IndexError, match="document 2 is out of range for 2"):
        corpus.document(2)
    with pytest.raises(TypeError, match="index"):
        corpus.document(1.0)
    with pytest.raises(IndexError, match="indices"):
        corpus.gather([0, 2])
    with pytest.raises(CorpusError, match="exactly one of offsets or lengths"):
        Corpus.from_arrays([1, 2])
    with pytest.raises(CorpusError, match="never fall"):
        Corpus.from_arrays([1, 2], offsets=[0, 2, 1])
    with pytest.raises(CorpusError, match="last 3"):
        Corpus.from_arrays([1, 2], lengths=[3])
    with pytest.raises(CorpusError, match="tokens must be a 1-d integer array"):
        Corpus.from_arrays([1.5], lengths=[1])
