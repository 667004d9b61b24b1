"""xbatch's ConcatThenSplitIterDataset against grain's, the oracle, row by row; grain's own
test module run against xbatch's class; the planning kernel on both backends."""

import functools
import importlib
import json
import pickle
import unittest

import grain
import ml_dtypes
import numpy as np
import pytest

from xbatch import _kernels_numpy, kernels
from xbatch.packing import ConcatThenSplitIterDataset
from xbatch.packing import concat_then_split as cts_module

BOS = grain.experimental.BOSHandling
NO_PREFETCH = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
GRAIN_TEST_MODULE = "grain._src.python.dataset.transformations.packing_concat_then_split_test"


def _iter_dataset(docs):
    return grain.MapDataset.source(docs).to_iter_dataset(NO_PREFETCH)


def _rows_until_error(dataset, limit: int = 400) -> tuple[list, BaseException | None]:
    """The first ``limit`` rows (grain's rules can cut an element into rows without end)
    and the error that ended them, if any."""
    rows, iterator = [], iter(dataset)
    while len(rows) < limit:
        try:
            rows.append(next(iterator))
        except StopIteration:
            return rows, None
        except Exception as exc:  # noqa: BLE001 - compared with the other side's error
            return rows, exc
    return rows, None


def assert_same_rows(expected: list, actual: list) -> None:
    """Same rows, same keys in the same order, same dtypes, shapes and values."""
    assert len(actual) == len(expected)
    for i, (want, got) in enumerate(zip(expected, actual)):
        assert list(got) == list(want), f"row {i}"
        for key, value in want.items():
            assert got[key].dtype == value.dtype, f"row {i} key {key}"
            assert got[key].shape == value.shape, f"row {i} key {key}"
            np.testing.assert_array_equal(got[key], value, err_msg=f"row {i} key {key}")


# --- grain's own test module, with xbatch's class in place of grain's ------------------


def _grain_test_case():
    """grain's shipped ConcatThenSplitIterDataset tests (a unittest TestCase class)."""
    module = importlib.import_module(GRAIN_TEST_MODULE)
    return module, module.ConcatThenSplitIterDatasetTest


def _grain_test_names() -> list[str]:
    _, case = _grain_test_case()
    return unittest.defaultTestLoader.getTestCaseNames(case)


class _CountingDataset(ConcatThenSplitIterDataset):
    """xbatch's class, counting its instances: proof that the substitution took."""

    created = 0

    def __init__(self, *args, **kwargs):
        type(self).created += 1
        super().__init__(*args, **kwargs)


def test_grain_test_module_is_shipped_and_has_cases():
    module, _ = _grain_test_case()
    assert module.__file__.endswith("packing_concat_then_split_test.py")
    assert len(_grain_test_names()) >= 80  # 91 in grain 0.2.18


@pytest.mark.parametrize("name", _grain_test_names())
def test_grain_test_module_passes_with_xbatch_class(backend, monkeypatch, name):
    module, case = _grain_test_case()
    shim = type(
        "XbatchInPlaceOfGrain",
        (),
        {"ConcatThenSplitIterDataset": _CountingDataset, "BOSHandling": BOS},
    )
    monkeypatch.setattr(module, "packing_concat_then_split", shim)
    before = _CountingDataset.created
    result = unittest.TestResult()
    case(name).run(result)
    problems = [text for _, text in result.errors + result.failures]
    assert not problems, "\n".join(problems)
    assert not result.skipped
    assert _CountingDataset.created > before, "the grain test did not build xbatch's class"


# --- random streams against grain --------------------------------------------------------


