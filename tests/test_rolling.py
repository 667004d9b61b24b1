"""Rolling best fit: the kernel on both backends, its bounds, fill, streaming and checkpoints."""

import pickle

import grain
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xbatch import _kernels_numpy, kernels
from xbatch.packing import LLMPackIterDataset, PackingStats, pack_documents
from xbatch.packing import rolling as rolling_module

E = 99
ROLLING = "rolling_best_fit"
FIELDS = ("inputs", "targets", "inputs_position", "inputs_segmentation", "targets_position",
          "targets_segmentation")
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _packer(capacity, num_bins, buffer_size, buffer_wait, bin_wait, max_items=None):
    return kernels.RollingPacker(capacity, num_bins=num_bins, buffer_size=buffer_size, buffer_wait=buffer_wait,
                                 bin_wait=bin_wait, max_items=max_items)


def _run(packer, lengths, step=None):
    """(rows as lists of ids, the clock at which each row left) pushing ``step`` at a time."""
    rows, clocks = [], []
    step = step or max(1, len(lengths))
    for start in range(0, len(lengths), step):
        packer.push(lengths[start:start + step])
        ids, sizes = packer.take_rows()
        for row in np.split(ids, np.cumsum(sizes)[:-1]) if sizes.size else []:
            rows.append(row.tolist())
            clocks.append(packer.clock)
    end = packer.clock
    packer.drain()
    ids, sizes = packer.take_rows()
    for row in np.split(ids, np.cumsum(sizes)[:-1]) if sizes.size else []:
        rows.append(row.tolist())
        clocks.append(end)
    return rows, clocks


# The kernel ------------------------------------------------------------------------------

@settings(max_examples=40, **SETTINGS)
@given(lengths=st.lists(st.integers(1, 20), max_size=120), num_bins=st.integers(1, 6),
       buffer_size=st.integers(0, 8), buffer_wait=st.integers(0, 30), bin_wait=st.integers(1, 30),
       step=st.integers(1, 10), max_items=st.one_of(st.none(), st.integers(1, 4)))
def test_every_item_leaves_once_within_the_waiting_bound(backend, lengths, num_bins, buffer_size, buffer_wait,
                                                         bin_wait, step, max_items):
    capacity = 20
    arguments = (capacity, num_bins, buffer_size, buffer_wait, bin_wait, max_items)
    packer = _packer(*arguments)
    rows, clocks = _run(packer, np.array(lengths, np.int64), step=1)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    for row, clock in zip(rows, clocks):
        assert 0 < sum(lengths[i] for i in row) <= capacity
        assert max_items is None or len(row) <= max_items
        for i in row:  # pushed as item i (clock i + 1), out by clock i + 1 + max_wait
            assert clock - (i + 1) <= packer.max_wait
    # How the items are pushed does not change the rows, and both backends agree.
    assert _run(_packer(*arguments), np.array(lengths), step)[0] == rows
    reference = _kernels_numpy.RollingPacker(*arguments[:-1], max_items or 0)
    reference.push(np.array(lengths, np.int64))
    reference.drain()
    ids, sizes = reference.take_rows()
    assert [r.tolist() for r in np.split(ids, np.cumsum(sizes)[:-1])] == rows if rows else ids.size == 0


@pytest.mark.parametrize("max_items", [None, 3])
def test_backends_agree_on_lognormal_lengths(backend, max_items):
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(60), 1.0, 3000).astype(np.int64) + 1, 1, 256)
    got = _run(_packer(256, 16, 128, 1024, 2048, max_items), lengths, step=97)[0]
    reference = _kernels_numpy.RollingPacker(256, 16, 128, 1024, 2048, max_items or 0)
    reference.push(lengths)
    reference.drain()
    ids, sizes = reference.take_rows()
    assert got == [r.tolist() for r in np.split(ids, np.cumsum(sizes)[:-1])]


