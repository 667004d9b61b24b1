"""The LLM packer: streaming, ragged chunks, bulk and document windows, against grain."""

import pickle

import grain
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xbatch.batch import LLMBatch, LLMIndexedBatch
from xbatch.packing import (
    LLMPackIterDataset,
    PackingStats,
    pack_documents,
    window_documents,
)

E = 99  # the EOD token in these tests; 0 is a real token, padding is 0 too
FIELDS = ("inputs", "targets", "inputs_position", "inputs_segmentation", "targets_position",
          "targets_segmentation")
SEED_DOCS = [[1, 2, 3], [4, 5], [6, 7]]


def _source(elements):
    return grain.MapDataset.source(elements).to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    )


def _stream(elements, **kwargs):
    kwargs = {"eod_token_id": E, **kwargs}
    return LLMPackIterDataset(_source(elements), **kwargs)


def _rows(dataset):
    """The dataset's rows as {field: int32 [rows, seq_len]}."""
    rows = list(dataset)
    return {name: np.stack([row[name] for row in rows]) for name in FIELDS}


def _chunks(docs, sizes):
    """The documents as ragged chunks of the given sizes (cycled)."""
    chunks, start, index = [], 0, 0
    while start < len(docs):
        part = docs[start:start + sizes[index % len(sizes)]]
        flat = np.concatenate([np.asarray(d, np.int64) for d in part]) if part else np.zeros(0, np.int64)
        chunks.append({"tokens": flat, "lengths": np.array([len(d) for d in part], np.int64)})
        start += len(part)
        index += 1
    return chunks


def _flat(docs):
    tokens = np.concatenate([np.asarray(d, np.int32) for d in docs]) if docs else np.zeros(0, np.int32)
    return tokens, np.array([len(d) for d in docs], np.int64)


def _oracle_pieces(docs, seq_len, long_documents):
    """EOD-terminated pieces, cut in plain Python."""
    pieces = []
    for doc in docs:
        cells = list(doc) + [E]
        if long_documents == "truncate":
            pieces.append(cells[:seq_len])
        else:
            pieces += [cells[i:i + seq_len] for i in range(0, len(cells), seq_len)]
    return pieces


def _grain_rows(pieces, seq_len, num_bins, algorithm="first_fit", shift="inputs", **kwargs):
    """grain's packer on the pieces, then shifted: the oracle."""
    cls = {"first_fit": grain.experimental.FirstFitPackIterDataset,
           "best_fit": grain.experimental.BestFitPackIterDataset}[algorithm]
    source = _source([{"targets": np.array(p, np.int32)} for p in pieces])
    packed = list(cls(source, length_struct={"targets": seq_len}, num_packing_bins=num_bins,
                      shuffle_bins=kwargs.pop("shuffle_bins", False), **kwargs))
    tokens = np.stack([row["targets"] for row in packed]).astype(np.int32)
    seg = np.stack([row["targets_segment_ids"] for row in packed])
    pos = np.stack([row["targets_positions"] for row in packed])
    if shift == "inputs":
        inputs = np.concatenate([np.full((len(tokens), 1), E, np.int32), tokens[:, :-1]], axis=1)
        return dict(inputs=inputs, targets=tokens, inputs_position=pos, inputs_segmentation=seg,
                    targets_position=pos, targets_segmentation=seg)

    def left(a):
        return np.concatenate([a[:, 1:], np.zeros((len(a), 1), a.dtype)], axis=1)

    return dict(inputs=tokens, targets=left(tokens), inputs_position=pos, inputs_segmentation=seg,
                targets_position=left(pos), targets_segmentation=left(seg))


def _assert_rows_equal(actual, expected):
    for name in FIELDS:
        got = np.asarray(getattr(actual, name) if isinstance(actual, LLMBatch) else actual[name])
        assert got.dtype == np.int32, name
        np.testing.assert_array_equal(got, expected[name], err_msg=name)


def _random_docs(rng, count, max_length, zero_share=0.3):
    docs = []
    for _ in range(count):
        doc = rng.integers(1, 50, rng.integers(0, max_length + 1))
        doc[rng.random(doc.shape) < zero_share] = 0  # token 0 is a normal token
        docs.append(doc)
    return docs


