"""kernels.write_split_rows (concat-then-split's fused row writer) on both backends: rows
equal scatter_rows + pack_rows of the same plan, in chunks of rows too; the first piece it
cannot write is reported, never written past; bad arguments raise naming themselves.

Also run by CI against the bounds-checked build (XBATCH_CYTHON_DEBUG=1)."""

import itertools

import ml_dtypes
import numpy as np
import pytest

from xbatch import _backend, _kernels_numpy, kernels


def _random_stream(rng, dtype=np.int32, cell_shape=()):
    """(elements, the plan's arrays for feature "x", capacity) of a random stream."""
    capacity = int(rng.integers(1, 40))
    lengths = [int(rng.integers(0, 3 * capacity)) if rng.random() < 0.3 else int(rng.integers(0, capacity + 1))
               for _ in range(int(rng.integers(0, 60)))]
    elements = [
        {"x": (rng.integers(-100, 100, (n, *cell_shape)) * 1.25).astype(dtype), "other": np.zeros(1)}
        for n in lengths
    ]
    plan = kernels.concat_then_split(lengths, capacity)
    return elements, plan, capacity


def _reference(elements, plan, capacity, dtype, cell_shape=()):
    """The rows through scatter_rows and pack_rows, the general path."""
    values = [elements[i]["x"][s : s + n] for i, s, n in zip(plan.item, plan.start[:, 0], plan.length[:, 0])]
    out = np.empty((plan.rows, capacity, *cell_shape), dtype)
    segment_ids = np.empty((plan.rows, capacity), np.int32)
    positions = np.empty((plan.rows, capacity), np.int32)
    if plan.rows:
        kernels.scatter_rows(values, plan.length[:, 0], plan.row, out)
        kernels.pack_rows(plan.length[:, 0], plan.row, segment_ids, positions)
    return out, segment_ids, positions


def _write(elements, plan, capacity, dtype, cell_shape=(), chunk=None, meta=False):
    """The rows through write_split_rows, ``chunk`` rows per call (default: one call)."""
    out = np.full((plan.rows, capacity, *cell_shape), 77, dtype)
    ids = None if meta else np.full((plan.rows, 2, capacity), 77, np.int32)
    chunk = chunk or max(plan.rows, 1)
    for start in range(0, plan.rows, chunk):
        end = min(start + chunk, plan.rows)
        a, b = np.searchsorted(plan.row, (start, end))
        failed = kernels.write_split_rows(
            elements, "x", plan.item[a:b], plan.row[a:b], plan.start[a:b, 0], plan.length[a:b, 0],
            out[start:end], None if meta else ids[start:end], first_row=start,
        )
        assert failed == -1
    return out, ids


@pytest.mark.parametrize("seed", range(24))
def test_rows_equal_scatter_and_pack_rows(backend, seed):
    rng = np.random.default_rng(seed)
    dtype = [np.int32, np.int64, np.float32, ml_dtypes.bfloat16, np.dtype(">i4"), np.uint8][seed % 6]
    cell_shape = () if seed % 4 else (int(rng.integers(1, 4)),)
    elements, plan, capacity = _random_stream(rng, dtype, cell_shape)
    expected, segment_ids, positions = _reference(elements, plan, capacity, np.dtype(dtype), cell_shape)
    for chunk in (None, 1, int(rng.integers(1, 5))):
        out, ids = _write(elements, plan, capacity, dtype, cell_shape, chunk)
        np.testing.assert_array_equal(out.view(np.uint8), expected.view(np.uint8))
        np.testing.assert_array_equal(ids[:, 0], segment_ids)
        np.testing.assert_array_equal(ids[:, 1], positions)
    out, _ = _write(elements, plan, capacity, dtype, cell_shape, meta=True)
    np.testing.assert_array_equal(out.view(np.uint8), expected.view(np.uint8))


