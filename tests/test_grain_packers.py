"""xbatch's grain packers against grain's own classes, the oracle, row by row."""

import pickle

import grain
import ml_dtypes
import numpy as np
import pytest

from xbatch.packing import BestFitPackIterDataset, FirstFitPackIterDataset, PackingStats

PAIRS = {
    "first_fit": (grain.experimental.FirstFitPackIterDataset, FirstFitPackIterDataset),
    "best_fit": (grain.experimental.BestFitPackIterDataset, BestFitPackIterDataset),
}
NO_PREFETCH = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def _iter_dataset(docs):
    return grain.MapDataset.source(docs).to_iter_dataset(NO_PREFETCH)


def assert_same_rows(expected: list, actual: list) -> None:
    """Same number of rows, same keys in the same order, same dtypes and values."""
    assert len(actual) == len(expected)
    for i, (want, got) in enumerate(zip(expected, actual)):
        assert list(got) == list(want), f"row {i}"
        for key, value in want.items():
            if isinstance(value, np.ndarray):
                assert got[key].dtype == value.dtype, f"row {i} key {key}"
                np.testing.assert_array_equal(got[key], value, err_msg=f"row {i} key {key}")
            else:  # a non-sequence meta feature: the list of the row's items' values
                assert type(got[key]) is type(value) and got[key] == value, f"row {i} key {key}"


def _random_case(seed: int):
    """A random stream and constructor arguments exercising one or more grain features."""
    rng = np.random.default_rng(seed)
    capacities = {"inputs": int(rng.integers(1, 40))}
    if rng.random() < 0.6:
        capacities["targets"] = int(rng.integers(1, 40))
    options = ["seq_meta", "doc_meta", "matrix", "float", "scalar", "mixed"]
    extras = set(rng.choice(options, size=rng.integers(0, 3), replace=False))
    if "seq_meta" in extras:
        capacities["mask"] = int(rng.integers(1, 40))
    if "matrix" in extras:
        capacities["embedding"] = int(rng.integers(1, 40))
    if "scalar" in extras:
        capacities["weight"] = int(rng.integers(1, 4))
    int_dtype = rng.choice([np.int32, np.int64])
    float_dtype = rng.choice([np.float32, ml_dtypes.bfloat16])

    def doc(index):
        element = {
            key: rng.integers(0, 1000, rng.integers(0, cap + 1)).astype(int_dtype)
            for key, cap in capacities.items()
        }
        if "float" in extras:
            element["inputs"] = element["inputs"].astype(float_dtype)
        if "mixed" in extras:  # later items are cast to the dtype of the window's first
            if index % 3 == 1:
                element["inputs"] = element["inputs"] * 1.7
            elif index % 3 == 2:
                element["inputs"] = element["inputs"].astype(np.int64) + 2**32 + 5
        if "matrix" in extras:
            element["embedding"] = rng.random((len(element["embedding"]), 3)).astype(np.float32)
        if "scalar" in extras:
            element["weight"] = int(rng.integers(1, 9)) if index % 2 else np.int32(rng.integers(1, 9))
        if "doc_meta" in extras:
            element["doc_id"] = index
        element["ignored"] = np.arange(3)  # not in length_struct: dropped
        return element

    docs = [doc(i) for i in range(int(rng.integers(1, 150)))]
    meta = (["mask"] if "seq_meta" in extras else []) + (["doc_id"] if "doc_meta" in extras else [])
    kwargs = dict(
        length_struct=capacities,
        num_packing_bins=int(rng.integers(1, 65)),
        seed=int(rng.integers(0, 100)),
        shuffle_bins=bool(rng.random() < 0.5),
        meta_features=meta,
    )
    if rng.random() < 0.3:
        kwargs["max_sequences_per_bin"] = int(rng.integers(1, 5))
    if rng.random() < 0.3:
        kwargs["pack_alignment_struct"] = {k: int(rng.integers(1, 5)) for k in capacities}
    if rng.random() < 0.3:
        kwargs["padding_struct"] = {k: int(rng.integers(-3, 3)) for k in capacities}
    if kwargs["shuffle_bins"] and rng.random() < 0.4:
        kwargs["shuffle_bins_group_by_feature"] = rng.choice(["inputs", "inputs_segment_ids"])
    return docs, kwargs


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # grain's too
@pytest.mark.parametrize("algorithm", PAIRS)
@pytest.mark.parametrize("seed", range(40))
def test_rows_match_grain_on_random_streams(backend, algorithm, seed):
    docs, kwargs = _random_case(seed)
    grain_cls, xbatch_cls = PAIRS[algorithm]
    expected = list(grain_cls(_iter_dataset(docs), **kwargs))
    actual = list(xbatch_cls(_iter_dataset(docs), **kwargs))
    assert_same_rows(expected, actual)


