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


# ---------------------------------------------------------------------------------------
# Loss masks, train_on_eod and max_documents_per_row in concat-then-split


def _masked_docs(rng, count, max_length):
    """(docs, masks, prompts, kinds): per document a random 0/1 mask (kind 0), a prompt
    length (kind 1) or nothing (kind 2: a mask of ones, prompt length 0)."""
    docs, masks, prompts, kinds = [], [], [], []
    for doc in _random_docs(rng, count, max_length):
        kind = int(rng.integers(3))
        prompt = int(rng.integers(0, len(doc) + 1)) if kind == 1 else 0
        mask = (rng.random(len(doc)) < 0.5) if kind == 0 else (np.arange(len(doc)) >= prompt)
        docs.append(doc.astype(np.int32))
        masks.append(mask.astype(np.int32))
        prompts.append(prompt)
        kinds.append(kind)
    return docs, masks, prompts, kinds


def _grain_masked_rows(docs, masks, seq_len, shift, *, train_on_eod=True, long_documents="split"):
    """The oracle: grain's ConcatThenSplitIterDataset on {targets, mask} as two features of
    equal length (the EOD-terminated documents and their masks), then the shift; the
    targets segmentation is the segment ids times the mask."""
    cells = [np.append(d, np.int32(E)) for d in docs]
    cell_masks = [np.append(m, np.int32(train_on_eod)) for m in masks]
    if long_documents == "truncate":
        cells, cell_masks = [c[:seq_len] for c in cells], [m[:seq_len] for m in cell_masks]
    source = _source([{"targets": c, "mask": m} for c, m in zip(cells, cell_masks)])
    packed = list(grain.experimental.ConcatThenSplitIterDataset(
        source, length_struct={"targets": seq_len, "mask": seq_len}))
    tokens = np.stack([row["targets"] for row in packed]).astype(np.int32)
    seg = np.stack([row["targets_segment_ids"] for row in packed]).astype(np.int32)
    pos = np.stack([row["targets_positions"] for row in packed]).astype(np.int32)
    # The mask is cut exactly like its tokens (grain's own segment ids agree).
    np.testing.assert_array_equal(np.stack([row["mask_segment_ids"] for row in packed]), seg)
    trained = seg * np.stack([row["mask"] for row in packed]).astype(np.int32)
    return _shifted(tokens, seg, pos, trained, shift, pad=0)


def _shifted(tokens, seg, pos, trained, shift, pad):
    def left(a, fill):
        return np.concatenate([a[:, 1:], np.full((len(a), 1), fill, a.dtype)], axis=1)

    tokens = np.where(seg == 0, pad, tokens).astype(np.int32)
    if shift == "inputs":
        inputs = np.concatenate([np.full((len(tokens), 1), E, np.int32), tokens[:, :-1]], axis=1)
        return dict(inputs=inputs, targets=tokens, inputs_position=pos, inputs_segmentation=seg,
                    targets_position=pos, targets_segmentation=trained)
    return dict(inputs=tokens, targets=left(tokens, pad), inputs_position=pos, inputs_segmentation=seg,
                targets_position=left(pos, 0), targets_segmentation=left(trained, 0))


def _capped_rows(docs, masks, seq_len, cap, shift, *, train_on_eod=True, pad=0):
    """Plain-Python reference of the documented cap: the cells back to back, a row closes
    when full or after its ``cap``-th piece (then padded); a piece never crosses a row."""
    rows, row, pieces = [], [], 0
    for doc, mask in zip(docs, masks):
        cells = list(zip(list(doc) + [E], list(mask) + [int(train_on_eod)]))
        while cells:
            if len(row) == seq_len or (cap is not None and pieces == cap):
                rows.append(row)
                row, pieces = [], 0
            take = min(len(cells), seq_len - len(row))
            pieces += 1
            row += [(token, m, pieces, position) for position, (token, m) in enumerate(cells[:take])]
            cells = cells[take:]
    if row:
        rows.append(row)
    fields = np.zeros((4, len(rows), seq_len), np.int32)
    for r, cells in enumerate(rows):
        for c, cell in enumerate(cells):
            fields[:, r, c] = cell
    tokens, mask, seg, pos = fields
    return _shifted(tokens, seg, pos, seg * mask, shift, pad)


def _masked_chunks(docs, masks, prompts, size, key):
    chunks = []
    for start in range(0, len(docs), size):
        part = slice(start, start + size)
        chunk = {"tokens": np.concatenate([np.zeros(0, np.int32), *docs[part]]),
                 "lengths": np.array([len(d) for d in docs[part]], np.int64)}
        chunk[key] = (np.concatenate([np.zeros(0, np.int32), *masks[part]]) if key == "loss_mask"
                      else np.array(prompts[part], np.int64))
        chunks.append(chunk)
    return chunks