# The seed's example ---------------------------------------------------------------------

SEED_ROWS = {
    "targets": [[1, 2, 3, E, 4, 5, E, 0], [6, 7, E, 0, 0, 0, 0, 0]],
    "inputs": [[E, 1, 2, 3, E, 4, 5, E], [E, 6, 7, E, 0, 0, 0, 0]],
    "targets_segmentation": [[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 0, 0, 0, 0, 0]],
    "inputs_segmentation": [[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 0, 0, 0, 0, 0]],
    "targets_position": [[0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 2, 0, 0, 0, 0, 0]],
    "inputs_position": [[0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 2, 0, 0, 0, 0, 0]],
}


def test_seed_example_streaming_ragged_and_bulk(backend):
    expected = {k: np.array(v) for k, v in SEED_ROWS.items()}
    _assert_rows_equal(_rows(_stream(SEED_DOCS, seq_len=8, num_packing_bins=1)), expected)
    _assert_rows_equal(_rows(_stream(_chunks(SEED_DOCS, [3]), seq_len=8, num_packing_bins=1)), expected)
    batch = pack_documents(*_flat(SEED_DOCS), seq_len=8, eod_token_id=E, num_packing_bins=1)
    assert isinstance(batch, LLMBatch)
    _assert_rows_equal(batch, expected)
    np.testing.assert_array_equal(batch.get_document_borders()[0], [1, 0, 0, 0, 1, 0, 0, 1])


def test_shift_targets_layout(backend):
    rows = _rows(_stream(SEED_DOCS, seq_len=8, num_packing_bins=1, shift="targets"))
    np.testing.assert_array_equal(rows["inputs"][0], [1, 2, 3, E, 4, 5, E, 0])
    np.testing.assert_array_equal(rows["targets"][0], [2, 3, E, 4, 5, E, 0, 0])
    np.testing.assert_array_equal(rows["inputs_segmentation"][0], [1, 1, 1, 1, 2, 2, 2, 0])
    np.testing.assert_array_equal(rows["targets_segmentation"][0], [1, 1, 1, 2, 2, 2, 0, 0])
    np.testing.assert_array_equal(rows["targets_position"][0], [1, 2, 3, 0, 1, 2, 0, 0])
    # A full row: the last column has no target.
    full = _rows(_stream([[1, 2, 3]], seq_len=4, num_packing_bins=1, shift="targets"))
    np.testing.assert_array_equal(full["targets"][0], [2, 3, E, 0])
    np.testing.assert_array_equal(full["targets_segmentation"][0], [1, 1, 1, 0])


# Differential tests against grain -------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["first_fit", "best_fit"])
@pytest.mark.parametrize("long_documents", ["split", "truncate"])
@pytest.mark.parametrize("shift", ["inputs", "targets"])
def test_streaming_ragged_and_bulk_equal_grain(backend, algorithm, long_documents, shift):
    rng = np.random.default_rng(7)
    seq_len, num_bins = 16, 3
    docs = _random_docs(rng, 60, 40)
    expected = _grain_rows(_oracle_pieces(docs, seq_len, long_documents), seq_len, num_bins, algorithm, shift)
    kwargs = dict(seq_len=seq_len, num_packing_bins=num_bins, algorithm=algorithm,
                  long_documents=long_documents, shift=shift)
    _assert_rows_equal(_rows(_stream(docs, **kwargs)), expected)
    _assert_rows_equal(_rows(_stream([d.tolist() for d in docs], **kwargs)), expected)
    _assert_rows_equal(_rows(_stream(_chunks(docs, [7, 1, 0, 13]), **kwargs)), expected)
    _assert_rows_equal(pack_documents(*_flat(docs), eod_token_id=E, **kwargs), expected)