@pytest.mark.parametrize("algorithm", PAIRS)
def test_rows_match_grain_with_two_features_of_different_lengths(backend, algorithm):
    rng = np.random.default_rng(7)
    docs = [
        {
            "inputs": np.arange(rng.integers(1, 90), dtype=np.int32),
            "targets": np.arange(rng.integers(1, 600), dtype=np.int32),
        }
        for _ in range(400)
    ]
    kwargs = dict(length_struct={"inputs": 128, "targets": 640}, num_packing_bins=16, seed=5)
    grain_cls, xbatch_cls = PAIRS[algorithm]
    assert_same_rows(list(grain_cls(_iter_dataset(docs), **kwargs)), list(xbatch_cls(_iter_dataset(docs), **kwargs)))


def test_non_sequence_meta_features_come_out_as_lists_per_row(backend):
    docs = [{"inputs": np.arange(n, dtype=np.int32), "doc_id": i} for i, n in enumerate([3, 4, 2, 5])]
    kwargs = dict(length_struct={"inputs": 6}, num_packing_bins=2, shuffle_bins=False, meta_features=["doc_id"])
    rows = list(FirstFitPackIterDataset(_iter_dataset(docs), **kwargs))
    assert [row["doc_id"] for row in rows] == [[0, 2], [1], [3]]
    assert "doc_id_segment_ids" not in rows[0]
    assert_same_rows(list(grain.experimental.FirstFitPackIterDataset(_iter_dataset(docs), **kwargs)), rows)


@pytest.mark.parametrize("algorithm", PAIRS)
def test_over_long_item_raises_grains_error(backend, algorithm):
    docs = [{"inputs": np.arange(3)}, {"inputs": np.arange(9)}]
    kwargs = dict(length_struct={"inputs": 8}, num_packing_bins=2)
    grain_cls, xbatch_cls = PAIRS[algorithm]
    with pytest.raises(ValueError) as grain_error:
        list(grain_cls(_iter_dataset(docs), **kwargs))
    with pytest.raises(ValueError) as xbatch_error:
        list(xbatch_cls(_iter_dataset(docs), **kwargs))
    assert str(xbatch_error.value) == str(grain_error.value)
    assert "(feature_path, feature_length, max_length)" in str(xbatch_error.value)


@pytest.mark.parametrize("cap", [0, -1])
def test_non_positive_max_sequences_per_bin_is_rejected(cap):
    with pytest.raises(ValueError, match="max_sequences_per_bin"):
        FirstFitPackIterDataset(
            _iter_dataset([]), length_struct={"a": 4}, num_packing_bins=2, max_sequences_per_bin=cap
        )


def test_invalid_arguments_name_the_argument():
    with pytest.raises(ValueError, match="num_packing_bins"):
        FirstFitPackIterDataset(_iter_dataset([]), length_struct={"a": 4}, num_packing_bins=0)
    with pytest.raises(TypeError, match="length_struct"):
        FirstFitPackIterDataset(_iter_dataset([]), length_struct=(4,), num_packing_bins=2)
    with pytest.raises(ValueError, match="Perhaps it should be marked as a meta feature"):
        FirstFitPackIterDataset(_iter_dataset([]), length_struct={"a": {"b": 4}}, num_packing_bins=2)


def test_nested_sequence_meta_feature_matches_grain(backend):
    rng = np.random.default_rng(3)
    docs = [
        {"inputs": np.arange(n), "extra": {"x": np.arange(n) * 2, "y": np.ones(n, np.float32)}}
        for n in rng.integers(0, 7, 40)
    ]
    kwargs = dict(length_struct={"inputs": 8, "extra": {"x": 8, "y": 8}}, num_packing_bins=3, meta_features=["extra"])
    expected = list(grain.experimental.FirstFitPackIterDataset(_iter_dataset(docs), **kwargs))
    actual = list(FirstFitPackIterDataset(_iter_dataset(docs), **kwargs))
    assert len(actual) == len(expected)
    for want, got in zip(expected, actual):
        assert list(got) == list(want) and list(got["extra"]) == list(want["extra"])
        np.testing.assert_array_equal(got["inputs_segment_ids"], want["inputs_segment_ids"])
        for key in ("x", "y"):
            np.testing.assert_array_equal(got["extra"][key], want["extra"][key])


def _small_stream(seed=0, n=40):
    rng = np.random.default_rng(seed)
    return [
        {
            "inputs": rng.integers(1, 99, rng.integers(1, 9)).astype(np.int32),
            "targets": rng.integers(1, 99, rng.integers(0, 5)),
        }
        for _ in range(n)
    ]


