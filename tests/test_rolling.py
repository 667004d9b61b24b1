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
    masked = [{"tokens": np.array([1, 2]), "lengths": np.array([2]), "prompt_lengths": np.array([1])}]
    with pytest.raises(ValueError, match="loss masks"):
        list(LLMPackIterDataset(_source(masked), seq_len=8, num_packing_bins=2, eod_token_id=E, algorithm=ROLLING))


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
