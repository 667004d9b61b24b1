"""Loss masks (SFT / chat / prefix-LM) and the cap on documents per row, against grain.

The oracle: grain's own packer on ``{"targets": piece, "mask": piece mask}`` as two
packed features of equal length (a mask packs exactly like its tokens), then the shift,
with ``targets_segmentation = segment ids * mask``.
"""

import grain
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xbatch.packing import LLMPackIterDataset, PackingStats, pack_documents, window_documents

E = 99  # the EOD token; 0 is a real token and the padding
FIELDS = ("inputs", "targets", "inputs_position", "inputs_segmentation", "targets_position",
          "targets_segmentation")
GRAIN_PACKERS = {"first_fit": grain.experimental.FirstFitPackIterDataset,
                 "best_fit": grain.experimental.BestFitPackIterDataset}


def _source(elements):
    return grain.MapDataset.source(elements).to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    )


def _rows(dataset):
    rows = list(dataset)
    return {name: np.stack([row[name] for row in rows]) for name in FIELDS}


def _assert_rows_equal(actual, expected):
    for name in FIELDS:
        got = np.asarray(actual[name] if isinstance(actual, dict) else getattr(actual, name))
        assert got.dtype == np.int32, name
        np.testing.assert_array_equal(got, expected[name], err_msg=name)


def _left(a):
    return np.concatenate([a[:, 1:], np.zeros((len(a), 1), a.dtype)], axis=1)


def _grain_rows(docs, masks, *, seq_len, num_packing_bins, algorithm="first_fit", long_documents="split",
                shift="inputs", train_on_eod=True, cap=None):
    """The oracle: pieces cut in plain Python, grain's packer on {targets, mask}, the shift."""
    pieces = []
    for doc, mask in zip(docs, masks):
        cells, cell_mask = list(doc) + [E], list(mask) + [int(train_on_eod)]
        stops = [seq_len] if long_documents == "truncate" else range(seq_len, len(cells) + seq_len, seq_len)
        for stop in stops:
            start = stop - seq_len
            pieces.append({"targets": np.array(cells[start:stop], np.int32),
                           "mask": np.array(cell_mask[start:stop], np.int32)})
    num_bins = num_packing_bins or max(1, len(pieces))
    packed = list(GRAIN_PACKERS[algorithm](
        _source(pieces), length_struct={"targets": seq_len, "mask": seq_len}, num_packing_bins=num_bins,
        shuffle_bins=False, max_sequences_per_bin=cap,
    ))
    if not packed:
        return {name: np.zeros((0, seq_len), np.int32) for name in FIELDS}
    tokens = np.stack([row["targets"] for row in packed]).astype(np.int32)
    seg = np.stack([row["targets_segment_ids"] for row in packed])
    pos = np.stack([row["targets_positions"] for row in packed])
    trained = seg * np.stack([row["mask"] for row in packed])
    if shift == "inputs":
        inputs = np.concatenate([np.full((len(tokens), 1), E, np.int32), tokens[:, :-1]], axis=1)
        return dict(inputs=inputs, targets=tokens, inputs_position=pos, inputs_segmentation=seg,
                    targets_position=pos, targets_segmentation=trained)
    return dict(inputs=tokens, targets=_left(tokens), inputs_position=pos, inputs_segmentation=seg,
                targets_position=_left(pos), targets_segmentation=_left(trained))


def _random_corpus(rng, count, max_length):
    """(docs, masks, prompt lengths): a third of the documents masked at random, a third by
    a prompt length, a third not at all (a mask of ones, prompt length 0)."""
    docs, masks, prompts, kinds = [], [], [], []
    for _ in range(count):
        doc = rng.integers(0, 40, rng.integers(0, max_length + 1)).astype(np.int32)
        kind = rng.integers(3)
        prompt = int(rng.integers(0, len(doc) + 1)) if kind == 1 else 0
        mask = (rng.random(len(doc)) < 0.5).astype(np.int32) if kind == 0 else (np.arange(len(doc)) >= prompt)
        docs.append(doc)
        masks.append(mask.astype(np.int32))
        prompts.append(prompt)
        kinds.append(kind)
    return docs, masks, prompts, kinds


def _elements(docs, masks, prompts, kinds):
    """One parent element per document, in every form a document may take."""
    elements = []
    for doc, mask, prompt, kind in zip(docs, masks, prompts, kinds):
        if kind == 0:
            elements.append({"tokens": doc, "loss_mask": mask.astype(bool) if len(doc) % 2 else mask})
        elif kind == 1:
            elements.append({"tokens": doc.tolist(), "prompt_length": prompt})
        else:
            elements.append(doc)
    return elements