def _random_case(seed: int):
    """A random stream and constructor arguments over several feature layouts."""
    rng = np.random.default_rng(seed)
    layout = ["one", "two", "meta", "scalars", "dtypes", "matrix"][seed % 6]
    caps = {"inputs": int(rng.integers(1, 24))}
    meta: list[str] = []
    if layout in ("two", "meta", "scalars", "matrix"):
        caps["targets"] = int(rng.integers(1, 24))
    if layout == "meta":
        caps["mask"] = int(rng.integers(4, 30))
        caps["index"] = int(rng.integers(1, 6))
        meta = ["mask", "index"]
    if layout == "scalars":
        caps["weight"] = int(rng.integers(1, 4))
        if rng.random() < 0.5:
            caps["index"] = int(rng.integers(2, 8))
            meta = ["index"]
    if layout == "matrix":
        caps["embedding"] = int(rng.integers(1, 24))
    long_share = rng.random()  # how often a document is longer than its row
    int_dtype = rng.choice([np.int32, np.int64])

    def length(cap):
        if rng.random() < 0.1:
            return 0
        if rng.random() < 0.15:
            return cap  # full-length documents exercise split_full_length_features
        return int(rng.integers(1, 3 * cap + 1)) if rng.random() < long_share else int(rng.integers(1, cap + 1))

    def doc(index):
        element = {}
        for key, cap in caps.items():
            if key == "index":
                element[key] = index + 1  # a Python scalar meta feature, one cell
            elif key == "weight":
                element[key] = np.float32(rng.random()) if index % 2 else int(rng.integers(1, 9))
            elif key == "mask":
                element[key] = np.ones(int(rng.integers(0, cap + 1)), dtype=bool)
            elif key == "embedding":
                element[key] = rng.random((length(cap), 3)).astype(np.float32)
            else:
                element[key] = rng.integers(1, 1000, length(cap)).astype(int_dtype)
        if layout == "dtypes":  # rows take the dtype of their first piece
            kind = index % 4
            if kind == 1:
                element["inputs"] = element["inputs"].astype(ml_dtypes.bfloat16)
            elif kind == 2:
                element["inputs"] = element["inputs"] * 1.5
            elif kind == 3:
                element["inputs"] = element["inputs"].tolist()  # a Python list
        return element

    docs = [doc(i) for i in range(int(rng.integers(0, 120)))]
    kwargs = dict(length_struct=caps, meta_features=meta, split_full_length_features=bool(rng.random() < 0.5))
    if rng.random() < 0.4:
        bos_features = [k for k in ("inputs", "targets") if k in caps and rng.random() < 0.8]
        kwargs.update(
            bos_handling=BOS.REPLACE_FIRST_TOKEN_WITH_BOS, bos_features=bos_features, bos_token_id=int(rng.integers(0, 5))
        )
    return docs, kwargs


ERROR_TYPES = {IndexError: IndexError, ValueError: ValueError}


def _check_against_grain(docs, kwargs):
    expected, grain_error = _rows_until_error(grain.experimental.ConcatThenSplitIterDataset(_iter_dataset(docs), **kwargs))
    actual, xbatch_error = _rows_until_error(ConcatThenSplitIterDataset(_iter_dataset(docs), **kwargs))
    if grain_error is None:
        assert xbatch_error is None, repr(xbatch_error)
        assert_same_rows(expected, actual)
        return "rows"
    # Where grain raises, xbatch raises too: the same type (grain's internal error for a
    # meta feature longer than its row is a ValueError here), possibly before some rows.
    assert xbatch_error is not None, f"grain raised {grain_error!r}, xbatch did not"
    wanted = ERROR_TYPES.get(type(grain_error), ValueError)
    assert isinstance(xbatch_error, wanted), f"grain: {grain_error!r}, xbatch: {xbatch_error!r}"
    assert_same_rows(expected[: len(actual)], actual)
    return "error"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("seed", range(60))
def test_rows_match_grain_on_random_streams(backend, seed):
    _check_against_grain(*_random_case(seed))


@pytest.mark.parametrize("window", [1, 2, 5])
@pytest.mark.parametrize("seed", range(0, 60, 7))
def test_small_windows_match_grain(backend, monkeypatch, window, seed):
    """Windows shorter than a row: elements wait, rows span several plans."""
    monkeypatch.setattr(cts_module, "WINDOW_ITEMS", window)
    _check_against_grain(*_random_case(seed))


@pytest.mark.parametrize("chunk_cells", [1, 40])
@pytest.mark.parametrize("seed", range(0, 60, 5))
def test_rows_written_in_small_chunks_match_grain(backend, monkeypatch, chunk_cells, seed):
    """Rows written a few at a time (1 row, or about 40 cells, per chunk): chunks of the
    fused writer and of the general path (other dtypes, scalars) mix within a window."""
    monkeypatch.setattr(cts_module, "CHUNK_CELLS", chunk_cells)
    _check_against_grain(*_random_case(seed))