# The backend fixture only selects a module: sharing it across examples is intended.
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(0, 25), min_size=1, max_size=30),
    seq_len=st.integers(1, 12),
    num_bins=st.integers(1, 5),
    algorithm=st.sampled_from(["first_fit", "best_fit"]),
    long_documents=st.sampled_from(["split", "truncate"]),
    chunk=st.integers(1, 9),
)
def test_random_streams_equal_grain(backend, lengths, seq_len, num_bins, algorithm, long_documents, chunk):
    docs = [np.arange(n) % 5 for n in lengths]  # many zeros: lengths must come from arrays
    kwargs = dict(seq_len=seq_len, num_packing_bins=num_bins, algorithm=algorithm, long_documents=long_documents)
    streamed = _rows(_stream(docs, **kwargs))
    expected = _grain_rows(_oracle_pieces(docs, seq_len, long_documents), seq_len, num_bins, algorithm)
    _assert_rows_equal(streamed, expected)
    _assert_rows_equal(pack_documents(*_flat(docs), eod_token_id=E, **kwargs), streamed)
    _assert_rows_equal(_rows(_stream(_chunks(docs, [chunk]), **kwargs)), streamed)


def test_no_documents_give_no_rows(backend):
    empty_chunk = {"tokens": np.zeros(0, np.int32), "lengths": np.zeros(0, np.int64)}
    assert list(_stream([], seq_len=8, num_packing_bins=2)) == []
    assert list(_stream([empty_chunk, empty_chunk], seq_len=8, num_packing_bins=2)) == []
    batch, stats = pack_documents([], [], seq_len=8, eod_token_id=E, return_stats=True)
    assert batch.targets.shape == (0, 8) and stats == PackingStats()


@pytest.mark.parametrize("algorithm", ["first_fit", "best_fit"])
def test_whole_corpus_is_one_grain_window(backend, algorithm):
    rng = np.random.default_rng(3)
    docs = _random_docs(rng, 50, 30)
    pieces = _oracle_pieces(docs, 16, "split")
    expected = _grain_rows(pieces, 16, len(pieces), algorithm)
    _assert_rows_equal(pack_documents(*_flat(docs), seq_len=16, eod_token_id=E, algorithm=algorithm), expected)


@pytest.mark.parametrize("algorithm", ["first_fit", "best_fit"])
def test_decreasing_places_longest_first_and_keeps_corpus_order_in_rows(backend, algorithm):
    rng = np.random.default_rng(5)
    seq_len = 16
    lengths = [n + (n % seq_len == 0) for n in rng.integers(1, 40, 50)]  # no piece is a lone EOD
    docs = [1000 * i + np.arange(n) for i, n in enumerate(lengths)]  # every piece starts uniquely
    pieces = _oracle_pieces(docs, seq_len, "split")
    piece_of_first_token = {piece[0]: i for i, piece in enumerate(pieces)}
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i]))  # stable
    oracle = _grain_rows([pieces[i] for i in order], seq_len, len(pieces), algorithm)
    expected_rows = []
    for tokens, positions, seg in zip(oracle["targets"], oracle["targets_position"], oracle["targets_segmentation"]):
        starts = (positions == 0) & (seg > 0)
        expected_rows.append(sorted(piece_of_first_token[token] for token in tokens[starts]))
    batch = pack_documents(*_flat(docs), seq_len=seq_len, eod_token_id=E, algorithm=f"{algorithm}_decreasing")
    assert len(batch.targets) == len(oracle["targets"])
    for row, row_pieces in enumerate(expected_rows):
        cells = [token for i in row_pieces for token in pieces[i]]
        np.testing.assert_array_equal(batch.targets[row, :len(cells)], cells)
        assert np.all(batch.targets_segmentation[row, len(cells):] == 0)
    plain = pack_documents(*_flat(docs), seq_len=seq_len, eod_token_id=E, algorithm=algorithm)
    assert len(batch.targets) <= len(plain.targets)


def test_shuffled_windows_equal_grain(backend):
    rng = np.random.default_rng(11)
    docs = _random_docs(rng, 80, 20)
    expected = _grain_rows(_oracle_pieces(docs, 16, "split"), 16, 4, shuffle_bins=True, seed=42)
    got = _rows(_stream(docs, seq_len=16, num_packing_bins=4, shuffle_bins=True, seed=42))
    _assert_rows_equal(got, expected)
    assert not np.array_equal(got["targets"], _rows(_stream(docs, seq_len=16, num_packing_bins=4))["targets"])