def _chunks(docs, masks, size, key="loss_mask", prompts=None):
    chunks = []
    for start in range(0, len(docs), size):
        part = slice(start, start + size)
        chunk = {"tokens": np.concatenate([np.zeros(0, np.int32), *docs[part]]),
                 "lengths": np.array([len(d) for d in docs[part]], np.int64)}
        if key == "loss_mask":
            chunk[key] = np.concatenate([np.zeros(0, np.int32), *masks[part]])
        else:
            chunk[key] = np.array(prompts[part], np.int64)
        chunks.append(chunk)
    return chunks


def _flat(docs):
    return np.concatenate([np.zeros(0, np.int32), *docs]), np.array([len(d) for d in docs], np.int64)


def _check_loss_tokens(stats, rows):
    assert stats.loss_tokens == np.count_nonzero(rows["targets_segmentation"])


# The rule, on the seed's example --------------------------------------------------------

def test_prompt_is_not_trained_on_and_nothing_else_changes(backend):
    docs = [{"tokens": [1, 2, 3], "prompt_length": 2}, [4, 5], {"tokens": [6, 7], "loss_mask": [0, 1]}]
    rows = _rows(LLMPackIterDataset(_source(docs), seq_len=8, num_packing_bins=1, eod_token_id=E))
    plain = _rows(LLMPackIterDataset(_source([[1, 2, 3], [4, 5], [6, 7]]), seq_len=8, num_packing_bins=1,
                                     eod_token_id=E))
    np.testing.assert_array_equal(rows["targets"][0], [1, 2, 3, E, 4, 5, E, 0])
    np.testing.assert_array_equal(rows["targets_segmentation"][0], [0, 0, 1, 1, 2, 2, 2, 0])
    np.testing.assert_array_equal(rows["targets_segmentation"][1], [0, 1, 1, 0, 0, 0, 0, 0])
    for name in ("inputs", "targets", "inputs_position", "inputs_segmentation", "targets_position"):
        np.testing.assert_array_equal(rows[name], plain[name], err_msg=name)
    shifted = _rows(LLMPackIterDataset(_source(docs), seq_len=8, num_packing_bins=1, eod_token_id=E,
                                       shift="targets", train_on_eod=False))
    np.testing.assert_array_equal(shifted["inputs"][0], [1, 2, 3, E, 4, 5, E, 0])
    # Target of column i is packed token i + 1: 2 (prompt), 3, E (not trained), 4, 5, E (not trained).
    np.testing.assert_array_equal(shifted["targets_segmentation"][0], [0, 1, 0, 2, 2, 0, 0, 0])


# Differential tests against grain's two-feature packing ---------------------------------

@pytest.mark.parametrize("algorithm", ["first_fit", "best_fit"])
@pytest.mark.parametrize("long_documents", ["split", "truncate"])
@pytest.mark.parametrize("shift", ["inputs", "targets"])
def test_masks_equal_grain_two_feature_packing(backend, algorithm, long_documents, shift):
    rng = np.random.default_rng(13)
    seq_len, num_bins = 16, 3
    docs, masks, prompts, kinds = _random_corpus(rng, 60, 40)
    kwargs = dict(seq_len=seq_len, num_packing_bins=num_bins, algorithm=algorithm,
                  long_documents=long_documents, shift=shift)
    expected = _grain_rows(docs, masks, **kwargs)
    iterator = iter(LLMPackIterDataset(_source(_elements(docs, masks, prompts, kinds)), eod_token_id=E, **kwargs))
    streamed = _rows(iterator)
    _assert_rows_equal(streamed, expected)
    _check_loss_tokens(iterator.stats, expected)
    for size in (7, 1, 25):
        chunked = LLMPackIterDataset(_source(_chunks(docs, masks, size)), eod_token_id=E, **kwargs)
        _assert_rows_equal(_rows(chunked), expected)
    batch, stats = pack_documents(*_flat(docs), eod_token_id=E, loss_mask=np.concatenate(masks),
                                  return_stats=True, **kwargs)
    _assert_rows_equal(batch, expected)
    assert stats == iterator.stats


@pytest.mark.parametrize("shift", ["inputs", "targets"])
def test_prompt_lengths_equal_grain(backend, shift):
    rng = np.random.default_rng(5)
    docs, _, _, _ = _random_corpus(rng, 50, 30)
    prompts = [int(rng.integers(0, len(d) + 1)) for d in docs]
    masks = [(np.arange(len(d)) >= p).astype(np.int32) for d, p in zip(docs, prompts)]
    kwargs = dict(seq_len=12, num_packing_bins=2, shift=shift, train_on_eod=False)
    expected = _grain_rows(docs, masks, **kwargs)
    chunks = _chunks(docs, masks, 9, key="prompt_lengths", prompts=prompts)
    _assert_rows_equal(_rows(LLMPackIterDataset(_source(chunks), eod_token_id=E, **kwargs)), expected)
    elements = [{"tokens": d, "prompt_length": np.int64(p)} for d, p in zip(docs, prompts)]
    _assert_rows_equal(_rows(LLMPackIterDataset(_source(elements), eod_token_id=E, **kwargs)), expected)
    _assert_rows_equal(pack_documents(*_flat(docs), eod_token_id=E, prompt_lengths=prompts, **kwargs), expected)


