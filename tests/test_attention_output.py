"""The packers' opt-in attention metadata (``attention_metadata=True``).

The rows are the rows without it plus ``seq_lengths``/``seq_offsets``, which equal
:func:`attention_metadata` of the batched ``inputs_segmentation``: on random streams, both
backends, both shifts, documents, chunks and bulk, every algorithm that takes the cap.
"""

import grain
import numpy as np
import pytest

from xbatch import cli
from xbatch.batch import LLMBatch
from xbatch.packing import (
    LLMPackIterDataset,
    add_varlen_metadata,
    attention_metadata,
    pack_documents,
    varlen_metadata,
)
from xbatch.packing import attention, attention_rows
from xbatch.packing.attention_rows import AttentionRowsIterator
from xbatch.sources import Corpus, llm_batches, mix_llm_batches

E = 1
FIELDS = ("inputs", "targets", "inputs_position", "inputs_segmentation", "targets_position",
          "targets_segmentation")
METADATA = ("seq_lengths", "seq_offsets")
ALGORITHMS = ("first_fit", "best_fit", "concat_then_split", "rolling_best_fit")


def _source(elements):
    return grain.MapDataset.source(elements).to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))


def _refused(call):
    """Whether ``call`` raises the "does not take ... max_documents_per_row yet" refusal."""
    try:
        call()
    except ValueError as exc:
        if "does not take" in str(exc) and "max_documents_per_row" in str(exc):
            return True
        raise
    return False


# The algorithms that take the cap on main (concat_then_split and rolling_best_fit refuse
# it until they learn it; then these tests cover them with no change).
STREAM_CAPPED = [a for a in ALGORITHMS if not _refused(lambda a=a: LLMPackIterDataset(
    _source([]), seq_len=8, num_packing_bins=2, eod_token_id=E, algorithm=a, max_documents_per_row=2))]
BULK_CAPPED = [a for a in ALGORITHMS if not _refused(lambda a=a: pack_documents(
    np.zeros(3, np.int32), [3], seq_len=8, eod_token_id=E, num_packing_bins=2, algorithm=a,
    max_documents_per_row=2))]


def _takes_masks(algorithm):
    try:
        pack_documents(np.zeros(3, np.int32), [3], seq_len=8, eod_token_id=E, num_packing_bins=2, algorithm=algorithm,
                       prompt_lengths=[1])
    except ValueError as exc:
        if "does not take" in str(exc):
            return False
        raise
    return True


MASKED = [a for a in ALGORITHMS if _takes_masks(a)]


def _random_docs(rng, count, max_length):
    lengths = rng.integers(0, max_length + 1, size=count)
    lengths[rng.random(count) < 0.1] = max_length * 3  # some documents are split
    return [rng.integers(2, 500, size=int(n)).astype(np.int32) for n in lengths]


def _chunks(docs, size, prompt_lengths=None):
    chunks = []
    for start in range(0, len(docs), size):
        part = docs[start:start + size]
        chunk = {"tokens": np.concatenate(part), "lengths": np.array([len(d) for d in part])}
        if prompt_lengths is not None:
            chunk["prompt_lengths"] = prompt_lengths[start:start + size]
        chunks.append(chunk)
    return chunks


def _stacked(rows, names):
    return {name: np.stack([row[name] for row in rows]) for name in names}


def _assert_metadata(got, segmentation, max_segments, names=METADATA):
    want = attention_metadata(segmentation, max_segments=max_segments)
    for name in names:
        if name == "max_seqlen":
            assert got[name] == want[name]
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
            assert got[name].dtype == np.int32


def _segment_id_mask(seg):
    length = seg.shape[1]
    causal = np.tril(np.ones((length, length), dtype=bool))
    return (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] != 0) & causal


def _metadata_mask(seq_lengths, seq_offsets, length):
    columns = np.arange(length)
    starts = seq_offsets[:, :-1, None]
    inside = (columns >= starts) & (columns < starts + seq_lengths[:, :, None])
    same = (inside[:, :, :, None] & inside[:, :, None, :]).any(axis=1)
    return same & (columns[:, None] >= columns[None, :])