# Long documents and statistics ----------------------------------------------------------

def test_split_and_truncate_statistics(backend):
    docs = [list(range(1, 11)), [0, 0], []]  # 10 tokens + EOD = 11 cells > 8
    split_batch, split = pack_documents(*_flat(docs), seq_len=8, eod_token_id=E, return_stats=True)
    assert split == PackingStats(rows=2, documents=3, pieces=4, tokens=15, capacity=16,
                                 tokens_truncated=0, documents_split=1, loss_tokens=15)
    np.testing.assert_array_equal(split_batch.targets[0], [1, 2, 3, 4, 5, 6, 7, 8])
    np.testing.assert_array_equal(split_batch.targets[1], [9, 10, E, 0, 0, E, E, 0])
    np.testing.assert_array_equal(split_batch.targets_segmentation[1], [1, 1, 1, 2, 2, 2, 3, 0])
    truncated_batch, truncated = pack_documents(*_flat(docs), seq_len=8, eod_token_id=E,
                                                long_documents="truncate", return_stats=True)
    assert truncated == PackingStats(rows=2, documents=3, pieces=3, tokens=12, capacity=16,
                                     tokens_truncated=3, documents_split=0, loss_tokens=12)
    np.testing.assert_array_equal(truncated_batch.targets[0], [1, 2, 3, 4, 5, 6, 7, 8])  # EOD dropped too
    assert truncated.fill_ratio == pytest.approx(12 / 16)
    iterator = iter(_stream(docs, seq_len=8, num_packing_bins=2))
    list(iterator)
    assert iterator.stats == split


def test_error_mode_names_document_and_length(backend):
    docs = [[1, 2], list(range(8))]
    with pytest.raises(ValueError, match=r"document 1 .*8 tokens"):
        pack_documents(*_flat(docs), seq_len=8, eod_token_id=E, long_documents="error")
    with pytest.raises(ValueError, match="8 tokens"):
        list(_stream(docs, seq_len=8, num_packing_bins=2, long_documents="error"))
    with pytest.raises(ValueError, match=r"document 1 of the ragged chunk"):
        list(_stream(_chunks(docs, [2]), seq_len=8, num_packing_bins=2, long_documents="error"))
    # A document of exactly seq_len - 1 tokens fits with its EOD.
    assert len(pack_documents(*_flat([list(range(7))]), seq_len=8, eod_token_id=E, long_documents="error").targets) == 1


@pytest.mark.parametrize("algorithm", ["first_fit", "concat_then_split", "rolling_best_fit"])
def test_error_mode_names_the_corpus_index_of_a_shuffled_chunk_document(backend, algorithm):
    from xbatch.sources import Corpus, DocumentChunkIterDataset

    docs = [[1, 2]] * 40
    docs[29] = list(range(8))  # the only document too long for seq_len=8
    chunks = DocumentChunkIterDataset(Corpus.from_documents(docs), documents_per_chunk=16, seed=3)
    with pytest.raises(ValueError, match=r"document 29 of the corpus has 8 tokens"):
        list(LLMPackIterDataset(chunks, seq_len=8, num_packing_bins=2, eod_token_id=E, algorithm=algorithm,
                                long_documents="error"))


# Checkpoints, pickling, worker processes -----------------------------------------------

@pytest.mark.parametrize("ragged", [False, True])
def test_checkpoint_restores_identical_rows(backend, ragged):
    rng = np.random.default_rng(2)
    docs = _random_docs(rng, 30, 30)
    elements = _chunks(docs, [5, 9]) if ragged else docs
    dataset = _stream(elements, seq_len=12, num_packing_bins=3, shuffle_bins=True, seed=3)
    grain.experimental.assert_equal_output_after_checkpoint(dataset)


def test_restored_iterator_continues_rows_and_statistics(backend):
    rng = np.random.default_rng(4)
    docs = _random_docs(rng, 40, 30)
    dataset = _stream(_chunks(docs, [6]), seq_len=10, num_packing_bins=2, shuffle_bins=True)
    full = list(iter(dataset))
    first = iter(dataset)
    for _ in range(7):
        next(first)
    state = first.get_state()
    second = iter(dataset)
    second.set_state(state)
    assert second.get_state() == state
    rest = list(second)
    assert len(rest) == len(full) - 7
    for a, b in zip(rest, full[7:]):
        np.testing.assert_array_equal(a["targets"], b["targets"])
    everything = iter(dataset)
    list(everything)
    assert second.stats == everything.stats


