"""The LLM packer's concat-then-split mode against grain's ConcatThenSplitIterDataset."""

import grain
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xbatch.packing import LLMPackIterDataset, PackingStats, pack_documents

E = 99  # the EOD token; 0 is a real token
FIELDS = ("inputs", "targets", "inputs_position", "inputs_segmentation", "targets_position",
          "targets_segmentation")
CONCAT = "concat_then_split"


def _source(elements):
    return grain.MapDataset.source(elements).to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    )


def _stream(elements, **kwargs):
    return LLMPackIterDataset(_source(elements), eod_token_id=E, algorithm=CONCAT, **kwargs)


def _rows(dataset):
    rows = list(dataset)
    return {name: np.stack([row[name] for row in rows]) if rows else np.zeros((0, 0), np.int32) for name in FIELDS}


def _chunks(docs, size):
    chunks = []
    for start in range(0, len(docs), size):
        part = docs[start:start + size]
        chunks.append({"tokens": np.concatenate([np.asarray(d, np.int64) for d in part]),
                       "lengths": np.array([len(d) for d in part], np.int64)})
    return chunks


def _flat(docs):
    tokens = np.concatenate([np.asarray(d, np.int32) for d in docs]) if docs else np.zeros(0, np.int32)
    return tokens, np.array([len(d) for d in docs], np.int64)


def _random_docs(rng, count, max_length):
    docs = []
    for _ in range(count):
        doc = rng.integers(1, 50, rng.integers(0, max_length + 1))
        doc[rng.random(doc.shape) < 0.3] = 0  # token 0 is a token like any other
        docs.append(doc)
    return docs


def _grain_rows(docs, seq_len, shift, pad, long_documents="split"):
    """grain's ConcatThenSplitIterDataset on the EOD-terminated documents, then the shift."""
    cells = [np.append(np.asarray(d, np.int32), np.int32(E)) for d in docs]
    if long_documents == "truncate":
        cells = [c[:seq_len] for c in cells]
    source = _source([{"targets": c} for c in cells])
    packed = list(grain.experimental.ConcatThenSplitIterDataset(source, length_struct={"targets": seq_len}))
    tokens = np.stack([row["targets"] for row in packed]).astype(np.int32)
    seg = np.stack([row["targets_segment_ids"] for row in packed]).astype(np.int32)
    pos = np.stack([row["targets_positions"] for row in packed]).astype(np.int32)
    tokens[seg == 0] = pad  # grain pads with zeros
    if shift == "inputs":
        inputs = np.concatenate([np.full((len(tokens), 1), E, np.int32), tokens[:, :-1]], axis=1)
        return dict(inputs=inputs, targets=tokens, inputs_position=pos, inputs_segmentation=seg,
                    targets_position=pos, targets_segmentation=seg)

    def left(a, fill):
        return np.concatenate([a[:, 1:], np.full((len(a), 1), fill, a.dtype)], axis=1)

    return dict(inputs=tokens, targets=left(tokens, pad), inputs_position=pos, inputs_segmentation=seg,
                targets_position=left(pos, 0), targets_segmentation=left(seg, 0))


def _assert_rows_equal(actual, expected):
    for name in FIELDS:
        got = np.asarray(getattr(actual, name, None) if not isinstance(actual, dict) else actual[name])
        assert got.dtype == np.int32, name
        np.testing.assert_array_equal(got, expected[name], err_msg=name)


def test_documents_run_across_rows(backend):
    batch, stats = pack_documents(*_flat([[1, 2, 3], [4, 5], [6, 7, 8, 9]]), seq_len=4, eod_token_id=E,
                                  algorithm=CONCAT, return_stats=True)
    np.testing.assert_array_equal(batch.targets, [[1, 2, 3, E], [4, 5, E, 6], [7, 8, 9, E]])
    np.testing.assert_array_equal(batch.targets_segmentation, [[1, 1, 1, 1], [1, 1, 1, 2], [1, 1, 1, 1]])
    np.testing.assert_array_equal(batch.targets_position, [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 2, 3]])
    np.testing.assert_array_equal(batch.inputs, [[E, 1, 2, 3], [E, 4, 5, E], [E, 7, 8, 9]])
    assert stats == PackingStats(rows=3, documents=3, pieces=4, tokens=12, capacity=12, documents_split=1,
                                 loss_tokens=12)