@pytest.mark.parametrize("algorithm", PAIRS)
@pytest.mark.parametrize("shuffle", [False, True])
def test_restores_exactly_from_every_checkpoint(backend, algorithm, shuffle):
    ds = PAIRS[algorithm][1](
        _iter_dataset(_small_stream()),
        length_struct={"inputs": 10, "targets": 6},
        num_packing_bins=3,
        shuffle_bins=shuffle,
        seed=11,
    )
    grain.experimental.assert_equal_output_after_checkpoint(ds)


def test_state_replays_the_window_from_one_parent_state_per_window(backend):
    it = iter(
        FirstFitPackIterDataset(
            _iter_dataset(_small_stream()), length_struct={"inputs": 10, "targets": 6}, num_packing_bins=3
        )
    )
    states = []
    for _ in range(10):
        states.append(it.get_state())
        next(it)
    assert set(states[0]) == {"parent", "skip", "next_row", "counter", "stats", "xbatch"}
    assert [s["counter"] for s in states] == list(range(10))
    # Within a window the parent state does not move; each window starts a new one.
    parents = [s["parent"]["next_index"] for s in states]
    assert parents == sorted(parents) and len(set(parents)) > 1


def _tokens(rows, key="inputs"):
    return sorted(np.concatenate([row[key][row[f"{key}_segment_ids"] > 0] for row in rows]).tolist())


def test_pickled_dataset_packs_the_same(backend):
    ds = FirstFitPackIterDataset(
        _iter_dataset(_small_stream()), length_struct={"inputs": 10, "targets": 6}, num_packing_bins=4, seed=2
    )
    assert_same_rows(list(ds), list(pickle.loads(pickle.dumps(ds))))


def test_mp_prefetch_delivers_every_token_once(backend):
    docs = [{"inputs": np.arange(i * 10, i * 10 + 1 + i % 7), "targets": np.arange(i % 3)} for i in range(200)]
    ds = FirstFitPackIterDataset(
        grain.MapDataset.source(docs).to_iter_dataset(),
        length_struct={"inputs": 16, "targets": 4},
        num_packing_bins=4,
    )
    rows = list(ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=2)))
    assert _tokens(rows) == sorted(np.concatenate([d["inputs"] for d in docs]).tolist())


def test_per_host_shards_together_deliver_every_token_once(backend):
    docs = [{"inputs": np.arange(i * 10, i * 10 + 1 + i % 7)} for i in range(120)]
    source = grain.MapDataset.source(docs)
    shard_count, rows = 3, []
    for shard_index in range(shard_count):
        shard = source[shard_index::shard_count].to_iter_dataset(NO_PREFETCH)
        shard_rows = list(FirstFitPackIterDataset(shard, length_struct={"inputs": 16}, num_packing_bins=4))
        shard_docs = docs[shard_index::shard_count]
        assert _tokens(shard_rows) == sorted(np.concatenate([d["inputs"] for d in shard_docs]).tolist())
        rows += shard_rows
    assert _tokens(rows) == sorted(np.concatenate([d["inputs"] for d in docs]).tolist())


def test_stats_count_rows_items_and_fill(backend):
    docs = [{"inputs": np.arange(n)} for n in [3, 4, 2, 5, 1]]
    ds = FirstFitPackIterDataset(
        _iter_dataset(docs), length_struct={"inputs": 6}, num_packing_bins=2, shuffle_bins=False
    )
    it = iter(ds)
    assert isinstance(it.stats, PackingStats) and it.stats.rows == 0
    first = next(it)  # rows [3, 2] and [4], then [5, 1]
    assert (it.stats.rows, it.stats.documents, it.stats.tokens) == (1, 2, 5)
    rows = [first, *it]
    assert it.stats.rows == len(rows) == 3
    assert it.stats.documents == it.stats.pieces == 5
    assert it.stats.tokens == 15 and it.stats.capacity == 18
    assert it.stats.fill_ratio == pytest.approx(15 / 18)


@pytest.mark.parametrize("algorithm", PAIRS)
def test_recycled_buffers_match_grain_and_spare_held_rows(backend, algorithm):
    """Rows dropped as they arrive let windows reuse arrays; rows kept stay intact."""
    docs = _small_stream(3, n=300)
    kwargs = dict(length_struct={"inputs": 10, "targets": 6}, num_packing_bins=3, seed=1)
    grain_cls, xbatch_cls = PAIRS[algorithm]
    expected = list(grain_cls(_iter_dataset(docs), **kwargs))
    copied, kept = [], []
    for i, row in enumerate(xbatch_cls(_iter_dataset(docs), **kwargs)):
        copied.append({key: value.copy() for key, value in row.items()})
        if i % 7 == 0:
            kept.append((i, row))
    assert_same_rows(expected, copied)
    assert_same_rows([expected[i] for i, _ in kept], [row for _, row in kept])