@pytest.mark.parametrize("algorithm", ["first_fit", "best_fit"])
def test_whole_corpus_window_with_masks_equals_grain(backend, algorithm):
    rng = np.random.default_rng(21)
    docs, masks, _, _ = _random_corpus(rng, 40, 30)
    expected = _grain_rows(docs, masks, seq_len=16, num_packing_bins=None, algorithm=algorithm)
    batch = pack_documents(*_flat(docs), seq_len=16, eod_token_id=E, algorithm=algorithm,
                           loss_mask=np.concatenate(masks))
    _assert_rows_equal(batch, expected)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    seq_len=st.integers(1, 12),
    num_bins=st.integers(1, 5),
    algorithm=st.sampled_from(["first_fit", "best_fit"]),
    long_documents=st.sampled_from(["split", "truncate"]),
    shift=st.sampled_from(["inputs", "targets"]),
    train_on_eod=st.booleans(),
    cap=st.one_of(st.none(), st.integers(1, 4)),
    chunk=st.integers(1, 9),
)
def test_random_masked_streams_equal_grain(backend, seed, seq_len, num_bins, algorithm, long_documents, shift,
                                           train_on_eod, cap, chunk):
    docs, masks, prompts, kinds = _random_corpus(np.random.default_rng(seed), 20, 20)
    kwargs = dict(seq_len=seq_len, num_packing_bins=num_bins, algorithm=algorithm, long_documents=long_documents,
                  shift=shift, train_on_eod=train_on_eod)
    expected = _grain_rows(docs, masks, cap=cap, **kwargs)
    kwargs["max_documents_per_row"] = cap
    iterator = iter(LLMPackIterDataset(_source(_elements(docs, masks, prompts, kinds)), eod_token_id=E, **kwargs))
    _assert_rows_equal(_rows(iterator), expected)
    _check_loss_tokens(iterator.stats, expected)
    _assert_rows_equal(_rows(LLMPackIterDataset(_source(_chunks(docs, masks, chunk)), eod_token_id=E, **kwargs)),
                       expected)
    _assert_rows_equal(pack_documents(*_flat(docs), eod_token_id=E, loss_mask=np.concatenate(masks), **kwargs),
                       expected)


def test_masked_stream_restores_exactly(backend):
    rng = np.random.default_rng(2)
    docs, masks, prompts, kinds = _random_corpus(rng, 40, 25)
    dataset = LLMPackIterDataset(_source(_elements(docs, masks, prompts, kinds)), seq_len=16,
                                 num_packing_bins=3, eod_token_id=E, shift="targets", max_documents_per_row=2)
    grain.experimental.assert_equal_output_after_checkpoint(dataset)


# Other packers ---------------------------------------------------------------------------

def test_window_documents_keep_each_tokens_mask(backend):
    rng = np.random.default_rng(4)
    docs, masks, _, _ = _random_corpus(rng, 20, 30)
    batch, stats = window_documents(*_flat(docs), seq_len=8, eod_token_id=E, loss_mask=np.concatenate(masks),
                                    train_on_eod=False, return_stats=True)
    plain = window_documents(*_flat(docs), seq_len=8, eod_token_id=E)
    cell_masks = np.concatenate([np.append(m, 0) for m in masks])
    cells = np.concatenate([np.append(d, E) for d in docs])
    real = plain.targets_segmentation != 0
    np.testing.assert_array_equal(plain.targets[real], cells)
    np.testing.assert_array_equal(batch.targets_segmentation[real], cell_masks)
    assert not batch.targets_segmentation[~real].any()
    for name in ("inputs", "targets", "inputs_position", "inputs_segmentation", "targets_position"):
        np.testing.assert_array_equal(getattr(batch, name), getattr(plain, name), err_msg=name)
    assert stats.loss_tokens == cell_masks.sum()
    prompted = window_documents(*_flat(docs), seq_len=8, eod_token_id=E, prompt_lengths=[0] * len(docs))
    np.testing.assert_array_equal(prompted.targets_segmentation, plain.targets_segmentation)


def test_loss_tokens_without_masks(backend):
    docs = [[1, 2, 3], [4, 5], [6, 7]]
    _, inputs = pack_documents(*_flat(docs), seq_len=8, eod_token_id=E, return_stats=True)
    _, targets = pack_documents(*_flat(docs), seq_len=8, eod_token_id=E, shift="targets", return_stats=True)
    assert inputs.loss_tokens == inputs.tokens == 10
    assert targets.loss_tokens == targets.tokens - targets.rows == 8
    assert inputs.as_dict()["loss_ratio"] == 1.0 and PackingStats().loss_ratio == 0.0