# ---------------------------------------------------------------------------------------
# Streaming and bulk rows


@pytest.mark.parametrize("algorithm", STREAM_CAPPED)
@pytest.mark.parametrize("shift", ["inputs", "targets"])
@pytest.mark.parametrize("seed", [0, 1])
def test_rows_are_the_rows_without_it_plus_the_metadata_of_their_segmentation(backend, algorithm, shift, seed):
    rng = np.random.default_rng(seed)
    docs = _random_docs(rng, 120, 14)
    seq_len, bins, cap = 16, int(rng.integers(1, 6)), int(rng.integers(1, 5))
    masked = algorithm in MASKED  # inputs_segmentation is the same with masks; check that
    prompts = np.array([int(rng.integers(0, len(d) + 1)) for d in docs]) if masked else None
    options = dict(seq_len=seq_len, num_packing_bins=bins, eod_token_id=E, algorithm=algorithm, shift=shift,
                   max_documents_per_row=cap)
    tokens, lengths = np.concatenate(docs), np.array([len(d) for d in docs])
    bulk, metadata = pack_documents(tokens, lengths, prompt_lengths=prompts, attention_metadata=True, **options)
    _assert_metadata(metadata, bulk.inputs_segmentation, cap)
    elements = {"chunks": _chunks(docs, 25, prompts),
                "documents": docs if prompts is None else [
                    {"tokens": d, "prompt_length": int(p)} for d, p in zip(docs, prompts)]}
    for kind, parent in elements.items():
        plain = list(LLMPackIterDataset(_source(parent), **options))
        rows = list(LLMPackIterDataset(_source(parent), attention_metadata=True, **options))
        assert len(rows) == len(plain) == bulk.inputs.shape[0], kind
        for row, without in zip(rows, plain):
            assert sorted(row) == sorted([*without, *METADATA])
            for name in FIELDS:
                np.testing.assert_array_equal(row[name], without[name])
        stacked = _stacked(rows, [*FIELDS, *METADATA])
        _assert_metadata(stacked, stacked["inputs_segmentation"], cap)
        for name in FIELDS:
            np.testing.assert_array_equal(stacked[name], getattr(bulk, name), err_msg=f"{kind} {name}")
        assert stacked["seq_lengths"].shape == (len(rows), cap)
        assert stacked["seq_offsets"].shape == (len(rows), cap + 1)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithms_rows_get_their_metadata_once_per_window(backend, algorithm, monkeypatch):
    # The wrapper on the emission of every algorithm, capped or not (M = seq_len slots:
    # a row never holds more segments than cells).
    calls = []
    original = attention_rows.row_metadata
    monkeypatch.setattr(attention_rows, "row_metadata",
                        lambda seg, **kw: calls.append(seg.shape[0]) or original(seg, **kw))
    rng = np.random.default_rng(5)
    docs = _random_docs(rng, 200, 12)
    seq_len = 16
    dataset = LLMPackIterDataset(_source(_chunks(docs, 40)), seq_len=seq_len, num_packing_bins=8,
                                 eod_token_id=E, algorithm=algorithm)
    rows = list(AttentionRowsIterator(iter(dataset), seq_len))
    stacked = _stacked(rows, ["inputs_segmentation", "targets", *METADATA])
    _assert_metadata(stacked, stacked["inputs_segmentation"], seq_len)
    assert sum(calls) == len(rows) and len(calls) < len(rows) / 4, calls  # one call per window
    if algorithm == "concat_then_split":
        # A row that continues the previous row's document: that segment starts at column 0.
        continued = np.r_[False, stacked["targets"][:-1, -1] != E]  # the previous row ends mid-document
        assert continued.any()
        assert (stacked["seq_offsets"][continued, 0] == 0).all()