def _document_elements(docs, masks, prompts, kinds):
    forms = []
    for doc, mask, prompt, kind in zip(docs, masks, prompts, kinds):
        if kind == 0:
            forms.append({"tokens": doc, "loss_mask": mask.astype(bool) if len(doc) % 2 else mask})
        elif kind == 1:
            forms.append({"tokens": doc.tolist(), "prompt_length": prompt})
        else:
            forms.append(doc)
    return forms


def _every_input_form(docs, masks, prompts, kinds, **kwargs):
    """Rows of documents, chunks (loss_mask; prompt_lengths where the masks are prompts)
    and bulk pack_documents, all with the same arguments."""
    flat_tokens, lengths = _flat(docs)
    flat_mask = np.concatenate([np.zeros(0, np.int32), *masks])
    bulk = {key: kwargs[key] for key in ("seq_len", "shift", "long_documents", "train_on_eod",
                                         "max_documents_per_row") if key in kwargs}
    yield "bulk", pack_documents(flat_tokens, lengths, eod_token_id=E, algorithm=CONCAT, loss_mask=flat_mask, **bulk)
    for bins in (1, 3):
        yield f"documents/{bins}", _rows(_stream(_document_elements(docs, masks, prompts, kinds),
                                                 num_packing_bins=bins, **kwargs))
        yield f"chunks/{bins}", _rows(_stream(_masked_chunks(docs, masks, prompts, 7, "loss_mask"),
                                              num_packing_bins=bins, **kwargs))
    if all(kind != 0 for kind in kinds):  # every mask is a prompt
        yield "chunks/prompt_lengths", _rows(_stream(_masked_chunks(docs, masks, prompts, 5, "prompt_lengths"),
                                                     num_packing_bins=2, **kwargs))
        yield "bulk/prompt_lengths", pack_documents(flat_tokens, lengths, eod_token_id=E, algorithm=CONCAT,
                                                    prompt_lengths=prompts, **bulk)


@pytest.mark.parametrize("shift", ["inputs", "targets"])
@pytest.mark.parametrize("long_documents", ["split", "truncate"])
@pytest.mark.parametrize("train_on_eod", [True, False])
def test_masks_equal_grain_two_feature_oracle(backend, shift, long_documents, train_on_eod):
    rng = np.random.default_rng(11)
    docs, masks, prompts, kinds = _masked_docs(rng, 70, 40)
    expected = _grain_masked_rows(docs, masks, 16, shift, train_on_eod=train_on_eod, long_documents=long_documents)
    if long_documents == "split":  # the plain reference without a cap is grain's layout too
        _assert_rows_equal(_capped_rows(docs, masks, 16, None, shift, train_on_eod=train_on_eod), expected)
    kwargs = dict(seq_len=16, shift=shift, long_documents=long_documents, train_on_eod=train_on_eod)
    for name, rows in _every_input_form(docs, masks, prompts, kinds, **kwargs):
        try:
            _assert_rows_equal(rows, expected)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None
    prompt_only = [kind if kind else 1 for kind in kinds]
    prompt_masks = [(np.arange(len(d)) >= p).astype(np.int32) for d, p in zip(docs, prompts)]
    expected = _grain_masked_rows(docs, prompt_masks, 16, shift, train_on_eod=train_on_eod,
                                  long_documents=long_documents)
    names = []
    for name, rows in _every_input_form(docs, prompt_masks, prompts, prompt_only, **kwargs):
        names.append(name)
        _assert_rows_equal(rows, expected)
    assert "chunks/prompt_lengths" in names


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(0, 25), min_size=1, max_size=20), seq_len=st.integers(1, 12),
       cap=st.one_of(st.none(), st.integers(1, 4)), bins=st.integers(1, 4), chunk=st.integers(1, 6),
       shift=st.sampled_from(["inputs", "targets"]), train_on_eod=st.booleans(), seed=st.integers(0, 2**16))
def test_cap_and_masks_equal_reference(backend, lengths, seq_len, cap, bins, chunk, shift, train_on_eod, seed):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 9, n).astype(np.int32) for n in lengths]
    masks = [(rng.random(n) < 0.6).astype(np.int32) for n in lengths]
    expected = _capped_rows(docs, masks, seq_len, cap, shift, train_on_eod=train_on_eod)
    if cap is None:
        _assert_rows_equal(expected, _grain_masked_rows(docs, masks, seq_len, shift, train_on_eod=train_on_eod))
    kwargs = dict(seq_len=seq_len, shift=shift, train_on_eod=train_on_eod, max_documents_per_row=cap)
    elements = [{"tokens": d, "loss_mask": m} for d, m in zip(docs, masks)]
    _assert_rows_equal(_rows(_stream(elements, num_packing_bins=bins, **kwargs)), expected)
    chunks = _masked_chunks(docs, masks, None, chunk, "loss_mask")
    _assert_rows_equal(_rows(_stream(chunks, num_packing_bins=bins, **kwargs)), expected)
    batch, stats = pack_documents(*_flat(docs), eod_token_id=E, algorithm=CONCAT,
                                  loss_mask=np.concatenate(masks), return_stats=True, **kwargs)
    _assert_rows_equal(batch, expected)
    assert stats.loss_tokens == int(np.count_nonzero(batch.targets_segmentation))
    if cap is not None:  # the cap holds
        assert batch.inputs_segmentation.max(initial=0) <= cap


