"""Kernel tests: every test runs on both backends (the ``backend`` fixture).

Correctness rests on three legs: grain's own packers as the oracle for placement and row
layout, the two backends against each other on random inputs, and a plain-Python
reference for the row writers.
"""

import grain
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xbatch import _backend, _kernels_numpy, kernels

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# ---------------------------------------------------------------------------------------
# Helpers


def pack_windows(items, capacities, num_bins, algorithm, max_items, alignments):
    """Packs ``items`` (list of per-feature length tuples) window by window like grain.

    Returns a list of windows, each a list of bins (one per item of the window).
    """
    packer = kernels.BinPacker(
        capacities,
        num_bins=num_bins,
        alignments=alignments,
        max_items_per_bin=max_items,
        algorithm=algorithm,
    )
    lengths = np.array(items, dtype=np.int64).reshape(len(items), len(capacities))
    windows = []
    while len(lengths):
        out = np.zeros(len(lengths), dtype=np.int64)
        placed = packer.place(lengths, out)
        assert placed > 0, "an item that fits an empty bin must be placed"
        windows.append(out[:placed].tolist())
        lengths = lengths[placed:]
        packer.reset()
    return windows


def xbatch_rows(items, capacities, num_bins, algorithm, max_items, alignments):
    """Rows (values, segment ids, positions per feature) built from the kernels."""
    windows = pack_windows(items, capacities, num_bins, algorithm, max_items, alignments)
    rows, start = [], 0
    for bins in windows:
        window_items = items[start : start + len(bins)]
        start += len(bins)
        num_rows = max(bins) + 1
        row = {}
        for f, capacity in enumerate(capacities):
            lengths = np.array([item[f] for item in window_items], dtype=np.int64)
            values = np.concatenate([token_values(i + start - len(bins), f, n) for i, n in enumerate(lengths)]) if len(lengths) else np.zeros(0, np.int64)
            out = np.zeros((num_rows, capacity), dtype=np.int64)
            seg = np.zeros((num_rows, capacity), dtype=np.int32)
            pos = np.zeros((num_rows, capacity), dtype=np.int32)
            kernels.scatter_rows(values, lengths, bins, out, alignment=alignments[f])
            kernels.pack_rows(lengths, bins, seg, pos, alignment=alignments[f])
            row[f"f{f}"], row[f"f{f}_segment_ids"], row[f"f{f}_positions"] = out, seg, pos
        rows.extend({k: v[r] for k, v in row.items()} for r in range(num_rows))
    return rows


def token_values(item_index, feature, length):
    return np.arange(length, dtype=np.int64) + 1000 * item_index + 100000 * feature + 1


def grain_rows(items, capacities, num_bins, algorithm, max_items, alignments):
    elements = [
        {f"f{f}": token_values(i, f, n) for f, n in enumerate(item)} for i, item in enumerate(items)
    ]
    cls = {
        "first_fit": grain.experimental.FirstFitPackIterDataset,
        "best_fit": grain.experimental.BestFitPackIterDataset,
    }[algorithm]
    dataset = cls(
        grain.MapDataset.source(elements).to_iter_dataset(),
        length_struct={f"f{f}": c for f, c in enumerate(capacities)},
        num_packing_bins=num_bins,
        shuffle_bins=False,
        max_sequences_per_bin=max_items,
        pack_alignment_struct={f"f{f}": a for f, a in enumerate(alignments)},
    )
    return list(dataset)


@st.composite
def packing_problems(draw, max_bins=12, max_features=2):
    num_features = draw(st.integers(1, max_features))
    capacities = draw(st.lists(st.integers(1, 24), min_size=num_features, max_size=num_features))
    alignments = draw(
        st.one_of(
            st.just([1] * num_features),
            st.lists(st.integers(1, 4), min_size=num_features, max_size=num_features),
        )
    )
    num_bins = draw(st.integers(1, max_bins))
    max_items = draw(st.one_of(st.none(), st.integers(1, 4)))
    algorithm = draw(st.sampled_from(kernels.ALGORITHMS))
    length = st.tuples(*[st.integers(0, c) for c in capacities])
    # Zero-length items, exact fills and uniform lengths are the interesting corners.
    items = draw(
        st.lists(
            st.one_of(length, st.just(tuple(capacities)), st.just((0,) * num_features)),
            max_size=60,
        )
    )
    return items, capacities, num_bins, algorithm, max_items, alignments


# ---------------------------------------------------------------------------------------
# Placement


@SETTINGS
@given(problem=packing_problems())
def test_rows_equal_grain(backend, problem):
    """Placement plus the row writers reproduce grain's packers row for row."""
    items, capacities, num_bins, algorithm, max_items, alignments = problem
    ours = xbatch_rows(*problem)
    theirs = grain_rows(*problem)
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs):
        assert set(mine) == set(reference)
        for key in reference:
            np.testing.assert_array_equal(mine[key], reference[key], err_msg=key)