@pytest.mark.parametrize("seed", range(0, 60, 6))
def test_windows_cut_by_the_row_budget_match_grain(backend, monkeypatch, seed):
    """Pulling stops once the window's elements fill about one row (batches of 2)."""
    monkeypatch.setattr(cts_module, "WINDOW_PULL_ROWS", 1)
    monkeypatch.setattr(cts_module, "PULL_BATCH", 2)
    _check_against_grain(*_random_case(seed))


def test_long_documents_keep_few_elements_pulled(backend, monkeypatch):
    monkeypatch.setattr(cts_module, "WINDOW_PULL_ROWS", 4)
    monkeypatch.setattr(cts_module, "PULL_BATCH", 1)
    pulled = []
    docs = [{"inputs": np.arange(30) + i} for i in range(100)]
    parent = grain.MapDataset.source(docs).map(lambda d: pulled.append(1) or d).to_iter_dataset(NO_PREFETCH)
    iterator = iter(ConcatThenSplitIterDataset(parent, length_struct={"inputs": 10}))
    next(iterator)
    assert len(pulled) <= 3  # 2 documents fill 6 rows >= 4; WINDOW_ITEMS would be 8,192
    expected = list(grain.experimental.ConcatThenSplitIterDataset(_iter_dataset(docs), length_struct={"inputs": 10}))
    assert_same_rows(expected[1:], list(iterator))


def test_random_cases_cover_rows_and_errors():
    outcomes = {_check_against_grain(*_random_case(seed)) for seed in range(60)}
    assert outcomes == {"rows", "error"}


def test_long_document_and_cut_feature_quirk_match_grain(backend):
    """A feature that was not cut comes back whole two rows later, as in grain."""
    docs = [{"inputs": np.arange(25), "targets": np.arange(3) + 100}, {"inputs": np.arange(4), "targets": np.arange(2)}]
    kwargs = dict(length_struct={"inputs": 10, "targets": 10})
    rows = list(ConcatThenSplitIterDataset(_iter_dataset(docs), **kwargs))
    assert rows[2]["targets"][:3].tolist() == [100, 101, 102]  # grain repeats it
    _check_against_grain(docs, kwargs)


@pytest.mark.parametrize("split_full_length", [True, False])
def test_single_feature_is_the_stream_cut_into_rows(backend, split_full_length):
    rng = np.random.default_rng(5)
    docs = [{"tokens": rng.integers(1, 9, n).astype(np.int32)} for n in rng.integers(1, 40, 300)]
    rows = list(ConcatThenSplitIterDataset(_iter_dataset(docs), length_struct={"tokens": 16}))
    stream = np.concatenate([d["tokens"] for d in docs])
    got = np.concatenate([r["tokens"] for r in rows])
    np.testing.assert_array_equal(got[: stream.size], stream)
    assert not got[stream.size :].any() and len(rows) == -(-stream.size // 16)
    _check_against_grain(docs, dict(length_struct={"tokens": 16}, split_full_length_features=split_full_length))


def test_meta_feature_longer_than_its_row_raises(backend):
    docs = [{"inputs": np.arange(3), "index": np.arange(2)}, {"inputs": np.arange(2), "index": np.arange(9)}]
    ds = ConcatThenSplitIterDataset(_iter_dataset(docs), length_struct={"inputs": 4, "index": 4}, meta_features=["index"])
    iterator = iter(ds)
    assert next(iterator)["inputs"].tolist() == [0, 1, 2, 0]
    with pytest.raises(ValueError, match="'index' has 9 cells, length_struct\\['index'\\] is 4"):
        next(iterator)
    with pytest.raises(Exception):  # grain's own error (an internal one) at the same row
        rows = iter(grain.experimental.ConcatThenSplitIterDataset(_iter_dataset(docs), length_struct={"inputs": 4, "index": 4}, meta_features=["index"]))
        next(rows)
        next(rows)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bos_token_id=1), "bos_handling"),
        (dict(bos_features=["a"]), "bos_handling"),
        (dict(bos_handling=BOS.REPLACE_FIRST_TOKEN_WITH_BOS), "bos_token_id must be set"),
        (dict(bos_handling=BOS.REPLACE_FIRST_TOKEN_WITH_BOS, bos_token_id=1, bos_features=["a"], meta_features=["a"]), "overlap"),
    ],
)
def test_bos_arguments_raise_grains_errors(kwargs, match):
    for cls in (grain.experimental.ConcatThenSplitIterDataset, ConcatThenSplitIterDataset):
        with pytest.raises(ValueError, match=match):
            cls(_iter_dataset([]), length_struct={"a": 4}, **kwargs)


