"""The one-call pipeline equals composing its parts; mixing; workers."""

import grain
import numpy as np
import pytest

from xbatch.batch import LLMBatch, stack_rows
from xbatch.grain_batch_rampup import batch_dataset_with_rampup
from xbatch.packing import LLMPackIterDataset
from xbatch.sources import Corpus, DocumentChunkIterDataset, llm_batches, mix_llm_batches


def make_corpus(count, seed=0, low=2):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 50, size=count)
    return Corpus.from_arrays(rng.integers(low, 900, size=int(lengths.sum())).astype(np.int32), lengths=lengths)


def fields(batch):
    return {name: np.asarray(getattr(batch, name)) for name in ("inputs", "targets", "inputs_position",
                                                                "inputs_segmentation", "targets_position",
                                                                "targets_segmentation")}


@pytest.mark.parametrize("rampup", [None, {0: 0.5, 3: 1.0}])
def test_llm_batches_equal_the_composition(rampup):
    corpus = make_corpus(600)
    got = list(llm_batches(corpus, batch_size=4, seq_len=48, eod_token_id=1, seed=3, num_epochs=2,
                           num_packing_bins=8, host_index=1, host_count=2, documents_per_chunk=100, rampup=rampup))
    chunks = DocumentChunkIterDataset(corpus, documents_per_chunk=100, seed=3, num_epochs=2, shard_index=1,
                                      shard_count=2)
    rows = LLMPackIterDataset(chunks, seq_len=48, num_packing_bins=8, eod_token_id=1)
    want = list(batch_dataset_with_rampup(rows, 4, drop_remainder=True, batch_fn=stack_rows,
                                          schedule_type="stepwise" if rampup else "constant",
                                          boundaries_and_scales=rampup))
    assert len(got) == len(want) > 3
    assert all(isinstance(batch, LLMBatch) for batch in got)
    if rampup:
        assert [b.inputs.shape[0] for b in got[:4]] == [2, 2, 2, 4]
    for a, b in zip(got, want):
        for name, value in fields(a).items():
            np.testing.assert_array_equal(value, fields(b)[name])


def test_mix_llm_batches():
    first, second = make_corpus(300, seed=1), make_corpus(300, seed=2)
    second = Corpus.from_arrays(second.tokens + 1000, offsets=second.offsets)  # ids >= 1000 mark corpus 2
    batches = mix_llm_batches([first, second], [3, 1], batch_size=8, seq_len=32, eod_token_id=1,
                              num_packing_bins=4)
    iterator = iter(batches)
    rows = np.concatenate([next(iterator).targets for _ in range(20)])
    from_second = [(row >= 1000).any() for row in rows]
    assert not any((row >= 1000).any() and ((row > 1) & (row < 1000)).any() for row in rows)  # one corpus per row
    assert 0.15 < np.mean(from_second) < 0.35
    with pytest.raises(ValueError, match="weights"):
        mix_llm_batches([first, second], [1], batch_size=8, seq_len=32, eod_token_id=1)


def test_workers_hold_every_document_once(tmp_path):
    from xbatch.sources import write_xbatch_corpus

    corpus = make_corpus(400, seed=4)
    path = write_xbatch_corpus(tmp_path / "c", corpus.tokens, offsets=corpus.offsets)
    kwargs = dict(batch_size=2, seq_len=64, eod_token_id=1, num_packing_bins=4, seed=5, drop_remainder=False,
                  documents_per_chunk=32)
    single = list(llm_batches(path, **kwargs))
    multi = list(llm_batches(path, worker_count=2, **kwargs))

    def token_counts(batches):
        targets = np.concatenate([b.targets[b.targets_segmentation > 0] for b in batches])
        return np.bincount(targets, minlength=1000)

    np.testing.assert_array_equal(token_counts(multi), token_counts(single))
    assert token_counts(single)[1] == len(corpus)  # one EOD per document


@pytest.mark.parametrize("shuffle_bins", [False, True])
def test_batch_rows_views_equal_stack_rows(shuffle_bins):
    from xbatch.sources.pipeline import batch_rows

    corpus = make_corpus(300, seed=7)
    rows = list(LLMPackIterDataset(DocumentChunkIterDataset(corpus, documents_per_chunk=40), seq_len=32,
                                   num_packing_bins=8, eod_token_id=1, shuffle_bins=shuffle_bins, seed=3))
    views = 0
    for low in range(0, len(rows) - 4, 3):
        group = rows[low:low + 4]
        got = batch_rows(group, ordered=not shuffle_bins)
        views += got.inputs.base is not None and not got.inputs.flags.owndata
        for name, value in fields(stack_rows(group)).items():
            np.testing.assert_array_equal(fields(got)[name], value)
    assert views > 0 or shuffle_bins  # shuffled rows are rarely consecutive: stacked
    # Rows that are not consecutive rows of one window are stacked (copied).
    reordered = [rows[1], rows[0], rows[2]]
    np.testing.assert_array_equal(batch_rows(reordered).inputs, stack_rows(reordered).inputs)