@pytest.mark.skipif(_backend.compiled_module() is None, reason="compiled extension not built")
@settings(max_examples=150, deadline=None)
@given(problem=packing_problems(max_bins=40, max_features=3))
def test_backends_place_identically(problem):
    """The compiled placement matches the NumPy twin bin for bin, state for state."""
    items, capacities, num_bins, algorithm, max_items, alignments = problem
    compiled = _backend.compiled_module()
    lengths = np.array(items, dtype=np.int64).reshape(len(items), len(capacities))
    packers = [
        module.BinPacker(
            np.array(capacities), np.array(alignments), num_bins, max_items or 0, algorithm == "best_fit"
        )
        for module in (compiled, _kernels_numpy)
    ]
    while True:
        outs = [np.full(len(lengths), -7, dtype=np.int64) for _ in packers]
        placed = [p.place(lengths, out) for p, out in zip(packers, outs)]
        assert placed[0] == placed[1]
        np.testing.assert_array_equal(outs[0], outs[1])
        np.testing.assert_array_equal(packers[0].used, packers[1].used)
        np.testing.assert_array_equal(packers[0].counts, packers[1].counts)
        assert packers[0].num_used_bins == packers[1].num_used_bins
        if placed[0] == len(lengths):
            break
        lengths = lengths[placed[0] :]
        for p in packers:
            p.reset()


@pytest.mark.parametrize("algorithm", kernels.ALGORITHMS)
@pytest.mark.parametrize("num_bins", [1, 8, 4096])
def test_place_one_matches_place(backend, algorithm, num_bins):
    rng = np.random.default_rng(num_bins)
    lengths = rng.integers(0, 65, size=(3000, 1)).astype(np.int64)
    batch = kernels.BinPacker(64, num_bins=num_bins, algorithm=algorithm)
    single = kernels.BinPacker(64, num_bins=num_bins, algorithm=algorithm)
    out = np.zeros(len(lengths), dtype=np.int64)
    placed = batch.place(lengths, out)
    one_by_one = []
    for (length,) in lengths:
        b = single.place_one(int(length))
        if b < 0:
            break
        one_by_one.append(b)
    assert one_by_one == out[:placed].tolist()
    np.testing.assert_array_equal(batch.used, single.used)


def test_first_fit_and_best_fit_choose_as_documented(backend):
    first = kernels.BinPacker(10, num_bins=3)
    best = kernels.BinPacker(10, num_bins=3, algorithm="best_fit")
    for packer in (first, best):
        assert [packer.place_one(n) for n in (5, 7)] == [0, 1]
    assert first.place_one(2) == 0  # the lowest bin with room (5 free)
    assert best.place_one(2) == 1  # the fullest bin with room (3 free)
    assert best.place_one(3) == 0  # bin 1 has 1 free; bin 0 (5 used) beats empty bin 2
    assert first.place_one(10) == 2 and first.place_one(10) == -1
    assert first.num_used_bins == 3


def test_cap_alignment_and_reset(backend):
    packer = kernels.BinPacker(8, num_bins=2, alignments=4, max_items_per_bin=2)
    assert [packer.place_one(n) for n in (1, 1, 1, 1, 1)] == [0, 0, 1, 1, -1]
    np.testing.assert_array_equal(packer.used, [[8, 8]])
    np.testing.assert_array_equal(packer.counts, [2, 2])
    packer.reset()
    assert packer.num_used_bins == 0 and packer.counts.sum() == 0
    assert packer.place_one(8) == 0


def test_empty_input_places_nothing(backend):
    packer = kernels.BinPacker([4, 4], num_bins=2)
    assert packer.place(np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)) == 0
    assert packer.num_used_bins == 0


@pytest.mark.parametrize("bad", [[-1], [9]])
def test_item_outside_capacity_is_rejected(backend, bad):
    packer = kernels.BinPacker(8, num_bins=2)
    with pytest.raises(ValueError, match="lengths"):
        packer.place_one(bad)
    assert packer.num_used_bins == 0, "a rejected item is not placed"
    with pytest.raises(ValueError, match="item 1 .* 1 items before it were placed"):
        packer.place(np.array([[1], bad, [2]], dtype=np.int64), np.zeros(3, dtype=np.int64))
    np.testing.assert_array_equal(packer.used, [[1, 0]])