def test_pickled_dataset_yields_the_same_rows(backend):
    docs = _random_docs(np.random.default_rng(1), 30, 20)
    dataset = _stream(docs, seq_len=16, num_packing_bins=2)
    _assert_rows_equal(_rows(pickle.loads(pickle.dumps(dataset))), _rows(dataset))


@pytest.mark.timeout(120)
def test_mp_prefetch_two_workers_pack_their_slices():
    docs = _random_docs(np.random.default_rng(9), 40, 12)
    source = grain.MapDataset.source(docs)
    kwargs = dict(seq_len=16, num_packing_bins=2, eod_token_id=E)
    dataset = LLMPackIterDataset(source.to_iter_dataset(), **kwargs)
    iterator = iter(dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=2)))
    try:
        got = [row["targets"].tolist() for row in iterator]
    finally:
        iterator.close()
    per_worker = [[row["targets"].tolist() for row in LLMPackIterDataset(source[i::2].to_iter_dataset(), **kwargs)]
                  for i in range(2)]
    assert sorted(got) == sorted(per_worker[0] + per_worker[1])
    assert all(row in got for row in per_worker[0]) and per_worker[0] != per_worker[1]


def test_packer_is_str_and_checks_arguments():
    dataset = _stream(SEED_DOCS, seq_len=8, num_packing_bins=2)
    assert "seq_len=8" in str(dataset) and "num_packing_bins=2" in str(dataset)
    for kwargs, message in [
        (dict(seq_len=0, num_packing_bins=1), "seq_len"),
        (dict(seq_len=8, num_packing_bins=0), "num_packing_bins"),
        (dict(seq_len=8, num_packing_bins=1, algorithm="next_fit"), "algorithm"),
        (dict(seq_len=8, num_packing_bins=1, long_documents="drop"), "long_documents"),
        (dict(seq_len=8, num_packing_bins=1, shift="both"), "shift"),
        (dict(seq_len=8, num_packing_bins=1, eod_token_id=2**40), "eod_token_id"),
    ]:
        with pytest.raises(ValueError, match=message):
            LLMPackIterDataset(_source(SEED_DOCS), **{"eod_token_id": E, **kwargs})


@pytest.mark.parametrize("element, error, message", [
    (np.array([1.0, 2.0]), TypeError, "document"),
    (np.array([[1, 2], [3, 4]]), ValueError, "document"),
    ({"tokens": np.array([1, 2, 3]), "lengths": np.array([1, 1])}, ValueError, "lengths"),
    ({"tokens": np.array([1, 2, 3]), "lengths": np.array([4, -1])}, ValueError, "lengths"),
    ({"tokens": np.array([1.5]), "lengths": np.array([1])}, TypeError, "tokens"),
    ({"lengths": np.array([1])}, ValueError, "tokens"),
    ({"token": np.array([1])}, ValueError, "tokens"),
])
def test_bad_parent_elements_are_named(backend, element, error, message):
    with pytest.raises(error, match=message):
        list(_stream([element], seq_len=8, num_packing_bins=2))