@pytest.mark.parametrize("shift", ["inputs", "targets"])
@pytest.mark.parametrize("long_documents", ["split", "truncate"])
def test_streaming_ragged_and_bulk_equal_grain(backend, shift, long_documents):
    rng = np.random.default_rng(7)
    docs = _random_docs(rng, 80, 40)
    seq_len, pad = 16, 7
    expected = _grain_rows(docs, seq_len, shift, pad, long_documents)
    kwargs = dict(seq_len=seq_len, shift=shift, pad_token_id=pad, long_documents=long_documents)
    for num_rows in (1, 3):  # rows laid out at once: no influence on the rows
        _assert_rows_equal(_rows(_stream(docs, num_packing_bins=num_rows, **kwargs)), expected)
        _assert_rows_equal(_rows(_stream(_chunks(docs, 9), num_packing_bins=num_rows, **kwargs)), expected)
    _assert_rows_equal(pack_documents(*_flat(docs), eod_token_id=E, algorithm=CONCAT, **kwargs), expected)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(0, 30), min_size=1, max_size=25), seq_len=st.integers(1, 12),
       num_rows=st.integers(1, 4), chunk=st.integers(1, 7), shift=st.sampled_from(["inputs", "targets"]))
def test_random_streams_equal_grain(backend, lengths, seq_len, num_rows, chunk, shift):
    docs = [np.arange(n) % 5 for n in lengths]
    expected = _grain_rows(docs, seq_len, shift, pad=0)
    kwargs = dict(seq_len=seq_len, num_packing_bins=num_rows, shift=shift)
    _assert_rows_equal(_rows(_stream(docs, **kwargs)), expected)
    _assert_rows_equal(_rows(_stream(_chunks(docs, chunk), **kwargs)), expected)
    _assert_rows_equal(pack_documents(*_flat(docs), eod_token_id=E, algorithm=CONCAT, **kwargs), expected)


def test_statistics_count_documents_cut_across_rows(backend):
    rng = np.random.default_rng(3)
    docs = _random_docs(rng, 60, 30)
    seq_len = 8
    batch, stats = pack_documents(*_flat(docs), seq_len=seq_len, eod_token_id=E, algorithm=CONCAT,
                                  return_stats=True)
    # A document is cut when one of its cells other than the first sits in column 0.
    starts = np.cumsum([0] + [len(d) + 1 for d in docs])[:-1]
    ends = starts + [len(d) + 1 for d in docs]
    cut = sum(int(-(-s // seq_len) * seq_len < e) for s, e in zip(starts, ends) if s % seq_len or e - s > seq_len)
    assert stats.documents_split == cut > 0
    assert stats.documents == len(docs) and stats.loss_tokens == stats.tokens
    _, shifted = pack_documents(*_flat(docs), seq_len=seq_len, eod_token_id=E, algorithm=CONCAT, shift="targets",
                                return_stats=True)
    assert shifted.loss_tokens == stats.tokens - stats.rows  # column 0 of a row is no target
    assert stats.tokens == ends[-1] == int((batch.targets_segmentation > 0).sum())
    assert stats.pieces == len(docs) + sum(-(-e // seq_len) - s // seq_len - 1 for s, e in zip(starts, ends))
    iterator = iter(_stream(_chunks(docs, 7), seq_len=seq_len, num_packing_bins=3))
    list(iterator)
    assert iterator.stats == stats


@pytest.mark.parametrize("ragged", [False, True])
def test_checkpoint_restores_identical_rows(backend, ragged):
    docs = _random_docs(np.random.default_rng(2), 40, 30)
    elements = _chunks(docs, 6) if ragged else docs
    grain.experimental.assert_equal_output_after_checkpoint(_stream(elements, seq_len=12, num_packing_bins=2))
    grain.experimental.assert_equal_output_after_checkpoint(
        _stream(elements, seq_len=12, num_packing_bins=3, shuffle_bins=True, seed=5))


def test_truncate_and_error(backend):
    docs = [list(range(1, 11)), [5]]
    batch, stats = pack_documents(*_flat(docs), seq_len=4, eod_token_id=E, algorithm=CONCAT,
                                  long_documents="truncate", return_stats=True)
    np.testing.assert_array_equal(batch.targets, [[1, 2, 3, 4], [5, E, 0, 0]])
    assert stats.tokens_truncated == 7 and stats.documents_split == 0
    with pytest.raises(ValueError, match="document 0"):
        list(_stream(docs, seq_len=4, num_packing_bins=2, long_documents="error"))


def test_no_documents_give_no_rows(backend):
    empty = {"tokens": np.zeros(0, np.int32), "lengths": np.zeros(0, np.int64)}
    assert list(_stream([empty, empty], seq_len=8, num_packing_bins=2)) == []
    batch, stats = pack_documents([], [], seq_len=8, eod_token_id=E, algorithm=CONCAT, return_stats=True)
    assert batch.targets.shape == (0, 8) and stats == PackingStats()