@pytest.mark.parametrize("algorithm", STREAM_CAPPED)
def test_checkpoints_restore_rows_and_metadata(backend, algorithm):
    docs = _random_docs(np.random.default_rng(2), 60, 10)
    shuffle = algorithm != "rolling_best_fit"
    options = dict(seq_len=12, num_packing_bins=3, eod_token_id=E, algorithm=algorithm, shuffle_bins=shuffle,
                   seed=3, max_documents_per_row=3)
    for elements in (docs, _chunks(docs, 7)):
        dataset = LLMPackIterDataset(_source(elements), attention_metadata=True, **options)
        grain.experimental.assert_equal_output_after_checkpoint(dataset)
        # A state saved without the metadata restores into a pipeline with it.
        full = list(dataset)
        plain = iter(LLMPackIterDataset(_source(elements), **options))
        for _ in range(5):
            next(plain)
        restored = iter(dataset)
        restored.set_state(plain.get_state())
        rest = list(restored)
        assert len(rest) == len(full) - 5
        for a, b in zip(rest, full[5:]):
            for name in (*FIELDS, *METADATA):
                np.testing.assert_array_equal(a[name], b[name])
        assert restored.stats == iter_stats(dataset)


def iter_stats(dataset):
    iterator = iter(dataset)
    list(iterator)
    return iterator.stats


def test_mask_from_emitted_metadata_equals_the_segment_id_mask(backend):
    docs = _random_docs(np.random.default_rng(7), 150, 9)
    for shift in ("inputs", "targets"):
        rows = list(LLMPackIterDataset(_source(_chunks(docs, 30)), seq_len=24, num_packing_bins=4, eod_token_id=E,
                                       shift=shift, max_documents_per_row=4, attention_metadata=True))
        stacked = _stacked(rows, ["inputs_segmentation", *METADATA])
        seg = stacked["inputs_segmentation"]
        assert (stacked["seq_lengths"] > 0).sum(axis=1).max() == 4  # the cap is reached
        np.testing.assert_array_equal(
            _metadata_mask(stacked["seq_lengths"], stacked["seq_offsets"], seg.shape[1]), _segment_id_mask(seg))


# ---------------------------------------------------------------------------------------
# After batching


def test_grain_batch_then_add_varlen_metadata_equals_attention_metadata(backend):
    docs = _random_docs(np.random.default_rng(8), 150, 9)
    dataset = LLMPackIterDataset(_source(_chunks(docs, 30)), seq_len=20, num_packing_bins=5, eod_token_id=E,
                                 max_documents_per_row=3, attention_metadata=True, shuffle_bins=True)
    batches = list(dataset.batch(4).map(add_varlen_metadata))
    assert len(batches) > 5
    for batch in batches:
        assert batch["seq_lengths"].shape == (batch["inputs"].shape[0], 3)
        _assert_metadata(batch, batch["inputs_segmentation"], 3,
                         names=("seq_lengths", "seq_offsets", "cu_seqlens", "max_seqlen"))


def test_varlen_metadata_from_lengths_alone():
    rng = np.random.default_rng(9)
    for _ in range(50):
        rows, length = int(rng.integers(0, 5)), int(rng.integers(1, 30))
        seg = np.zeros((rows, length), np.int64)
        for r in range(rows):
            cuts = np.sort(rng.choice(np.arange(1, length + 1), size=min(length, int(rng.integers(0, 4))), replace=False))
            for k, (a, b) in enumerate(zip(np.r_[0, cuts], cuts)):
                seg[r, a:b] = k + 1
        want = attention_metadata(seg, max_segments=4)
        got = varlen_metadata(want["seq_lengths"])
        np.testing.assert_array_equal(got["cu_seqlens"], want["cu_seqlens"])
        assert got["max_seqlen"] == want["max_seqlen"] and isinstance(got["max_seqlen"], int)
        zeros = varlen_metadata(np.maximum(want["seq_lengths"], 0))  # 0 reads as unused too
        np.testing.assert_array_equal(zeros["cu_seqlens"], want["cu_seqlens"])


@pytest.mark.parametrize("value, error, message", [
    (np.zeros(3, np.int32), TypeError, "seq_lengths: expected an integer array"),
    (np.zeros((2, 2), np.float32), TypeError, "seq_lengths"),
    (np.array([[3, -2]]), ValueError, "got -2"),
    (np.array([[2**31 - 1, 1]]), ValueError, "exceed int32"),
])
def test_varlen_metadata_checks_its_argument(value, error, message):
    with pytest.raises(error, match=message):
        varlen_metadata(value)