@pytest.mark.parametrize("seed", range(12))
def test_backends_agree_on_the_first_piece_they_cannot_write(seed):
    """A piece of another dtype, a list, a missing key, a slice past its array or past its
    row: both backends stop at the same piece and write nothing outside the rows."""
    compiled = _backend.compiled_module()
    if compiled is None:
        pytest.skip("the compiled extension is not built")
    rng = np.random.default_rng(seed)
    elements, plan, capacity = _random_stream(rng)
    if len(plan.item) == 0:
        return
    p = int(rng.integers(0, len(plan.item)))
    starts, cells = plan.start[:, 0].copy(), plan.length[:, 0].copy()
    item = int(plan.item[p])
    kind = seed % 5
    if kind == 0:
        elements[item] = {"x": elements[item]["x"].astype(np.int64)}
    elif kind == 1:
        elements[item] = {"x": elements[item]["x"].tolist()}
    elif kind == 2:
        elements[item] = {"y": elements[item]["x"]}
    elif kind == 3:
        starts[p] = len(elements[item]["x"]) + 1
    else:
        cells[p] = capacity + 1
    results = []
    for module in (compiled, _kernels_numpy):
        buffer = np.full((plan.rows + 2) * capacity, -5, np.int32)
        out = buffer[capacity : -capacity].reshape(plan.rows, capacity)
        ids = np.zeros((plan.rows, 2, capacity), np.int32)
        saved, _backend.impl = _backend.impl, module
        try:
            results.append(kernels.write_split_rows(elements, "x", plan.item, plan.row, starts, cells, out, ids))
        finally:
            _backend.impl = saved
        assert (buffer[:capacity] == -5).all() and (buffer[-capacity:] == -5).all()
    # A changed element stops at its first piece; a changed slice at that piece.
    expected = int(np.flatnonzero(plan.item == item)[0]) if kind < 3 else p
    assert results == [expected, expected]


def test_piece_sharing_memory_with_the_rows_is_not_written(backend):
    out = np.zeros((2, 8), np.int32)
    elements = [{"x": np.arange(3, dtype=np.int32)}, {"x": out[0, 4:]}]
    plan = kernels.concat_then_split([3, 4], 8)
    assert kernels.write_split_rows(elements, "x", plan.item, plan.row, plan.start[:, 0], plan.length[:, 0], out[:1]) == 1


def test_rows_without_pieces_are_zero(backend):
    elements = [{"x": np.arange(1, 4, dtype=np.int32)}]
    out = np.full((3, 5), 9, np.int32)
    ids = np.full((3, 2, 5), 9, np.int32)
    assert kernels.write_split_rows(elements, "x", [0, 0], [1, 1], [0, 2], [2, 0], out, ids) == -1
    assert out.tolist() == [[0] * 5, [1, 2, 0, 0, 0], [0] * 5]
    assert ids[:, 0].tolist() == [[0] * 5, [1, 1, 0, 0, 0], [0] * 5]  # the empty piece is segment 2
    assert ids[:, 1].tolist() == [[0] * 5, [0, 1, 0, 0, 0], [0] * 5]


def _args(**changes):
    elements = [{"x": np.arange(4, dtype=np.int32)}]
    args = dict(
        elements=elements, key="x", items=[0, 0], rows=[0, 1], starts=[0, 2], cells=[2, 2],
        out_values=np.zeros((2, 4), np.int32), out_ids=np.zeros((2, 2, 4), np.int32),
    )
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "changes, error, match",
    [
        (dict(elements=({"x": np.arange(4)},)), TypeError, "elements"),
        (dict(key=("x",)), TypeError, "key"),
        (dict(items=[0, 1]), ValueError, "items: piece 1 names element 1"),
        (dict(items=[0, -1]), ValueError, "items: piece 1"),
        (dict(rows=[1, 0]), ValueError, "rows: piece 1"),
        (dict(rows=[0, 2]), ValueError, "rows: piece 1"),
        (dict(rows=[-1, 0]), ValueError, "rows: piece 0"),
        (dict(starts=[0, -1]), ValueError, "starts, cells: piece 1"),
        (dict(cells=[-2, 2]), ValueError, "starts, cells: piece 0"),
        (dict(cells=[2]), ValueError, "cells: expected 2 entries"),
        (dict(items=[0.5, 0]), TypeError, "items"),
        (dict(out_values=np.zeros((2, 4), object)), ValueError, "out_values"),
        (dict(out_values=np.zeros((4, 4), np.int32)[::2]), ValueError, "out_values"),
        (dict(out_values=np.zeros(8, np.int32)), ValueError, "out_values"),
        (dict(out_ids=np.zeros((2, 2, 3), np.int32)), ValueError, "out_ids"),
        (dict(out_ids=np.zeros((2, 2, 4), np.int64)), ValueError, "out_ids"),
        (dict(first_row=-1), ValueError, "first_row"),
    ],
)
def test_bad_arguments_name_themselves(backend, changes, error, match):
    args = _args(**changes)
    with pytest.raises(error, match=match):
        kernels.write_split_rows(**args)