def test_wide_bins_and_long_rows(backend):
    """Bit trees of several levels (over 64**2 rooms and bins): the backends still agree."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 5000, 4000)
    got = _run(_packer(5000, 5000, 64, 3000, 6000), lengths, step=1000)[0]
    reference = _kernels_numpy.RollingPacker(5000, 5000, 64, 3000, 6000, 0)
    reference.push(lengths)
    reference.drain()
    ids, sizes = reference.take_rows()
    assert got == [r.tolist() for r in np.split(ids, np.cumsum(sizes)[:-1])]
    assert sorted(i for row in got for i in row) == list(range(4000))


def test_the_compiled_constructor_checks_its_bounds():
    """The compiled kernel sizes its tables from these arguments: called without the
    wrapper, out-of-range values raise instead of leaving tables too small."""
    compiled = pytest.importorskip("xbatch._kernels")
    good = dict(capacity=10, num_bins=2, buffer_size=1, buffer_wait=5, bin_wait=5, max_items=0)
    for name, value in [("capacity", 0), ("capacity", 2**24 + 1), ("num_bins", 0), ("num_bins", 2**20 + 1),
                        ("buffer_size", -1), ("buffer_size", 2**30 + 1), ("buffer_wait", -1), ("bin_wait", 0),
                        ("max_items", -1)]:
        with pytest.raises(ValueError):
            compiled.RollingPacker(*{**good, name: value}.values())
    packer = compiled.RollingPacker(*good.values())
    assert packer.push(np.array([3, 11, 2], np.int64)) == 1 and packer.clock == 1


def test_held_items_and_clock(backend):
    """The rule of xbatch/_kernels_numpy.py, step by step."""
    packer = _packer(10, 2, 1, 100, 100)
    packer.push([6, 6, 3])  # 6 (id 1, the newest of the largest) -> bin 0; 6 (id 0) -> bin 1
    assert packer.clock == 3 and packer.num_held == 3
    np.testing.assert_array_equal(packer.held_ids(), [0, 1, 2])
    # The 3 fits both bins best (room 4): bin 1 got that room last, it takes the 3
    # (room 1); the 7 stays buffered.
    packer.push([7])
    assert [a.tolist() for a in packer.take_rows()] == [[], []]
    packer.push([7])  # no 7 fits: the fullest bin (1) leaves, nothing tops it up
    assert [a.tolist() for a in packer.take_rows()] == [[0, 2], [2]]
    packer.drain()  # 7 (id 3), 7 (id 4, now in bin 1), 6 (id 1): one row each
    assert [a.tolist() for a in packer.take_rows()] == [[3, 4, 1], [1, 1, 1]]
    assert packer.clock == 0 and packer.num_held == 0


@pytest.mark.parametrize("bad", [0, 11, -1])
def test_lengths_outside_a_bin_are_refused(backend, bad):
    packer = _packer(10, 2, 1, 5, 5)
    with pytest.raises(ValueError, match=rf"lengths: expected lengths in 1..10 .*got {bad} for item 1"):
        packer.push([3, bad, 4])
    assert packer.clock == 1  # the item before was pushed, none after


@pytest.mark.parametrize("name, value", [("capacity", 0), ("capacity", 2**24 + 1), ("num_bins", 0),
                                         ("num_bins", 2**20 + 1), ("buffer_size", -1), ("buffer_size", 2**30 + 1),
                                         ("buffer_wait", -1), ("bin_wait", 0), ("max_items", 0)])
def test_arguments_are_checked(backend, name, value):
    kwargs = {**dict(capacity=10, num_bins=2, buffer_size=1, buffer_wait=5, bin_wait=5), name: value}
    with pytest.raises(ValueError, match=name):
        _packer(**kwargs)


# Fill -----------------------------------------------------------------------------------

def _lognormal_corpus(mean, count, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(np.log(mean) - 0.5, 1.0, count).astype(np.int64)
    return rng.integers(0, 1000, int(lengths.sum())).astype(np.int32), lengths


def test_fill_within_half_a_point_of_best_fit_decreasing(backend):
    tokens, lengths = _lognormal_corpus(420, 6000, seed=1)
    kwargs = dict(seq_len=2048, eod_token_id=1, return_stats=True)
    _, offline = pack_documents(tokens, lengths, algorithm="best_fit_decreasing", **kwargs)
    _, rolling = pack_documents(tokens, lengths, algorithm=ROLLING, num_packing_bins=8, **kwargs)
    _, grain_rule = pack_documents(tokens, lengths, algorithm="best_fit", num_packing_bins=8, **kwargs)
    assert offline.fill_ratio - rolling.fill_ratio < 0.005
    assert rolling.fill_ratio > grain_rule.fill_ratio + 0.03


# The LLM packer ------------------------------------------------------------------------

def _source(elements):
    return grain.MapDataset.source(elements).to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))


def _docs(seed, count, max_length):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 50, rng.integers(0, max_length + 1)) for _ in range(count)]


def _chunks(docs, size):
    return [{"tokens": np.concatenate([np.asarray(d, np.int64) for d in docs[i:i + size]]),
             "lengths": np.array([len(d) for d in docs[i:i + size]])} for i in range(0, len(docs), size)]


def _flat(docs):
    return np.concatenate([np.asarray(d, np.int32) for d in docs]), np.array([len(d) for d in docs], np.int64)


@pytest.fixture
def small_intervals(monkeypatch):
    """Short waits and checkpoint intervals, so that small streams cross several."""
    options = rolling_module.RollingOptions(buffer_size=3, buffer_wait=7, bin_wait=11, checkpoint_every=23)
    monkeypatch.setattr(rolling_module.RollingOptions, "for_bins", classmethod(lambda cls, num_bins: options))
    return options


@pytest.mark.parametrize("shift", ["inputs", "targets"])
def test_streaming_equals_bulk_and_rows_hold_whole_pieces(backend, small_intervals, shift):
    docs = _docs(3, 150, 30)
    kwargs = dict(seq_len=16, num_packing_bins=3, eod_token_id=E, algorithm=ROLLING, shift=shift)
    batch, stats = pack_documents(*_flat(docs), return_stats=True, **kwargs)
    for elements in (docs, _chunks(docs, 7)):
        iterator = iter(LLMPackIterDataset(_source(elements), **kwargs))
        rows = list(iterator)
        for name in FIELDS:
            np.testing.assert_array_equal(np.stack([row[name] for row in rows]), getattr(batch, name), err_msg=name)
        assert iterator.stats == stats
    # Every EOD-terminated piece appears exactly once, whole, as one segment.
    packed = batch.inputs if shift == "targets" else batch.targets
    segments = batch.inputs_segmentation
    found = sorted(tuple(packed[r][segments[r] == s]) for r in range(len(packed)) for s in range(1, segments[r].max() + 1))
    cells = [tuple(np.append(d, E)) for d in docs]
    expected = sorted(c[i:i + 16] for c in cells for i in range(0, len(c), 16))
    assert found == expected
    assert stats.tokens == sum(len(c) for c in cells) and stats.loss_tokens == stats.tokens - stats.rows * (shift == "targets")


@pytest.mark.parametrize("ragged", [False, True])
def test_checkpoint_restores_identical_rows(backend, small_intervals, ragged):
    docs = _docs(4, 50, 25)
    elements = _chunks(docs, 6) if ragged else docs
    dataset = LLMPackIterDataset(_source(elements), seq_len=12, num_packing_bins=2, eod_token_id=E, algorithm=ROLLING)
    grain.experimental.assert_equal_output_after_checkpoint(dataset)


def test_default_checkpoints_restore_and_stay_small(backend):
    docs = _docs(5, 120, 40)
    dataset = LLMPackIterDataset(_source(_chunks(docs, 15)), seq_len=64, num_packing_bins=4, eod_token_id=E,
                                 algorithm=ROLLING)
    grain.experimental.assert_equal_output_after_checkpoint(dataset)
    iterator = iter(dataset)
    for _ in range(20):
        next(iterator)
    state = iterator.get_state()
    assert len(repr({k: v for k, v in state.items() if k != "parent"})) < 1024


def test_arena_compaction_keeps_rows(backend, small_intervals, monkeypatch):
    docs = _docs(6, 200, 30)
    kwargs = dict(seq_len=16, num_packing_bins=3, eod_token_id=E, algorithm=ROLLING)
    expected = pack_documents(*_flat(docs), **kwargs).targets
    monkeypatch.setattr(rolling_module._Arena, "COMPACT_TOKENS", 8)
    rows = [row["targets"] for row in LLMPackIterDataset(_source(docs), **kwargs)]
    np.testing.assert_array_equal(np.stack(rows), expected)


def test_options_it_refuses(backend):
    with pytest.raises(ValueError, match="shuffle_bins"):
        LLMPackIterDataset(_source([]), seq_len=8, num_packing_bins=2, eod_token_id=E, algorithm=ROLLING,
                           shuffle_bins=True)
    with pytest.raises(ValueError, match="num_packing_bins"):
        pack_documents([1, 2], [2], seq_len=8, eod_token_id=E, algorithm=ROLLING)


def test_no_documents_and_pickling(backend):
    empty = {"tokens": np.zeros(0, np.int32), "lengths": np.zeros(0, np.int64)}
    kwargs = dict(seq_len=8, num_packing_bins=2, eod_token_id=E, algorithm=ROLLING)
    assert list(LLMPackIterDataset(_source([empty, empty]), **kwargs)) == []
    batch, stats = pack_documents([], [], return_stats=True, **kwargs)
    assert batch.targets.shape == (0, 8) and stats == PackingStats()
    dataset = LLMPackIterDataset(_source(_docs(7, 40, 10)), **kwargs)
    again = pickle.loads(pickle.dumps(dataset))
    assert [r["targets"].tolist() for r in again] == [r["targets"].tolist() for r in dataset]


def test_state_restores_only_into_the_same_packer(backend):
    docs = _docs(8, 30, 10)
    kwargs = dict(seq_len=8, num_packing_bins=2, eod_token_id=E)
    iterator = iter(LLMPackIterDataset(_source(docs), algorithm=ROLLING, **kwargs))
    next(iterator)
    other = iter(LLMPackIterDataset(_source(docs), algorithm="best_fit", **kwargs))
    with pytest.raises(ValueError, match="algorithm"):
        other.set_state(iterator.get_state())


def test_a_state_of_the_ordered_set_kernel_is_refused(backend):
    """That kernel broke ties between equally full bins otherwise: its states (without
    the placement revision) would replay other rows."""
    dataset = LLMPackIterDataset(_source(_docs(9, 30, 10)), seq_len=8, num_packing_bins=2, eod_token_id=E,
                                 algorithm=ROLLING)
    iterator = iter(dataset)
    next(iterator)
    state = iterator.get_state()
    record = next(value for value in state.values() if isinstance(value, dict) and "arguments" in value)
    del record["arguments"]["placement"]
    with pytest.raises(ValueError, match="placement"):
        iter(dataset).set_state(state)


# Loss masks, train_on_eod and the cap ----------------------------------------------------

def _masked(seed, count, max_length):
    """(docs, masks, prompts, kinds): per document a random 0/1 mask (kind 0), a prompt
    length (kind 1) or nothing (kind 2: a mask of ones, prompt length 0)."""
    rng = np.random.default_rng(seed)
    docs, masks, prompts, kinds = [], [], [], []
    for doc in _docs(seed, count, max_length):
        kind = int(rng.integers(3))
        prompt = int(rng.integers(0, len(doc) + 1)) if kind == 1 else 0
        mask = (rng.random(len(doc)) < 0.5) if kind == 0 else (np.arange(len(doc)) >= prompt)
        docs.append(np.asarray(doc, np.int32))
        masks.append(mask.astype(np.int32))
        prompts.append(prompt)
        kinds.append(kind)
    return docs, masks, prompts, kinds


def _masked_elements(docs, masks, prompts, kinds, chunk_size=None):
    """Documents as the LLM packer takes them, or ragged chunks with per-token masks
    (even chunks) or prompt lengths (odd chunks, where every document has a prompt)."""
    if chunk_size is None:
        return [d if kind == 2 else {"tokens": d, "loss_mask": m} if kind == 0 else {"tokens": d, "prompt_length": p}
                for d, m, p, kind in zip(docs, masks, prompts, kinds)]
    chunks = []
    for number, start in enumerate(range(0, len(docs), chunk_size)):
        part = slice(start, start + chunk_size)
        chunk = {"tokens": np.concatenate([np.zeros(0, np.int32), *docs[part]]),
                 "lengths": np.array([len(d) for d in docs[part]], np.int64)}
        if number % 2 == 0 or any(kind == 0 for kind in kinds[part]):
            chunk["loss_mask"] = np.concatenate([np.zeros(0, np.int32), *masks[part]])
        else:
            chunk["prompt_lengths"] = np.array(prompts[part])
        chunks.append(chunk)
    return chunks


@pytest.mark.parametrize("shift", ["inputs", "targets"])
@pytest.mark.parametrize("long_documents", ["split", "truncate"])
@pytest.mark.parametrize("train_on_eod", [True, False])
def test_a_mask_packs_exactly_like_its_tokens(backend, small_intervals, shift, long_documents, train_on_eod):
    """Rows with masks are the rows without them, except that targets_segmentation is 0
    exactly where the mask (packed as if it were the tokens, EODs ``train_on_eod``) is 0;
    documents, chunks and pack_documents agree, rows and stats."""
    docs, masks, prompts, kinds = _masked(11, 120, 30)
    kwargs = dict(seq_len=16, num_packing_bins=3, algorithm=ROLLING, shift=shift, long_documents=long_documents)
    tokens, lengths = _flat(docs)
    plain = pack_documents(tokens, lengths, eod_token_id=E, **kwargs)
    mask_rows = pack_documents(np.concatenate(masks), lengths, eod_token_id=int(train_on_eod), **kwargs).targets
    batch, stats = pack_documents(tokens, lengths, eod_token_id=E, loss_mask=np.concatenate(masks),
                                  train_on_eod=train_on_eod, return_stats=True, **kwargs)
    for name in FIELDS:
        expected = plain.targets_segmentation * mask_rows if name == "targets_segmentation" else getattr(plain, name)
        np.testing.assert_array_equal(getattr(batch, name), expected, err_msg=name)
    assert 0 < stats.loss_tokens == np.count_nonzero(batch.targets_segmentation) < stats.tokens
    prompted = pack_documents(tokens, lengths, eod_token_id=E, train_on_eod=train_on_eod,
                              prompt_lengths=np.where(np.array(kinds) == 1, prompts, 0), **kwargs)
    prompt_masks = [m if kind != 0 else np.ones_like(m) for m, kind in zip(masks, kinds)]
    expected = plain.targets_segmentation * pack_documents(
        np.concatenate(prompt_masks), lengths, eod_token_id=int(train_on_eod), **kwargs).targets
    np.testing.assert_array_equal(prompted.targets_segmentation, expected)
    for chunk_size in (None, 7):
        elements = _masked_elements(docs, masks, prompts, kinds, chunk_size)
        iterator = iter(LLMPackIterDataset(_source(elements), eod_token_id=E, train_on_eod=train_on_eod, **kwargs))
        rows = list(iterator)
        for name in FIELDS:
            np.testing.assert_array_equal(np.stack([row[name] for row in rows]), getattr(batch, name),
                                          err_msg=f"{name}, chunks of {chunk_size}")
        assert iterator.stats == stats


def test_masked_checkpoints_restore_identical_rows(backend, small_intervals):
    docs, masks, prompts, kinds = _masked(12, 28, 25)
    for chunk_size in (None, 5):
        dataset = LLMPackIterDataset(_source(_masked_elements(docs, masks, prompts, kinds, chunk_size)), seq_len=12,
                                     num_packing_bins=2, eod_token_id=E, algorithm=ROLLING, train_on_eod=False,
                                     max_documents_per_row=3, shift="targets")
        grain.experimental.assert_equal_output_after_checkpoint(dataset)


@pytest.mark.parametrize("cap", [1, 2, 5])
def test_the_cap_holds_in_every_mode(backend, small_intervals, cap):
    docs = _docs(13, 150, 12)
    kwargs = dict(seq_len=32, num_packing_bins=3, eod_token_id=E, algorithm=ROLLING, max_documents_per_row=cap)
    batch, stats = pack_documents(*_flat(docs), return_stats=True, **kwargs)
    assert batch.inputs_segmentation.max() <= cap
    assert stats.pieces == len(docs) and stats.tokens == sum(len(d) + 1 for d in docs)
    for elements in (docs, _chunks(docs, 9)):
        rows = list(LLMPackIterDataset(_source(elements), **kwargs))
        np.testing.assert_array_equal(np.stack([row["targets"] for row in rows]), batch.targets)
    assert cap > 1 or stats.rows == stats.pieces


def test_the_cap_keeps_fill_near_capped_best_fit_decreasing(backend):
    """At mean 90 tokens a cap of 16 documents binds (at most ~16 * 91 of 2,048 cells);
    rolling best fit stays within a point of offline best-fit-decreasing under the same
    cap."""
    tokens, lengths = _lognormal_corpus(90, 6000, seed=2)
    kwargs = dict(seq_len=2048, eod_token_id=1, return_stats=True, max_documents_per_row=16)
    batch, rolling = pack_documents(tokens, lengths, algorithm=ROLLING, num_packing_bins=8, **kwargs)
    _, offline = pack_documents(tokens, lengths, algorithm="best_fit_decreasing", **kwargs)
    assert batch.inputs_segmentation.max() == 16
    assert offline.fill_ratio - rolling.fill_ratio < 0.01
    assert rolling.rows <= offline.rows * 1.01


def test_attention_metadata_with_the_cap(backend):
    """With the cap rolling best fit feeds the packers' attention metadata."""
    docs = _docs(14, 80, 12)
    kwargs = dict(seq_len=32, num_packing_bins=3, eod_token_id=E, algorithm=ROLLING, max_documents_per_row=4)
    batch, metadata = pack_documents(*_flat(docs), attention_metadata=True, **kwargs)
    rows = list(LLMPackIterDataset(_source(docs), attention_metadata=True, **kwargs))
    np.testing.assert_array_equal(np.stack([row["seq_lengths"] for row in rows]), metadata["seq_lengths"])
    np.testing.assert_array_equal(metadata["seq_lengths"].clip(0).sum(axis=1),
                                  np.count_nonzero(batch.inputs_segmentation, axis=1))