def test_add_varlen_metadata_names_what_is_missing():
    with pytest.raises(ValueError, match="'seq_lengths'.*attention_metadata=True"):
        add_varlen_metadata({"inputs": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="expected a mapping"):
        add_varlen_metadata(np.zeros((2, 3)))


def _corpus(count, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 30, size=count)
    return Corpus.from_arrays(rng.integers(2, 900, size=int(lengths.sum())).astype(np.int32), lengths=lengths)


@pytest.mark.parametrize("shuffle_bins", [False, True])  # batches as views of the window, or stacked
def test_llm_batches_give_the_batch_and_its_metadata(backend, shuffle_bins):
    corpus = _corpus(400)
    options = dict(batch_size=4, seq_len=32, eod_token_id=E, num_packing_bins=8, documents_per_chunk=64,
                   max_documents_per_row=3, shuffle_bins=shuffle_bins)
    plain = list(llm_batches(corpus, **options))
    got = list(llm_batches(corpus, attention_metadata=True, **options))
    assert len(got) == len(plain) > 5
    for (batch, metadata), want in zip(got, plain):
        assert isinstance(batch, LLMBatch)
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(batch, name), getattr(want, name))
        _assert_metadata(metadata, batch.inputs_segmentation, 3,
                         names=("seq_lengths", "seq_offsets", "cu_seqlens", "max_seqlen"))
    mixed = iter(mix_llm_batches([corpus, _corpus(300, seed=1)], [1, 1], batch_size=4, seq_len=32, eod_token_id=E,
                                 num_packing_bins=4, max_documents_per_row=2, attention_metadata=True))
    for _ in range(4):
        batch, metadata = next(mixed)
        _assert_metadata(metadata, batch.inputs_segmentation, 2,
                         names=("seq_lengths", "seq_offsets", "cu_seqlens", "max_seqlen"))


# ---------------------------------------------------------------------------------------
# pack_documents, blocks, errors, the CLI


@pytest.mark.parametrize("algorithm", [a for a in BULK_CAPPED] + ["first_fit_decreasing"])
def test_pack_documents_returns_the_metadata_beside_the_batch(backend, algorithm):
    docs = _random_docs(np.random.default_rng(11), 80, 12)
    tokens, lengths = np.concatenate(docs), np.array([len(d) for d in docs])
    bins = None if algorithm.endswith("_decreasing") else 4
    options = dict(seq_len=16, eod_token_id=E, num_packing_bins=bins, algorithm=algorithm, max_documents_per_row=2)
    batch, stats = pack_documents(tokens, lengths, return_stats=True, **options)
    got, metadata = pack_documents(tokens, lengths, attention_metadata=True, **options)
    again, metadata_too, stats_too = pack_documents(tokens, lengths, attention_metadata=True, return_stats=True,
                                                    **options)
    assert stats_too == stats and sorted(metadata) == list(METADATA)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(got, name), getattr(batch, name))
        np.testing.assert_array_equal(getattr(again, name), getattr(batch, name))
    _assert_metadata(metadata, batch.inputs_segmentation, 2)
    _assert_metadata(metadata_too, batch.inputs_segmentation, 2)


def test_metadata_needs_the_cap():
    with pytest.raises(ValueError, match="max_documents_per_row: attention_metadata=True needs"):
        pack_documents(np.zeros(3, np.int32), [3], seq_len=8, eod_token_id=E, attention_metadata=True)
    with pytest.raises(ValueError, match="max_documents_per_row: attention_metadata=True needs"):
        LLMPackIterDataset(_source([]), seq_len=8, num_packing_bins=2, eod_token_id=E, attention_metadata=True)
    with pytest.raises(ValueError, match="max_documents_per_row"):
        LLMPackIterDataset(_source([]), seq_len=8, num_packing_bins=2, eod_token_id=E, attention_metadata=True,
                           max_documents_per_row=0)
    dataset = LLMPackIterDataset(_source([]), seq_len=8, num_packing_bins=2, eod_token_id=E,
                                 attention_metadata=True, max_documents_per_row=2)
    assert "attention_metadata=True" in str(dataset)


