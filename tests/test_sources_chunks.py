"""DocumentChunkIterDataset: grain's document order, sharding, worker slices, checkpoints."""

import json
import pickle

import grain
import numpy as np
import pytest
from grain.experimental import assert_equal_output_after_checkpoint

from xbatch.packing import LLMPackIterDataset
from xbatch.sources import Corpus, DocumentChunkIterDataset, open_corpus, write_xbatch_corpus
from xbatch.sources.shuffle import even_split


def make_corpus(count, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 30, size=count)
    tokens = rng.integers(0, 500, size=int(lengths.sum())).astype(np.int32)
    return Corpus.from_arrays(tokens, lengths=lengths)


def grain_even_split(count, shard_index, shard_count):
    # grain's own function (not public; tests may use grain internals as the oracle).
    from grain._src.core.sharding import even_split as grains

    return grains(count, grain.sharding.ShardOptions(shard_index, shard_count, drop_remainder=False))


def grain_order(count, *, seed, num_epochs, shard_index, shard_count, shuffle=True):
    start, stop = grain_even_split(count, shard_index, shard_count)
    assert (start, stop) == even_split(count, shard_index, shard_count)
    dataset = grain.MapDataset.source(list(range(count)))[start:stop]
    if shuffle:
        dataset = dataset.shuffle(seed)
    return dataset.repeat(num_epochs)


def chunk_documents(dataset):
    return np.concatenate([chunk["documents"] for chunk in dataset] or [np.zeros(0, np.int64)])


@pytest.mark.parametrize("count, shard_count", [(300, 1), (300, 3), (7, 2), (70000, 4)])
def test_order_equals_grain(count, shard_count):
    corpus = make_corpus(count)
    for seed in (123456789, 2**32 - 1):
        for shard_index in range(shard_count):
            for shuffle in (True, False):
                dataset = DocumentChunkIterDataset(corpus, documents_per_chunk=333, shuffle=shuffle, seed=seed,
                                                   num_epochs=3, shard_index=shard_index, shard_count=shard_count)
                want = grain_order(count, seed=seed, num_epochs=3, shard_index=shard_index,
                                   shard_count=shard_count, shuffle=shuffle)
                got = chunk_documents(dataset)
                if count > 10000:  # grain's own order costs microseconds per document
                    spots = np.random.default_rng(seed % 1000).integers(0, len(want), size=300)
                    np.testing.assert_array_equal(got[spots], [want[int(i)] for i in spots])
                    assert len(got) == len(want)
                else:
                    np.testing.assert_array_equal(got, list(want))


def test_chunks_hold_the_documents():
    corpus = make_corpus(500)
    for chunk in DocumentChunkIterDataset(corpus, documents_per_chunk=64, seed=4):
        assert chunk["tokens"].dtype == np.int32 and chunk["lengths"].dtype == np.int64
        assert len(chunk["documents"]) <= 64
        want = [corpus.document(int(i)) for i in chunk["documents"]]
        np.testing.assert_array_equal(chunk["lengths"], [len(d) for d in want])
        np.testing.assert_array_equal(chunk["tokens"], np.concatenate(want))


def test_worker_slices_equal_grains():
    corpus = make_corpus(101)
    for workers in (2, 3):
        seen = []
        for worker in range(workers):
            dataset = DocumentChunkIterDataset(corpus, documents_per_chunk=10, seed=9, num_epochs=2,
                                               shard_index=1, shard_count=2)
            dataset.set_slice(slice(worker, None, workers))
            want = grain_order(101, seed=9, num_epochs=2, shard_index=1, shard_count=2)[worker::workers]
            got = chunk_documents(dataset)
            np.testing.assert_array_equal(got, list(want))
            seen.append(got)
        # Together every stream position exactly once: each document once per epoch.
        counts = np.bincount(np.concatenate(seen), minlength=101)
        assert counts[:51].sum() == 0 and (counts[51:] == 2).all()


def test_sequential_worker_slices():
    corpus = make_corpus(100)
    parts = []
    for worker in range(3):
        dataset = DocumentChunkIterDataset(corpus, documents_per_chunk=7, seed=1)
        dataset.set_slice(slice(worker, None, 3), sequential_slice=True)
        parts.append(chunk_documents(dataset))
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert sorted(parts[0].tolist()) == list(range(34))


@pytest.mark.parametrize("shuffle", [True, False])
def test_checkpoints_are_exact(shuffle):
    corpus = make_corpus(300)
    dataset = DocumentChunkIterDataset(corpus, documents_per_chunk=32, shuffle=shuffle, seed=3, num_epochs=2)
    assert_equal_output_after_checkpoint(dataset)
    iterator = iter(dataset)
    for _ in range(12):
        next(iterator)
    state = iterator.get_state()
    assert json.loads(json.dumps(state)) == state == {"epoch": 1, "position": 384}
    rest = [chunk["documents"].tolist() for chunk in iterator]
    fresh = iter(dataset)
    fresh.set_state(state)
    assert [chunk["documents"].tolist() for chunk in fresh] == rest
    with pytest.raises(ValueError, match="state"):
        fresh.set_state({"epoch": 0})