@pytest.mark.parametrize("length_struct", [{"a": 0}, {"a": -2}, {"a": 2.5}, {}, (4,)])
def test_invalid_length_struct_names_the_argument(length_struct):
    with pytest.raises(ValueError, match="length_struct"):
        ConcatThenSplitIterDataset(_iter_dataset([]), length_struct=length_struct)


@pytest.mark.parametrize("element", [np.arange(3), {"a": np.arange(3), "b": np.arange(2)}, {"b": np.arange(2)}])
def test_elements_of_another_structure_raise_grains_error(backend, element):
    for cls in (grain.experimental.ConcatThenSplitIterDataset, ConcatThenSplitIterDataset):
        with pytest.raises(ValueError, match="Parent elements? (has structure|must be unnested)"):
            list(cls(_iter_dataset([element]), length_struct={"a": 4}))


# --- checkpoints, pickling, worker processes --------------------------------------------


@functools.cache
def _checkpoint_cases(count: int = 8) -> list:
    """Short random streams (every layout) that end without an error. The checker
    restores at every row and runs to the end: quadratic in the rows."""
    cases, seed = [], 0
    while len(cases) < count:
        docs, kwargs = _random_case(seed)
        docs = docs[:30]
        rows, error = _rows_until_error(grain.experimental.ConcatThenSplitIterDataset(_iter_dataset(docs), **kwargs))
        if error is None and len(rows) < 60:
            cases.append((docs, kwargs))
        seed += 1
    return cases


@pytest.mark.parametrize("case", range(8))
def test_restores_exactly_with_grains_checker(backend, monkeypatch, case):
    monkeypatch.setattr(cts_module, "WINDOW_ITEMS", 3 if case % 2 else 1024)
    if case % 4 == 2:  # rows written a chunk of two at a time: restores land mid-window
        monkeypatch.setattr(cts_module, "CHUNK_CELLS", 2 * sum(_checkpoint_cases()[case][1]["length_struct"].values()))
    if case % 4 == 0:  # windows cut by the row budget
        monkeypatch.setattr(cts_module, "WINDOW_PULL_ROWS", 2)
        monkeypatch.setattr(cts_module, "PULL_BATCH", 3)
    docs, kwargs = _checkpoint_cases()[case]
    grain.experimental.assert_equal_output_after_checkpoint(ConcatThenSplitIterDataset(_iter_dataset(docs), **kwargs))


def test_endless_stream_restores_exactly(backend, monkeypatch):
    """grain's rules cut this element into rows without end; windows cap the rows."""
    monkeypatch.setattr(cts_module, "WINDOW_ROWS", 3)
    docs = [{"inputs": np.arange(7), "targets": np.arange(18)}, {"inputs": np.arange(22), "targets": np.arange(11)}]
    kwargs = dict(length_struct={"inputs": 6, "targets": 4})
    expected, _ = _rows_until_error(grain.experimental.ConcatThenSplitIterDataset(_iter_dataset(docs), **kwargs), 60)
    ds = ConcatThenSplitIterDataset(_iter_dataset(docs), **kwargs)
    actual, _ = _rows_until_error(ds, 60)
    assert len(expected) == 60
    assert_same_rows(expected, actual)
    iterator = iter(ds)
    for _ in range(25):
        next(iterator)
    restored = iter(ds)
    restored.set_state(iterator.get_state())
    assert_same_rows(expected[25:40], [next(restored) for _ in range(15)])