def test_bulk_checks_arguments():
    tokens, lengths = _flat(SEED_DOCS)
    bad = [
        (dict(tokens=tokens.astype(float)), TypeError, "tokens"),
        (dict(tokens=tokens.reshape(1, -1)), ValueError, "tokens"),
        (dict(lengths=lengths + 1), ValueError, "lengths"),
        (dict(lengths=np.array([8, -1, 0])), ValueError, "lengths"),
        (dict(seq_len=0), ValueError, "seq_len"),
        (dict(num_packing_bins=0), ValueError, "num_packing_bins"),
        (dict(algorithm="first_fit_decreasing", num_packing_bins=4), ValueError, "num_packing_bins"),
        (dict(algorithm="worst_fit"), ValueError, "algorithm"),
        (dict(long_documents="drop"), ValueError, "long_documents"),
        (dict(shift="none"), ValueError, "shift"),
        (dict(tokens=np.array([1, 2, 3, 4, 5, 6, 2**33])), ValueError, r"\[0, 2\*\*31\)"),
    ]
    for changes, error, message in bad:
        kwargs = {**dict(tokens=tokens, lengths=lengths, seq_len=8, eod_token_id=E), **changes}
        with pytest.raises(error, match=message):
            pack_documents(**kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        window_documents(tokens, lengths, seq_len=8, eod_token_id=E, batch_size=0)


# Document windows -----------------------------------------------------------------------

def test_window_documents_example(backend):
    docs = [list(range(1, 10)), [], [0, 11]]
    batch, stats = window_documents(*_flat(docs), seq_len=4, eod_token_id=E, batch_size=4, return_stats=True)
    assert isinstance(batch, LLMIndexedBatch)
    np.testing.assert_array_equal(batch.targets[:5], [[1, 2, 3, 4], [5, 6, 7, 8], [9, E, 0, 0], [E, 0, 0, 0],
                                                      [0, 11, E, 0]])
    np.testing.assert_array_equal(batch.inputs[:5], [[E, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0], [E, 0, 0, 0],
                                                     [E, 0, 11, 0]])
    np.testing.assert_array_equal(batch.document_idx, [1, 1, 1, 2, 3, 0, 0, 0])
    np.testing.assert_array_equal(batch.sequence_idx, [0, 1, 2, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.inputs_position[:3], [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]])
    np.testing.assert_array_equal(batch.targets_segmentation[2], [1, 1, 0, 0])
    borders = batch.get_document_borders()
    np.testing.assert_array_equal(borders[:, 0], [1, 0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(borders[2], [0, 0, 1, 0])
    assert np.all(batch.targets[5:] == 0) and np.all(batch.inputs_segmentation[5:] == 0)
    assert stats == PackingStats(rows=8, documents=3, pieces=5, tokens=14, capacity=32, documents_split=1,
                                 loss_tokens=14)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(0, 20), max_size=12), seq_len=st.integers(1, 7),
       batch_size=st.one_of(st.none(), st.integers(1, 5)))
def test_window_documents_rebuild_every_document(backend, lengths, seq_len, batch_size):
    docs = [(np.arange(n) * 7 + i) % 13 for i, n in enumerate(lengths)]
    batch = window_documents(*_flat(docs), seq_len=seq_len, eod_token_id=E, batch_size=batch_size)
    rows = len(batch.targets)
    assert rows % (batch_size or 1) == 0
    for index, doc in enumerate(docs, start=1):
        mine = np.flatnonzero(batch.document_idx == index)
        np.testing.assert_array_equal(batch.sequence_idx[mine], np.arange(len(mine)))
        valid = batch.targets_segmentation[mine] > 0
        np.testing.assert_array_equal(batch.targets[mine][valid], list(doc) + [E])
        np.testing.assert_array_equal(batch.inputs[mine][valid], [E] + list(doc))
        np.testing.assert_array_equal(batch.inputs_position[mine][valid], np.arange(len(doc) + 1))
    assert np.all(batch.inputs_segmentation[batch.document_idx == 0] == 0)


@pytest.mark.parametrize("shift", ["inputs", "targets"])
def test_recycled_window_arrays_spare_held_rows(backend, shift):
    """Rows dropped as they arrive let windows reuse arrays; rows kept stay intact."""
    docs = _random_docs(np.random.default_rng(5), 400, 30)
    kwargs = dict(seq_len=16, num_packing_bins=3, shift=shift, shuffle_bins=True, seed=2)
    expected = list(_stream(docs, **kwargs))  # every row held: nothing is recycled
    copied, kept = [], []
    for i, row in enumerate(_stream(docs, **kwargs)):
        copied.append({name: value.copy() for name, value in row.items()})
        if i % 7 == 0:
            kept.append((i, row))
    assert len(copied) == len(expected) > 100
    for mine, reference in zip(copied, expected):
        _assert_rows_equal(mine, reference)
    for i, row in kept:
        _assert_rows_equal(row, expected[i])