def test_cap_closes_a_row_after_its_last_piece(backend):
    # Rows of 8 cells, at most 2 pieces: [1 E 2 E] is padded, [3 3 3 E] starts the next row whole.
    docs = [[1], [2], [3, 3, 3], [4, 4, 4, 4, 4, 4, 4, 4, 4]]
    batch, stats = pack_documents(*_flat(docs), seq_len=8, eod_token_id=E, algorithm=CONCAT,
                                  max_documents_per_row=2, return_stats=True)
    np.testing.assert_array_equal(batch.targets, [[1, E, 2, E, 0, 0, 0, 0], [3, 3, 3, E, 4, 4, 4, 4],
                                                  [4, 4, 4, 4, 4, E, 0, 0]])
    np.testing.assert_array_equal(batch.targets_segmentation, [[1, 1, 2, 2, 0, 0, 0, 0], [1, 1, 1, 1, 2, 2, 2, 2],
                                                               [1, 1, 1, 1, 1, 1, 0, 0]])
    assert stats.pieces == 5 and stats.documents_split == 1 and stats.capacity == 24 and stats.tokens == 18


@pytest.mark.parametrize("ragged", [False, True])
def test_checkpoint_restores_identical_rows_with_masks_and_cap(backend, ragged):
    docs, masks, prompts, kinds = _masked_docs(np.random.default_rng(5), 25, 30)
    elements = (_masked_chunks(docs, masks, prompts, 6, "loss_mask") if ragged
                else _document_elements(docs, masks, prompts, kinds))
    for kwargs in (dict(num_packing_bins=2), dict(num_packing_bins=3, max_documents_per_row=2, shift="targets"),
                   dict(num_packing_bins=1, max_documents_per_row=1, train_on_eod=False, shuffle_bins=True, seed=3)):
        grain.experimental.assert_equal_output_after_checkpoint(_stream(elements, seq_len=12, **kwargs))
        iterator = iter(_stream(elements, seq_len=12, **kwargs))
        rows = _rows(iterator)
        assert iterator.stats.loss_tokens == int(np.count_nonzero(rows["targets_segmentation"]))


def test_mask_errors_name_the_argument(backend):
    chunk = {"tokens": np.arange(3, dtype=np.int32), "lengths": np.array([2, 1]), "loss_mask": np.array([1, 2, 0])}
    with pytest.raises(ValueError, match="loss_mask: expected 0 or 1 per token, got 2 at token 1"):
        list(_stream([chunk], seq_len=4, num_packing_bins=1))
    with pytest.raises(ValueError, match="loss_mask: expected one value per token"):
        list(_stream([{**chunk, "loss_mask": [1, 0]}], seq_len=4, num_packing_bins=1))
    with pytest.raises(ValueError, match="prompt_length"):
        list(_stream([{"tokens": [1, 2], "prompt_length": 3}], seq_len=4, num_packing_bins=1))


@pytest.mark.parametrize("options", [{}, {"shift": "targets", "train_on_eod": False, "max_documents_per_row": 2}])
def test_sources_pipeline_carries_a_corpus_loss_mask_column(backend, tmp_path, options):
    """A corpus on disk with a loss_mask column -> packed_rows(algorithm=concat_then_split)
    gives pack_documents' rows on the same documents in the same order."""
    from xbatch.sources import packed_rows, write_xbatch_corpus

    docs, masks, _, _ = _masked_docs(np.random.default_rng(8), 50, 30)
    tokens, lengths = _flat(docs)
    mask = np.concatenate(masks).astype(np.uint8)
    write_xbatch_corpus(tmp_path / "c", tokens, lengths=lengths, token_columns={"loss_mask": mask})
    rows = packed_rows(tmp_path / "c", seq_len=12, eod_token_id=E, shuffle=False, num_packing_bins=2,
                       algorithm=CONCAT, documents_per_chunk=7, **options)
    expected = pack_documents(tokens, lengths, seq_len=12, eod_token_id=E, algorithm=CONCAT, loss_mask=mask,
                              **options)
    _assert_rows_equal(_rows(rows), {name: getattr(expected, name) for name in FIELDS})