@pytest.mark.parametrize("chunk_cells", [1 << 16, 24])
def test_state_is_small_json_and_restores_in_a_fresh_iterator(backend, monkeypatch, chunk_cells):
    monkeypatch.setattr(cts_module, "WINDOW_ITEMS", 4)
    monkeypatch.setattr(cts_module, "CHUNK_CELLS", chunk_cells)
    docs = [{"inputs": np.arange(n) + 1, "targets": np.arange(n % 5)} for n in range(1, 30)]
    ds = ConcatThenSplitIterDataset(_iter_dataset(docs), length_struct={"inputs": 16, "targets": 8})
    expected = list(ds)
    iterator = iter(ds)
    for step in range(len(expected)):
        state = iterator.get_state()
        assert set(state) == {"parent", "skip", "slices", "next_row", "xbatch"}
        assert len(json.dumps(state)) < 600 and 0 <= state["skip"] <= 8
        restored = iter(ds)
        restored.set_state(json.loads(json.dumps(state)))
        assert_same_rows(expected[step:], list(restored))
        assert_same_rows([expected[step]], [next(iterator)])
    final = iterator.get_state()
    with pytest.raises(StopIteration):
        next(iterator)
    assert iterator.get_state() == final


@pytest.mark.parametrize(
    "other",
    [
        dict(length_struct={"inputs": 16, "targets": 9}),
        dict(length_struct={"inputs": 16, "targets": 8}, split_full_length_features=False),
        dict(length_struct={"inputs": 16, "targets": 8}, meta_features=["targets"]),
        dict(length_struct={"inputs": 16, "targets": 8}, bos_handling=BOS.REPLACE_FIRST_TOKEN_WITH_BOS, bos_token_id=1),
    ],
)
def test_state_from_other_arguments_is_refused(other):
    docs = [{"inputs": np.arange(n) + 1, "targets": np.arange(n % 5)} for n in range(1, 30)]
    saved = iter(ConcatThenSplitIterDataset(_iter_dataset(docs), length_struct={"inputs": 16, "targets": 8}))
    next(saved)
    restored = iter(ConcatThenSplitIterDataset(_iter_dataset(docs), **other))
    with pytest.raises(ValueError, match="different arguments"):
        restored.set_state(saved.get_state())


def test_pickled_dataset_packs_the_same(backend):
    docs, kwargs = _random_case(1)
    ds = ConcatThenSplitIterDataset(_iter_dataset(docs), **kwargs)
    assert_same_rows(list(ds), list(pickle.loads(pickle.dumps(ds))))


def test_mp_prefetch_matches_grain():
    """Worker processes (each packs its shard; they pick their backend themselves)
    deliver grain's rows in grain's order."""
    docs = [{"inputs": np.arange(i * 10, i * 10 + 1 + i % 23)} for i in range(200)]
    kwargs = dict(length_struct={"inputs": 32})
    options = grain.MultiprocessingOptions(num_workers=2)
    rows = [
        list(cls(grain.MapDataset.source(docs).to_iter_dataset(), **kwargs).mp_prefetch(options))
        for cls in (grain.experimental.ConcatThenSplitIterDataset, ConcatThenSplitIterDataset)
    ]
    assert len(rows[0]) > 50
    assert_same_rows(*rows)


# --- the planning kernel -----------------------------------------------------------------


def _random_plan_args(rng):
    n, num_features = int(rng.integers(0, 60)), int(rng.integers(1, 4))
    caps = rng.integers(1, 12, num_features)
    lengths = rng.integers(0, 30, (n, num_features))
    meta = rng.random(num_features) < 0.3
    lengths[:, meta] = np.minimum(lengths[:, meta], caps[meta] + (rng.random() < 0.2))
    scalar = rng.random((n, num_features)) < 0.1
    lengths[scalar] = 1
    return dict(lengths=lengths, capacities=caps, meta=meta, scalar=scalar, split_full_length=bool(rng.random() < 0.5))


def _plan_fields(plan):
    return [np.asarray(x).tolist() for x in plan]


@pytest.mark.parametrize("seed", range(30))
def test_kernel_backends_agree(seed):
    args = _random_plan_args(np.random.default_rng(seed))
    compiled = kernels._backend.compiled_module()
    if compiled is None:
        pytest.skip("the compiled extension is not built")
    results = []
    for module in (compiled, _kernels_numpy):
        kernels._backend.impl, saved = module, kernels._backend.impl
        try:
            # max_rows: grain's rules cut some items of several features without end
            results.append(_plan_fields(kernels.concat_then_split(**args, final=bool(seed % 2), max_rows=300)))
        finally:
            kernels._backend.impl = saved
    assert results[0] == results[1]