def test_place_rejects_wrong_arrays(backend):
    packer = kernels.BinPacker([4, 4], num_bins=2)
    with pytest.raises(ValueError, match="lengths"):
        packer.place(np.zeros((3, 1), dtype=np.int64), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="lengths"):
        packer.place(np.zeros((3, 2), dtype=np.int32), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="out_bins"):
        packer.place(np.zeros((3, 2), dtype=np.int64), np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="lengths"):
        packer.place_one((1, 2, 3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"capacities": 0, "num_bins": 1}, "capacities"),
        ({"capacities": [4, -1], "num_bins": 1}, "capacities"),
        ({"capacities": [], "num_bins": 1}, "capacities"),
        ({"capacities": 4.5, "num_bins": 1}, "capacities"),
        ({"capacities": 4, "num_bins": 0}, "num_bins"),
        ({"capacities": 4, "num_bins": 2.0}, "num_bins"),
        ({"capacities": 4, "num_bins": 1, "alignments": 0}, "alignments"),
        ({"capacities": [4, 4], "num_bins": 1, "alignments": [1]}, "alignments"),
        ({"capacities": 4, "num_bins": 1, "max_items_per_bin": 0}, "max_items_per_bin"),
        ({"capacities": 4, "num_bins": 1, "algorithm": "worst_fit"}, "algorithm"),
    ],
)
def test_bin_packer_arguments_are_checked(backend, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        kernels.BinPacker(**kwargs)


# ---------------------------------------------------------------------------------------
# Row writers


def reference_rows(values, lengths, bins, alignment, shape, padding=0):
    """Plain-Python layout: the definition the kernels must meet."""
    out = np.full(shape, padding, dtype=values.dtype)
    seg = np.zeros(shape[:2], dtype=np.int32)
    pos = np.zeros(shape[:2], dtype=np.int32)
    cursor = [0] * shape[0]
    count = [0] * shape[0]
    source = 0
    for n, b in zip(lengths, bins):
        start = cursor[b]
        count[b] += 1
        out[b, start : start + n] = values[source : source + n]
        seg[b, start : start + n] = count[b]
        pos[b, start : start + n] = np.arange(n)
        source += n
        cursor[b] = -(-(start + n) // alignment) * alignment
    return out, seg, pos


def garbage(shape, dtype):
    """Uninitialized-looking rows: the writers must overwrite every cell."""
    return np.random.default_rng(1).integers(-99, 99, size=shape).astype(dtype)


@st.composite
def row_problems(draw):
    rows = draw(st.integers(1, 6))
    row_length = draw(st.integers(1, 20))
    alignment = draw(st.integers(1, 3))
    fill = [0] * rows
    lengths, bins = [], []
    for _ in range(draw(st.integers(0, 25))):
        b = draw(st.integers(0, rows - 1))
        room = row_length - fill[b]
        if room < 0:
            continue
        n = draw(st.integers(0, room))
        lengths.append(n)
        bins.append(b)
        fill[b] = -(-(fill[b] + n) // alignment) * alignment
    dtype = draw(st.sampled_from([np.int32, np.int64]))
    return rows, row_length, alignment, lengths, bins, dtype


@SETTINGS
@given(problem=row_problems())
def test_row_writers_match_reference(backend, problem):
    rows, row_length, alignment, lengths, bins, dtype = problem
    values = np.arange(1, sum(lengths) + 1, dtype=dtype)
    expected = reference_rows(values, lengths, bins, alignment, (rows, row_length), padding=-5)
    out = garbage((rows, row_length), dtype)
    seg = garbage((rows, row_length), np.int32)
    pos = garbage((rows, row_length), np.int32)
    kernels.scatter_rows(values, np.array(lengths, dtype=dtype), bins, out, alignment=alignment, padding=-5)
    kernels.pack_rows(lengths, bins, seg, pos, alignment=alignment)
    for got, want in zip((out, seg, pos), expected):
        np.testing.assert_array_equal(got, want)
    # The same items given one array each: copied in place, or joined when they differ.
    items = np.split(values, np.cumsum(lengths)[:-1]) if lengths else []
    for as_items in (items, [item.tolist() for item in items], [item.astype(np.int16) for item in items]):
        out = garbage((rows, row_length), dtype)
        kernels.scatter_rows(as_items, lengths, bins, out, alignment=alignment, padding=-5)
        np.testing.assert_array_equal(out, expected[0])


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
def test_scatter_other_dtypes_and_nd_features(backend, dtype):
    lengths, bins = [2, 3, 1], [1, 0, 1]
    values = np.arange(12, dtype=dtype).reshape(6, 2)  # a 2-d feature: 2 values per token
    out = garbage((2, 4, 2), dtype)
    kernels.scatter_rows(values, lengths, bins, out, padding=9)
    expected, _, _ = reference_rows(values, lengths, bins, 1, (2, 4, 2), padding=9)
    np.testing.assert_array_equal(out, expected)


def test_scatter_items_cast_and_broadcast_like_assignment(backend):
    """Per-item values follow NumPy assignment: scalars and broadcasts fill their cells."""
    out = garbage((2, 4), np.int32)
    kernels.scatter_rows([np.int64(7), np.array([1.9, 2.1]), np.array([5])], [1, 2, 3], [0, 0, 1], out)
    np.testing.assert_array_equal(out, [[7, 1, 2, 0], [5, 5, 5, 0]])
    with pytest.raises(ValueError, match="values"):
        kernels.scatter_rows([np.arange(3)], [2], [0], out)
    with pytest.raises(ValueError, match="one array per item"):
        kernels.scatter_rows([np.arange(2)], [2, 0], [0, 0], out)


def test_row_writers_accept_non_contiguous_inputs(backend):
    lengths = np.array([2, 0, 2, 0, 3, 0], dtype=np.int64)[::2]
    bins = np.array([[0, 1, 1]], dtype=np.int64).T[:, 0]  # a strided column
    values = np.arange(14, dtype=np.int32)[::2]
    out = np.zeros((2, 8), dtype=np.int32)
    kernels.scatter_rows(values, lengths, bins, out)
    np.testing.assert_array_equal(out[1, :5], [4, 6, 8, 10, 12])
    seg = np.zeros((2, 16), dtype=np.int32)[:, ::2]
    pos = np.zeros((2, 16), dtype=np.int32)[:, ::2]
    kernels.pack_rows(lengths, bins, seg, pos)
    np.testing.assert_array_equal(seg[1], [1, 1, 2, 2, 2, 0, 0, 0])
    np.testing.assert_array_equal(pos[1], [0, 1, 0, 1, 2, 0, 0, 0])


def test_overflowing_rows_raise_and_write_nothing(backend):
    out = np.zeros((1, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="item 1 .* does not fit row 0"):
        kernels.scatter_rows(np.arange(5), [2, 3], [0, 0], out)
    assert not out.any()
    seg = np.zeros((1, 4), dtype=np.int32)
    with pytest.raises(ValueError, match="item 1"):
        kernels.pack_rows([3, 1], [0, 0], seg, np.zeros_like(seg), alignment=2)
    assert not seg.any()


@pytest.mark.parametrize(
    "call, match, error",
    [
        (lambda o, s: kernels.scatter_rows(np.arange(3), [2, 2], [0, 0], o), "sum", ValueError),
        (lambda o, s: kernels.scatter_rows(np.arange(3), [-1, 4], [0, 0], o), "lengths", ValueError),
        (lambda o, s: kernels.scatter_rows(np.arange(3), [3], [2], o), "bins", ValueError),
        (lambda o, s: kernels.scatter_rows(np.arange(3), [1.5, 1.5], [0, 0], o), "lengths", TypeError),
        (lambda o, s: kernels.scatter_rows(np.arange(3), [[3]], [[0]], o), "lengths", ValueError),
        (lambda o, s: kernels.scatter_rows(np.arange(3), [3], [0, 1], o), "bins", ValueError),
        (lambda o, s: kernels.scatter_rows(np.arange(3), [3], [0], [[0, 0, 0]]), "out_values", ValueError),
        (lambda o, s: kernels.scatter_rows(np.arange(3), [3], [0], o, padding=2**70), "padding", ValueError),
        (lambda o, s: kernels.scatter_rows(np.arange(3), [3], [0], o, padding="x"), "padding", ValueError),
        (lambda o, s: kernels.pack_rows([1], [0], s.astype(np.int64), s), "out_segment_ids", TypeError),
        (lambda o, s: kernels.pack_rows([1], [0], s, s[:, :2]), "out_positions", ValueError),
        (lambda o, s: kernels.pack_rows([1], [0], s, s, alignment=0), "alignment", ValueError),
        (lambda o, s: kernels.pack_rows([1], [True], s, s), "bins", TypeError),
    ],
)
def test_row_writer_arguments_are_checked(backend, call, match, error):
    with pytest.raises(error, match=match):
        call(np.zeros((2, 4), dtype=np.int64), np.zeros((2, 4), dtype=np.int32))


@pytest.mark.skipif(_backend.compiled_module() is None, reason="compiled extension not built")
def test_compiled_row_writers_guard_their_own_bounds():
    """Even called directly, past the wrappers, the loops refuse out-of-range items."""
    compiled = _backend.compiled_module()
    out = np.zeros((2, 4), dtype=np.int64)
    seg = np.zeros((2, 4), dtype=np.int32)
    as_i64 = lambda x: np.array(x, dtype=np.int64)  # noqa: E731
    assert compiled.scatter_rows(as_i64([1, 2, 3]), as_i64([3]), as_i64([5]), 1, out, 0) == 0
    assert compiled.scatter_rows(as_i64([1, 2]), as_i64([3]), as_i64([0]), 1, out, 0) == 0
    assert compiled.scatter_rows(as_i64([1, 2]), as_i64([-2]), as_i64([0]), 1, out, 0) == 0
    assert compiled.scatter_item_rows([as_i64([1])], as_i64([1]), as_i64([2]), 1, out, 0) == 0
    assert compiled.scatter_item_rows([as_i64([1])], as_i64([2]), as_i64([0]), 1, out, 0) == -2
    assert compiled.pack_rows(as_i64([5]), as_i64([0]), 1, seg, seg.copy()) == 0
    assert not out.any() and not seg.any()


# ---------------------------------------------------------------------------------------
# Borders and shifts


@pytest.mark.parametrize(
    "segmentation, borders",
    [
        ([1, 1, 2, 2, 2, 3], [1, 0, 1, 0, 0, 1]),
        ([1, 1, 1, 1, 2, 2, 2, 0], [1, 0, 0, 0, 1, 0, 0, 1]),
        ([0, 0, 0], [1, 0, 0]),
        ([5], [1]),
    ],
)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.int8])
def test_document_borders_seed_examples(backend, segmentation, borders, dtype):
    result = kernels.document_borders(np.array([segmentation, segmentation], dtype=dtype))
    assert result.dtype == bool
    np.testing.assert_array_equal(result, np.array([borders, borders], dtype=bool))


@SETTINGS
@given(
    segmentation=st.lists(st.lists(st.integers(0, 3), min_size=5, max_size=5), min_size=0, max_size=4),
    dtype=st.sampled_from([np.int32, np.int64]),
)
def test_document_borders_definition(backend, segmentation, dtype):
    seg = np.array(segmentation, dtype=dtype).reshape(-1, 5)
    expected = np.ones(seg.shape, dtype=bool)
    expected[:, 1:] = seg[:, 1:] != seg[:, :-1]
    np.testing.assert_array_equal(kernels.document_borders(seg), expected)
    np.testing.assert_array_equal(kernels.document_borders(seg.T.copy().T), expected)


def test_document_borders_rejects_bad_input(backend):
    with pytest.raises(TypeError, match="segmentation"):
        kernels.document_borders(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="segmentation"):
        kernels.document_borders(np.zeros(3, dtype=np.int32))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
@pytest.mark.parametrize("length", [0, 1, 5])
def test_shifts(backend, dtype, length):
    rows = (np.arange(3 * length, dtype=dtype).reshape(3, length) + 1)[:, ::-1]  # not contiguous
    right = kernels.shift_right(rows, 7)
    left = kernels.shift_left(rows, 7)
    assert right.dtype == left.dtype == rows.dtype
    expected_right = np.concatenate([np.full((3, 1), 7, dtype), rows[:, :-1]], axis=1)[:, :length]
    expected_left = np.concatenate([rows[:, 1:], np.full((3, 1), 7, dtype)], axis=1)[:, -length:] if length else rows
    np.testing.assert_array_equal(right, expected_right)
    np.testing.assert_array_equal(left, expected_left)
    out = garbage(rows.shape, dtype)
    assert kernels.shift_right(rows, 7, out=out) is out
    np.testing.assert_array_equal(out, expected_right)
    assert kernels.shift_left(rows, 7, out=out) is out
    np.testing.assert_array_equal(out, expected_left)


def test_shift_out_is_checked(backend):
    rows = np.zeros((2, 3), dtype=np.int32)
    with pytest.raises(ValueError, match="out"):
        kernels.shift_right(rows, 0, out=np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="out"):
        kernels.shift_left(rows, 0, out=np.zeros((3, 2), dtype=np.int32))
    with pytest.raises(ValueError, match="overlap"):
        kernels.shift_left(rows, 0, out=rows)


def test_shift_fill_must_fit_the_dtype(backend):
    with pytest.raises(ValueError, match="fill"):
        kernels.shift_right(np.zeros((1, 3), dtype=np.int32), 2**40)
    with pytest.raises(ValueError, match="fill"):
        kernels.shift_left(np.zeros((1, 3), dtype=np.int32), 0.5)
    with pytest.raises(ValueError, match="rows"):
        kernels.shift_left(np.zeros(3, dtype=np.int32), 0)


@pytest.mark.skipif(_backend.compiled_module() is None, reason="compiled extension not built")
@pytest.mark.parametrize("algorithm", kernels.ALGORITHMS)
@pytest.mark.parametrize("num_features", [1, 2])
def test_backends_agree_with_4096_bins(algorithm, num_features):
    rng = np.random.default_rng(4096 + num_features)
    capacities = np.array([256, 192][:num_features])
    lengths = (rng.random((6000, num_features)) ** 3 * (capacities + 1)).astype(np.int64)
    results = []
    for module in (_backend.compiled_module(), _kernels_numpy):
        packer = module.BinPacker(capacities, np.ones(num_features, np.int64), 4096, 0, algorithm == "best_fit")
        out = np.full(len(lengths), -1, dtype=np.int64)
        results.append((packer.place(lengths, out), out, packer.used))
    assert results[0][0] == results[1][0] > 4096  # several items per bin on average
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[0][2], results[1][2])


# ---------------------------------------------------------------------------------------
# Robustness: whatever the arguments, a kernel succeeds or raises a documented error.

_small_ints = st.integers(-3, 12)
_arrays = st.one_of(
    st.lists(_small_ints, max_size=8).map(lambda v: np.array(v, dtype=np.int64)),
    st.lists(_small_ints, max_size=8).map(lambda v: np.array(v, dtype=np.int32)),
    st.lists(st.floats(-2, 9, allow_nan=False), max_size=4).map(np.array),
    st.lists(st.lists(_small_ints, min_size=2, max_size=2), max_size=4).map(lambda v: np.array(v, dtype=np.int64)),
    st.just(np.zeros((0,), np.int64)),
)


@SETTINGS
@given(
    values=_arrays,
    lengths=_arrays,
    bins=_arrays,
    shape=st.tuples(st.integers(0, 3), st.integers(0, 6)),
    alignment=st.integers(-1, 3),
    as_items=st.booleans(),
    dtype=st.sampled_from([np.int32, np.int64, np.float32]),
)
def test_row_writers_never_crash(backend, values, lengths, bins, shape, alignment, as_items, dtype):
    out = np.zeros(shape, dtype=dtype)
    seg = np.zeros(shape, dtype=np.int32)
    if as_items and lengths.ndim == 1 and lengths.dtype.kind == "i":
        values = [values[: max(int(n), 0)] for n in lengths]
    for call in (
        lambda: kernels.scatter_rows(values, lengths, bins, out, alignment=alignment),
        lambda: kernels.pack_rows(lengths, bins, seg, seg.copy(), alignment=alignment),
    ):
        try:
            call()
        except (ValueError, TypeError):
            pass


@SETTINGS
@given(
    capacities=st.lists(st.integers(1, 6), min_size=1, max_size=2),
    lengths=st.lists(st.lists(st.integers(-2, 8), min_size=1, max_size=3), max_size=10),
    num_bins=st.integers(1, 5),
    max_items=st.one_of(st.none(), st.integers(1, 3)),
    algorithm=st.sampled_from(kernels.ALGORITHMS),
)
def test_bin_packer_never_crashes(backend, capacities, lengths, num_bins, max_items, algorithm):
    packer = kernels.BinPacker(capacities, num_bins=num_bins, max_items_per_bin=max_items, algorithm=algorithm)
    for item in lengths:
        try:
            placed = packer.place_one(item)
        except ValueError:
            continue
        assert -1 <= placed < num_bins
    assert np.all(packer.used[:, packer.counts == 0] == 0)


# ---------------------------------------------------------------------------------------
# Issue 11's reproductions: each crashed, hung, wrote out of bounds or corrupted data.


def guarded(shape, dtype, fill=77):
    """(out, buffer): ``out`` lies inside ``buffer`` with guard cells on both sides."""
    size = int(np.prod(shape))
    buffer = np.full(size + 32, fill, dtype=dtype)
    return buffer[16 : 16 + size].reshape(shape), buffer


def assert_guards_intact(buffer, fill=77):
    assert (buffer[:16] == fill).all() and (buffer[-16:] == fill).all()


@pytest.mark.parametrize(
    "lengths",
    [[1, 2**63 - 1, 2**63 - 1, 3], [2**62, 2**62, 2**62, 2**62 + 2], [2, 2**63 - 1]],
)
def test_lengths_whose_sum_wraps_around_are_rejected(backend, lengths):
    out, buffer = guarded((2, 8), np.int32)
    with pytest.raises(ValueError, match=r"lengths: item [01] \(length \d+\) is longer than a row of 8 cells"):
        kernels.scatter_rows(np.array([1, 2], np.int32), lengths, [0] * len(lengths), out)
    as_items = [np.array([1], np.int32)] * len(lengths)
    with pytest.raises(ValueError, match="lengths: item [01]"):
        kernels.scatter_rows(as_items, lengths, [0] * len(lengths), out)
    assert_guards_intact(buffer)


def test_pack_rows_with_overflowing_lengths_raises(backend):
    seg, buffer = guarded((1, 8), np.int32)
    with pytest.raises(ValueError, match="lengths: item 1"):
        kernels.pack_rows([1, 2**63 - 1], [0, 0], seg, np.zeros((1, 8), np.int32))
    assert_guards_intact(buffer)


@pytest.mark.parametrize("alignment", [2**31, 2**62, 2**63 - 1])
@pytest.mark.parametrize("rows", [1, 5])
def test_huge_alignment_keeps_each_item_alone_in_its_row(backend, alignment, rows):
    """An alignment past the row's end closes the row after an item, like grain's."""
    seg, seg_buffer = guarded((rows, 9), np.int32)
    pos = np.zeros((rows, 9), np.int32)
    values, values_buffer = guarded((rows, 9), np.int64)
    kernels.pack_rows([2], [rows - 1], seg, pos, alignment=alignment)
    kernels.scatter_rows(np.array([5, 6]), [2], [rows - 1], values, alignment=alignment)
    assert seg[rows - 1].tolist() == [1, 1] + [0] * 7 and pos[rows - 1].tolist() == [0, 1] + [0] * 7
    assert values[rows - 1].tolist() == [5, 6] + [0] * 7
    # A second item in the same row, even an empty one, no longer fits.
    for lengths in ([2, 0], [2, 1]):
        with pytest.raises(ValueError, match="item 1 .* does not fit row"):
            kernels.pack_rows(lengths, [0, 0], seg, pos, alignment=alignment)
    kernels.pack_rows([0, 0, 3], [0, 0, 0], seg, pos, alignment=alignment)  # empty items stay put
    assert_guards_intact(seg_buffer)
    assert_guards_intact(values_buffer)


@pytest.mark.parametrize("algorithm", kernels.ALGORITHMS)
def test_bin_packer_with_huge_alignment_matches_grain_rule(backend, algorithm):
    """Clamped to capacity + 1, the alignment places as the unclamped rule in Python ints."""
    items = [(2, 1), (0, 1), (3, 1), (0, 0), (0, 2), (8, 0)]
    packer = kernels.BinPacker([8, 4], num_bins=4, alignments=[2**63 - 1, 1], algorithm=algorithm)
    reference = _kernels_numpy.BinPacker([8, 4], [2**63 - 1, 1], 4, 0, algorithm == "best_fit")
    assert [packer.place_one(item) for item in items] == [reference.place_one(item) for item in items]
    assert packer.alignments.tolist() == [9, 1]  # reported as capacity + 1


def test_big_endian_items_are_byte_swapped(backend):
    """Non-native byte order takes NumPy's casting path, whatever the fast path covers."""
    for out_dtype in (np.int32, np.int64, ">i4", ">i8"):
        out = np.empty((1, 6), out_dtype)
        items = [np.array([1, 2], np.int32), np.array([3, 4], ">i4"), np.array([5], ">i8")]
        kernels.scatter_rows(items, [2, 2, 1], [0, 0, 0], out, padding=-1)
        assert out.tolist() == [[1, 2, 3, 4, 5, -1]]
        kernels.scatter_rows(np.array([3, 4, 5], ">i8"), [2, 1], [0, 0], out)
        assert out.tolist() == [[3, 4, 5, 0, 0, 0]]
    swapped = np.array([[1, 1, 2], [3, 3, 3]], ">i4")
    assert kernels.document_borders(swapped).tolist() == [[1, 0, 1], [1, 0, 0]]
    assert kernels.shift_right(swapped, 9).tolist() == [[9, 1, 1], [9, 3, 3]]


def test_drop_in_packer_byte_swaps_big_endian_elements():
    from xbatch.packing import FirstFitPackIterDataset

    elements = [{"x": np.array([1, 2], np.int32)}, {"x": np.array([3, 4], ">i4")}]
    options = dict(length_struct={"x": 6}, num_packing_bins=2, shuffle_bins=False)
    ours = list(FirstFitPackIterDataset(grain.MapDataset.source(elements).to_iter_dataset(), **options))
    theirs = list(
        grain.experimental.FirstFitPackIterDataset(grain.MapDataset.source(elements).to_iter_dataset(), **options)
    )
    assert ours[0]["x"].tolist() == theirs[0]["x"].tolist() == [1, 2, 3, 4, 0, 0]


@pytest.mark.parametrize("num_bins", [2**31 - 1, 2**62])
@pytest.mark.parametrize("algorithm", kernels.ALGORITHMS)
def test_num_bins_costs_memory_only_for_bins_in_use(backend, num_bins, algorithm):
    import tracemalloc

    tracemalloc.start()
    try:
        packer = kernels.BinPacker(8, num_bins=num_bins, algorithm=algorithm)
        placed = [packer.place_one(8) for _ in range(1000)]
        packer.reset()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert placed == list(range(1000)) and peak < 1 << 20


@pytest.mark.parametrize("name", ["num_bins", "max_items_per_bin"])
def test_bin_packer_sizes_beyond_int64_headroom_are_rejected(backend, name):
    arguments = {"num_bins": 2, name: 2**62 + 1}
    with pytest.raises(ValueError, match=name):
        kernels.BinPacker(8, **arguments)
    with pytest.raises(ValueError, match="capacities"):
        kernels.BinPacker(2**62 + 1, num_bins=2)


@pytest.mark.parametrize("algorithm", kernels.ALGORITHMS)
def test_growing_bins_place_like_preallocated_bins(backend, algorithm):
    """Placement over 5,000 bins (grown from 256) equals grain's rule on the same items."""
    rng = np.random.default_rng(0)
    items = rng.integers(1, 40, size=(6000, 1))
    grown = kernels.BinPacker(40, num_bins=5000, algorithm=algorithm)
    out = np.zeros(6000, np.int64)
    placed = grown.place(items, out)
    reference = _kernels_numpy.BinPacker(np.array([40]), np.array([1]), 5000, 0, algorithm == "best_fit")
    reference._allocated = 5000  # the whole array from the start: the plain rule
    reference.reset()
    expected = np.zeros(6000, np.int64)
    assert placed == reference.place(items, expected)
    np.testing.assert_array_equal(out[:placed], expected[:placed])
    np.testing.assert_array_equal(grown.used, reference.used)


@pytest.mark.parametrize("algorithm", kernels.ALGORITHMS)
def test_sharing_a_packer_between_threads_raises_instead_of_crashing(backend, algorithm):
    """One thread places big batches (the compiled ``place`` releases the GIL), another
    calls into the same packer until it is turned away; neither may crash."""
    import threading
    import time

    packer = kernels.BinPacker(64, num_bins=4096, algorithm=algorithm)
    size = 20_000 if backend is _kernels_numpy else 1_000_000
    lengths = np.random.default_rng(1).integers(1, 64, size=(size, 1))
    errors, met = [], threading.Event()

    def place_many():
        while not met.is_set():
            try:
                packer.place(lengths, np.zeros(size, np.int64))
                packer.reset()
            except RuntimeError as exc:
                errors.append(exc)

    def poke():
        deadline = time.monotonic() + 20
        while not met.is_set() and time.monotonic() < deadline:
            for call in (lambda: packer.place_one(3), packer.reset):
                try:
                    call()
                except RuntimeError as exc:
                    errors.append(exc)
                    met.set()
        met.set()

    threads = [threading.Thread(target=place_many), threading.Thread(target=poke)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors, "the two threads never met inside the packer"
    assert all("another thread" in str(exc) for exc in errors)


def test_outputs_that_overlap_inputs_are_rejected(backend):
    buffer = np.zeros(40, np.int64)
    out = buffer[:16].reshape(2, 8)
    with pytest.raises(ValueError, match="values: must not share memory with out_values"):
        kernels.scatter_rows(buffer[4:8], [4], [1], out)
    with pytest.raises(ValueError, match=r"values \(item 1\): must not share memory"):
        kernels.scatter_rows([np.array([1, 2]), buffer[8:10]], [2, 2], [0, 0], out)
    with pytest.raises(ValueError, match=r"values \(item 0\): must not share memory"):
        kernels.scatter_rows([buffer[0:1], np.array([1, 2])], [1, 2], [0, 0], out)
    lengths = buffer[20:22]
    lengths[:] = [1, 1]
    with pytest.raises(ValueError, match="lengths: must not share memory"):
        kernels.scatter_rows(np.array([1, 2]), lengths, [0, 1], buffer[18:34].reshape(2, 8))
    seg = np.zeros((2, 8), np.int32)
    with pytest.raises(ValueError, match="out_positions: must not share memory with out_segment_ids"):
        kernels.pack_rows([1], [0], seg, seg[::-1])
    bins = np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="bins: must not share memory"):
        kernels.pack_rows(np.array([1, 1]), bins, bins.view(np.int32).reshape(1, 4), np.zeros((1, 4), np.int32))


@pytest.mark.parametrize(
    "lengths, expected",
    [(3, 0), ((3,), 0), ([3], 0), (np.int64(3), 0), (np.array(3), 0), (np.array([3]), 0),
     ((np.int32(3),), 0), ((2.9,), ValueError), (2.9, ValueError), ((True,), ValueError),
     (True, ValueError), ((2**70,), ValueError), ((-1,), ValueError), ((9,), ValueError),
     (np.array([3.0]), ValueError), ((3, 3), ValueError), ((), ValueError), ("3", ValueError),
     (None, ValueError)],
)
def test_place_one_accepts_and_refuses_the_same_on_both_backends(backend, lengths, expected):
    packer = kernels.BinPacker(8, num_bins=2)
    if expected is ValueError:
        with pytest.raises(ValueError, match="lengths"):
            packer.place_one(lengths)
        assert packer.num_used_bins == 0
    else:
        assert packer.place_one(lengths) == expected