def test_forever_and_empty_shards():
    corpus = make_corpus(10)
    iterator = iter(DocumentChunkIterDataset(corpus, documents_per_chunk=4, num_epochs=None, seed=2))
    documents = np.concatenate([next(iterator)["documents"] for _ in range(30)])
    want = grain_order(10, seed=2, num_epochs=12, shard_index=0, shard_count=1)
    np.testing.assert_array_equal(documents, list(want))
    assert list(DocumentChunkIterDataset(make_corpus(2), shard_index=2, shard_count=3)) == []


def test_pickles_and_rejects_arguments(tmp_path):
    source = make_corpus(50)
    path = write_xbatch_corpus(tmp_path / "c", source.tokens, offsets=source.offsets)
    dataset = DocumentChunkIterDataset(open_corpus(path), documents_per_chunk=8, seed=1)
    clone = pickle.loads(pickle.dumps(dataset))
    assert chunk_documents(clone).tolist() == chunk_documents(dataset).tolist()
    for kwargs, message in [
        (dict(documents_per_chunk=0), "documents_per_chunk"),
        (dict(seed=-1), "seed"),
        (dict(seed=2**32), "seed"),
        (dict(num_epochs=0), "num_epochs"),
        (dict(shard_index=2, shard_count=2), "shard_index"),
        (dict(shard_count=0), "shard_count"),
    ]:
        with pytest.raises(ValueError, match=message):
            DocumentChunkIterDataset(source, **kwargs)
    with pytest.raises(TypeError, match="corpus"):
        DocumentChunkIterDataset([np.arange(3)])
    with pytest.raises(ValueError, match="set_slice"):
        dataset.set_slice(slice(0, 5, 2))


def test_packed_rows_equal_grain_source():
    corpus = make_corpus(400, seed=5)
    documents = [corpus.document(i) for i in range(len(corpus))]
    kwargs = dict(seq_len=64, num_packing_bins=8, eod_token_id=1)
    ours = LLMPackIterDataset(DocumentChunkIterDataset(corpus, documents_per_chunk=50, seed=11, num_epochs=2),
                              **kwargs)
    theirs = LLMPackIterDataset(grain.MapDataset.source(documents).shuffle(11).repeat(2).to_iter_dataset(),
                                **kwargs)
    rows = list(ours)
    want = list(theirs)
    assert len(rows) == len(want)
    for row, expected in zip(rows, want):
        for key in expected:
            np.testing.assert_array_equal(row[key], expected[key])

# mp_prefetch with 2 workers: tests/test_sources_pipeline.py::test_workers_hold_every_document_once


@pytest.mark.parametrize("shift", ["inputs", "targets"])
def test_a_corpus_loss_mask_column_reaches_the_packer_through_shuffled_chunks(tmp_path, backend, shift):
    from xbatch.packing import pack_documents

    rng = np.random.default_rng(5)
    paths, tokens, masks, lengths = [], [], [], []
    for part in range(2):  # two shards: one global document index
        part_lengths = rng.integers(0, 40, size=30)
        part_tokens = rng.integers(0, 1000, size=int(part_lengths.sum()), dtype=np.int32)
        part_mask = rng.integers(0, 2, size=part_tokens.shape[0]).astype(np.int8)
        paths.append(write_xbatch_corpus(tmp_path / f"s{part}", part_tokens, lengths=part_lengths,
                                         token_columns={"loss_mask": part_mask}))
        offsets = np.concatenate([[0], np.cumsum(part_lengths)])
        for i in range(part_lengths.shape[0]):
            tokens.append(part_tokens[offsets[i]:offsets[i + 1]])
            masks.append(part_mask[offsets[i]:offsets[i + 1]])
    corpus = open_corpus(paths)
    chunks = DocumentChunkIterDataset(corpus, documents_per_chunk=7, seed=11)
    order = np.concatenate([chunk["documents"] for chunk in chunks])
    assert sorted(order.tolist()) == list(range(60))
    packed = LLMPackIterDataset(chunks, seq_len=32, num_packing_bins=4, eod_token_id=1, shift=shift)
    rows = list(packed)
    expected = pack_documents(np.concatenate([tokens[i] for i in order]), [len(tokens[i]) for i in order],
                              loss_mask=np.concatenate([masks[i] for i in order]), seq_len=32,
                              eod_token_id=1, num_packing_bins=4, shift=shift)
    for name in ("inputs", "targets", "inputs_segmentation", "targets_segmentation"):
        np.testing.assert_array_equal(np.stack([row[name] for row in rows]), getattr(expected, name))
    # The mask is really applied: some target is not trained on.
    assert (expected.targets_segmentation != expected.inputs_segmentation).any()