@pytest.mark.parametrize("seed", range(30))
def test_kernel_plans_the_same_in_chunks(backend, seed):
    """Planning a stream piecewise (carry, consumed, a row cap) gives the one-call plan."""
    rng = np.random.default_rng(seed)
    args = _random_plan_args(rng)
    whole = kernels.concat_then_split(**args, max_rows=300)
    lengths, scalar = args["lengths"], args["scalar"]
    pieces, rows, offset, carry, pulled = [], 0, 0, None, 0
    while rows < whole.rows:
        pulled = min(len(lengths), pulled + int(rng.integers(1, 6)))
        final = pulled == len(lengths)
        plan = kernels.concat_then_split(
            **{**args, "lengths": lengths[offset:pulled], "scalar": scalar[offset:pulled]},
            carry=carry,
            final=final,
            max_rows=int(rng.integers(1, 20)),
        )
        for item, row, start, length in zip(plan.item, plan.row, plan.start, plan.length):
            pieces.append((item + offset, row + rows, start.tolist(), length.tolist()))
        rows += plan.rows
        if plan.status:
            assert whole.status and whole.consumed == offset + plan.consumed
            break
        offset, carry = offset + plan.consumed, plan.carry
        if final and offset == len(lengths):
            break
    expected = [(i, r, s.tolist(), n.tolist()) for i, r, s, n in zip(whole.item, whole.row, whole.start, whole.length)]
    shared = min(rows, whole.rows)
    assert [p for p in pieces if p[1] < shared] == [p for p in expected if p[1] < shared]
    assert rows >= whole.rows or whole.status or shared == rows


def test_kernel_single_feature_cuts_every_row_length(backend):
    plan = kernels.concat_then_split([7, 25, 0, 3], 10)
    assert plan.item.tolist() == [0, 1, 1, 1, 1, 2, 3]
    assert plan.row.tolist() == [0, 0, 1, 2, 3, 3, 3]
    assert plan.start[:, 0].tolist() == [0, 0, 3, 13, 23, 0, 0]
    assert plan.length[:, 0].tolist() == [7, 3, 10, 10, 2, 0, 3]
    assert (plan.rows, plan.consumed, plan.status) == (4, 4, 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lengths=[[1, -1]], capacities=[2, 2]), "lengths"),
        (dict(lengths=[1.5], capacities=2), "lengths"),
        (dict(lengths=[1, 2], capacities=0), "capacities"),
        (dict(lengths=[[1, 2]], capacities=[2]), "capacities"),
        (dict(lengths=[1, 2], capacities=2, meta=[True, False]), "meta"),
        (dict(lengths=[1, 2], capacities=2, scalar=[True]), "scalar"),
        (dict(lengths=[1, 2], capacities=2, carry=[[0, 1, 2]]), "carry"),
        (dict(lengths=[1, 2], capacities=2, carry=[[-3, 1]]), "carry"),
    ],
)
def test_kernel_arguments_are_checked(backend, kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        kernels.concat_then_split(**kwargs)


@pytest.mark.parametrize("seed", range(20))
def test_numpy_single_feature_plan_equals_the_steps(seed):
    """The NumPy twin's vectorized plan for one plain feature equals its step-by-step
    reference, carries, row caps and non-final calls included."""
    rng = np.random.default_rng(seed)
    for _ in range(40):
        n, cap = int(rng.integers(0, 25)), int(rng.integers(1, 12))
        lengths = (rng.integers(0, 30, n) * (rng.random(n) > 0.25)).reshape(n, 1).astype(np.int64)
        carry = np.full((1, 2), -1, np.int64)
        if n and lengths[0, 0] > 1 and rng.random() < 0.4:
            a = int(rng.integers(0, lengths[0, 0]))
            carry[0] = (a, int(rng.integers(a + 1, lengths[0, 0] + 1)))
        final, max_rows = int(rng.random() < 0.5), int(rng.integers(1, 8)) if rng.random() < 0.5 else 1 << 62
        fast = _kernels_numpy._split_one_feature(lengths[:, 0], cap, carry[0].tolist(), final, max_rows)
        steps = _kernels_numpy._concat_then_split_steps(
            lengths, np.zeros((n, 1), np.uint8), np.array([cap]), np.zeros(1, np.uint8), 1, carry, final, max_rows
        )
        assert _plan_fields(fast) == _plan_fields(steps)