# The cap on documents per row ------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["first_fit", "best_fit"])
@pytest.mark.parametrize("num_bins", [1, 4, None])
def test_cap_equals_grain_max_sequences_per_bin(backend, algorithm, num_bins):
    rng = np.random.default_rng(8)
    docs = [rng.integers(0, 40, rng.integers(0, 12)).astype(np.int32) for _ in range(80)]
    masks = [np.ones(len(d), np.int32) for d in docs]
    for cap in (1, 2, 3):
        expected = _grain_rows(docs, masks, seq_len=16, num_packing_bins=num_bins, algorithm=algorithm, cap=cap)
        assert expected["inputs_segmentation"].max() <= cap
        batch = pack_documents(*_flat(docs), seq_len=16, eod_token_id=E, algorithm=algorithm,
                               num_packing_bins=num_bins, max_documents_per_row=cap)
        _assert_rows_equal(batch, expected)
        if num_bins is not None:
            stream = LLMPackIterDataset(_source(docs), seq_len=16, eod_token_id=E, num_packing_bins=num_bins,
                                        algorithm=algorithm, max_documents_per_row=cap)
            _assert_rows_equal(_rows(stream), expected)


@pytest.mark.parametrize("algorithm", ["first_fit_decreasing", "best_fit_decreasing"])
def test_cap_holds_for_decreasing_placement(backend, algorithm):
    rng = np.random.default_rng(9)
    tokens, lengths = _flat([rng.integers(0, 9, rng.integers(0, 30)).astype(np.int32) for _ in range(300)])
    batch, stats = pack_documents(tokens, lengths, seq_len=32, eod_token_id=E, algorithm=algorithm,
                                  max_documents_per_row=2, return_stats=True)
    assert batch.inputs_segmentation.max() == 2
    assert stats.pieces == int(batch.get_document_borders().sum() - (batch.inputs_segmentation[:, -1] == 0).sum())


# Errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("element, error, message", [
    ({"tokens": [1, 2], "loss_mask": [1, 2]}, ValueError, r"loss_mask: expected 0 or 1 .* got 2 at token 1"),
    ({"tokens": [1, 2], "loss_mask": [1]}, ValueError, r"loss_mask: expected one value per token, shape \(2,\)"),
    ({"tokens": [1, 2], "loss_mask": [0.5, 1.0]}, TypeError, "loss_mask"),
    ({"tokens": [1, 2], "prompt_length": 3}, ValueError, r"prompt_length: .* got 3 for document 0 of 2 tokens"),
    ({"tokens": [1, 2], "prompt_length": -1}, ValueError, "prompt_length"),
    ({"tokens": [1, 2], "prompt_length": 1.0}, TypeError, "prompt_length"),
    ({"tokens": [1, 2], "prompt_length": 1, "loss_mask": [1, 1]}, ValueError, "at most one"),
    ({"tokens": [1, 2, 3], "lengths": [1, 2], "loss_mask": [1, 1]}, ValueError, "loss_mask"),
    ({"tokens": [1, 2, 3], "lengths": [1, 2], "prompt_lengths": [2, 0]}, ValueError,
     "prompt_lengths: .* document 0"),
    ({"tokens": [1, 2, 3], "lengths": [1, 2], "prompt_lengths": [0]}, ValueError, "one prompt length per document"),
])
def test_bad_masks_are_named(backend, element, error, message):
    with pytest.raises(error, match=message):
        list(LLMPackIterDataset(_source([element]), seq_len=8, num_packing_bins=1, eod_token_id=E))


def test_bad_bulk_masks_and_caps_are_named(backend):
    tokens, lengths = _flat([[1, 2], [3]])
    with pytest.raises(ValueError, match="at most one"):
        pack_documents(tokens, lengths, seq_len=8, eod_token_id=E, loss_mask=[1, 1, 1], prompt_lengths=[0, 0])
    with pytest.raises(ValueError, match=r"loss_mask: expected one value per token, shape \(3,\)"):
        pack_documents(tokens, lengths, seq_len=8, eod_token_id=E, loss_mask=[1, 1])
    with pytest.raises(ValueError, match="prompt_lengths"):
        window_documents(tokens, lengths, seq_len=8, eod_token_id=E, prompt_lengths=[3, 0])
    for cap in (0, -1, 1.5, True):
        with pytest.raises((ValueError, TypeError), match="max_documents_per_row"):
            pack_documents(tokens, lengths, seq_len=8, eod_token_id=E, max_documents_per_row=cap)
        with pytest.raises((ValueError, TypeError), match="max_documents_per_row"):
            LLMPackIterDataset(_source([]), seq_len=8, num_packing_bins=1, eod_token_id=E, max_documents_per_row=cap)