def test_outputs_sharing_memory_are_refused(backend):
    block = np.zeros(3 * 2 * 4, np.int32)
    with pytest.raises(ValueError, match="out_ids"):
        kernels.write_split_rows(**_args(out_values=block[:8].reshape(2, 4), out_ids=block[:16].reshape(2, 2, 4)))
    rows = np.zeros(16, np.int64)
    with pytest.raises(ValueError, match="rows"):
        kernels.write_split_rows(**_args(rows=rows[:2], out_values=rows[:8].reshape(2, 4), out_ids=None))


def test_first_row_offsets_the_rows(backend):
    args = _args(rows=[5, 6], first_row=5)
    assert kernels.write_split_rows(**args) == -1
    assert args["out_values"].tolist() == [[0, 1, 0, 0], [2, 3, 0, 0]]
    with pytest.raises(ValueError, match="rows: piece 0 has row 5"):
        kernels.write_split_rows(**_args(rows=[5, 6], first_row=6))


# --- kernels.element_lengths: the lengths the iterator plans with ---------------------------


def _lengths_reference(elements, keys, start):
    """The definition, stated apart from the twin: lengths of the leading regular elements."""

    def regular(element):
        return (type(element) is dict and len(element) == len(keys)
                and all(type(element.get(key)) is np.ndarray and element[key].ndim >= 1 for key in keys))

    return [element[key].shape[0] for element in itertools.takewhile(regular, elements[start:]) for key in keys]


@pytest.mark.parametrize("seed", range(12))
def test_element_lengths_stop_at_the_first_irregular_element(backend, seed):
    rng = np.random.default_rng(seed)
    keys = ["a", "b"][: 1 + seed % 2]
    irregular = [
        lambda: 5,
        lambda: {k: 5 for k in keys},
        lambda: {k: np.array(5) for k in keys},
        lambda: {k: [1, 2] for k in keys},
        lambda: {**{k: np.arange(2) for k in keys}, "extra": np.arange(1)},
        lambda: {"other": np.arange(2)} if len(keys) == 1 else {"a": np.arange(2), "c": np.arange(3)},
        lambda: np.arange(3),
    ]
    elements = []
    for _ in range(int(rng.integers(0, 30))):
        if rng.random() < 0.15:
            elements.append(irregular[int(rng.integers(0, len(irregular)))]())
        else:
            elements.append({k: np.zeros((int(rng.integers(0, 50)), *([2] if rng.random() < 0.2 else [])), np.int32) for k in keys})
    for start in range(len(elements) + 1):
        assert kernels.element_lengths(elements, keys, start) == _lengths_reference(elements, keys, start)


@pytest.mark.parametrize(
    "args, error, match",
    [
        (([{"a": np.arange(2)}], ["a"], -1), ValueError, "start"),
        (({"a": np.arange(2)}, ["a"], 0), TypeError, "elements"),
        (([{"a": np.arange(2)}], [("a",)], 0), TypeError, "keys"),
    ],
)
def test_element_lengths_arguments_are_checked(backend, args, error, match):
    with pytest.raises(error, match=match):
        kernels.element_lengths(*args)


def test_element_lengths_start_past_the_end_reads_nothing(backend):
    assert kernels.element_lengths([{"a": np.arange(2)}], ["a"], 5) == []