def test_row_metadata_in_blocks_names_rows_of_the_whole_array(backend, monkeypatch):
    rng = np.random.default_rng(12)
    seg = np.zeros((37, 10), np.int32)
    for r in range(37):
        cut = int(rng.integers(0, 11))
        seg[r, :cut] = 1
        seg[r, cut:] = 2 if cut else 0
    monkeypatch.setattr(attention, "_BLOCK_CELLS", 40)  # 4 rows per call
    got = attention.row_metadata(seg, max_segments=2)
    _assert_metadata(got, seg, 2)
    seg[22, 5:] = 3
    seg[22, :5] = 1  # row 22 holds segments 1 and 3: id 3 where 2 was expected
    with pytest.raises(ValueError, match="row 22, column 5"):
        attention.row_metadata(seg, max_segments=3)
    one = attention.row_metadata(np.array([[0, 1, 1]]), max_segments=1)  # M == 1 need not start at 0
    np.testing.assert_array_equal(one["seq_offsets"], [[1, -1]])


def test_cli_stores_the_metadata_in_the_output(tmp_path, capsys):
    output = tmp_path / "rows.npz"
    argv = ["pack", "--num-documents", "300", "--seq-len", "64", "--bins", "4", "--no-progress",
            "--max-documents-per-row", "3", "-o", str(output)]
    assert cli.main([*argv, "--attention-metadata"]) == 0
    assert "seq_lengths [rows, 3]" in capsys.readouterr().out
    with np.load(output) as packed:
        _assert_metadata(packed, packed["inputs_segmentation"], 3)
        rows = {name: packed[name] for name in FIELDS}
    assert cli.main(argv) == 0
    with np.load(output) as packed:
        assert sorted(packed) == sorted(FIELDS)
        for name in FIELDS:
            np.testing.assert_array_equal(packed[name], rows[name])
    capsys.readouterr()
    assert cli.main([*argv[:-4], "-o", str(output), "--attention-metadata"]) != 0
    assert "--attention-metadata: needs --max-documents-per-row" in capsys.readouterr().err
    assert cli.main([*argv[:-2], "--attention-metadata"]) != 0
    assert "give -o" in capsys.readouterr().err


class _Rows(grain.DatasetIterator):
    """Rows given as a list (copies, read-only views...): what the wrapper must handle."""

    def __init__(self, rows):
        super().__init__()
        self._rows, self._next = rows, 0

    def __next__(self):
        if self._next == len(self._rows):
            raise StopIteration
        self._next += 1
        return self._rows[self._next - 1]

    def get_state(self):
        return {"next": self._next}

    def set_state(self, state):
        self._next = state["next"]


def test_rows_that_are_not_window_views_get_their_own_call(backend, monkeypatch):
    calls = []
    original = attention_rows.row_metadata
    monkeypatch.setattr(attention_rows, "row_metadata",
                        lambda seg, **kw: calls.append(seg.shape[0]) or original(seg, **kw))
    seg = np.array([[1, 1, 2, 0], [1, 2, 2, 3], [0, 1, 1, 1], [1, 1, 1, 1]], np.int32)
    frozen = seg.copy()
    frozen.flags.writeable = False  # a read-only window: its rows are still found
    rows = ([{"inputs_segmentation": row.copy()} for row in seg]  # copies: one call each
            + [{"inputs_segmentation": frozen[i]} for i in (2, 0, 3, 1)]  # shuffled rows of one window
            + [{"inputs_segmentation": list(seg[0])}])  # not even an array
    got = list(AttentionRowsIterator(_Rows(rows), 3))
    assert calls == [1, 1, 1, 1, 4, 1]
    want = attention_metadata(seg, max_segments=3)
    for i, row in enumerate(got):
        source = [0, 1, 2, 3, 2, 0, 3, 1, 0][i]
        np.testing.assert_array_equal(row["seq_lengths"], want["seq_lengths"][source])
        np.testing.assert_array_equal(row["seq_offsets"], want["seq_offsets"][source])
