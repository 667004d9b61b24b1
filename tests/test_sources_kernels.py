"""The corpus-source kernels on both backends: grain's index_shuffle, and gather_ranges."""

import numpy as np
import pytest
from grain.experimental import index_shuffle as grain_index_shuffle

from xbatch import kernels

# 65536 = 4**8: grain's block is one bit too small there (see _simon_word_bits).
MAX_INDICES = [0, 1, 3, 100, 65535, 65536, 65537, 2**18 + 3, 10**9, 2**40 + 7, 2**62 + 5]


@pytest.mark.parametrize("max_index", MAX_INDICES)
def test_index_shuffle_equals_grain(backend, max_index):
    rng = np.random.default_rng(max_index % 1000)
    # grain walks ~2**16 / (max_index + 1) cipher steps per call: few calls for tiny ranges.
    small = max_index < 64
    for seed in (0, 2**32 - 1) if small else (0, int(rng.integers(2**32)), 2**32 - 1):
        for rounds in (4,) if small else (4, 6):
            indices = np.arange(max_index + 1) if max_index < 64 else rng.integers(0, max_index + 1, size=48)
            want = [grain_index_shuffle(int(i), max_index=max_index, seed=seed, rounds=rounds) for i in indices]
            got = kernels.index_shuffle(indices, max_index=max_index, seed=seed, rounds=rounds)
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n", [1, 17, 1000, 70000])
def test_index_shuffle_is_grains_permutation(backend, n):
    got = kernels.index_shuffle(np.arange(n), max_index=n - 1, seed=n)
    assert sorted(got.tolist()) == list(range(n))
    spot = np.random.default_rng(n).integers(0, n, size=8)
    np.testing.assert_array_equal(got[spot], [grain_index_shuffle(int(i), max_index=n - 1, seed=n, rounds=4)
                                              for i in spot])


def test_index_shuffle_keys_match_seed_seq():
    # The round keys decide everything; spot-check them through grain's own results above,
    # and their shape here.
    keys = kernels.index_shuffle_keys(7, 4)
    assert keys.dtype == np.uint32 and keys.shape == (4,)
    assert not np.array_equal(keys, kernels.index_shuffle_keys(8, 4))


@pytest.mark.parametrize("kwargs, message", [
    (dict(indices=[0, 5], max_index=4, seed=0), "index 1 is 5"),
    (dict(indices=[-1], max_index=4, seed=0), "index 0 is -1"),
    (dict(indices=[0], max_index=-1, seed=0), "max_index"),
    (dict(indices=[0], max_index=4, seed=2**32), "seed"),
    (dict(indices=[0], max_index=4, seed=-1), "seed"),
    (dict(indices=[0], max_index=4, seed=0, rounds=5), "rounds"),
    (dict(indices=[0], max_index=4, seed=0, rounds=2), "rounds"),
    (dict(indices=[[0]], max_index=4, seed=0), "indices"),
    (dict(indices=[0.5], max_index=4, seed=0), "indices"),
])
def test_index_shuffle_rejects(backend, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        kwargs = dict(kwargs)
        kernels.index_shuffle(kwargs.pop("indices"), **kwargs)


def test_index_shuffle_out(backend):
    out = np.empty(10, dtype=np.int64)
    assert kernels.index_shuffle(np.arange(10), max_index=9, seed=3, out=out) is out
    with pytest.raises(ValueError, match="out"):
        kernels.index_shuffle(np.arange(10), max_index=9, seed=3, out=np.empty(9, np.int64))


DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_ranges_random(backend, dtype):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    tokens = rng.integers(max(info.min, -(2**31)), min(info.max, 2**31 - 1), size=5000, endpoint=True).astype(dtype)
    for _ in range(20):
        k = int(rng.integers(0, 40))
        starts = rng.integers(0, tokens.size + 1, size=k)
        ends = np.minimum(starts + rng.integers(0, 300, size=k), tokens.size)
        out, lengths = kernels.gather_ranges(tokens, starts, ends)
        want = np.concatenate([tokens[a:b] for a, b in zip(starts, ends)] + [np.zeros(0, dtype)])
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, want.astype(np.int64))
        np.testing.assert_array_equal(lengths, ends - starts)


def test_gather_ranges_memmap_and_out(backend, tmp_path):
    tokens = np.arange(100, dtype=np.uint16)
    np.save(tmp_path / "t.npy", tokens)
    mapped = np.load(tmp_path / "t.npy", mmap_mode="r")
    out = np.full(20, -7, dtype=np.int32)
    got, lengths = kernels.gather_ranges(mapped, [90, 0, 5], [95, 0, 8], out=out)
    assert np.shares_memory(got, out)
    assert got.tolist() == [90, 91, 92, 93, 94, 5, 6, 7] and lengths.tolist() == [5, 0, 3]
    assert out[8] == -7  # nothing written past the gathered tokens


@pytest.mark.parametrize("dtype, value", [(np.int64, 2**31), (np.int64, -(2**31) - 1), (np.uint32, 2**31),
                                          (np.uint64, 2**40)])
def test_gather_ranges_rejects_wide_ids(backend, dtype, value):
    tokens = np.zeros(10, dtype=dtype)
    tokens[6] = value
    kernels.gather_ranges(tokens, [0], [6])  # the range before it is fine
    with pytest.raises(ValueError, match="range 1 holds token ids .* do not fit int32"):
        kernels.gather_ranges(tokens, [0, 4], [2, 8])


@pytest.mark.parametrize("starts, ends, message", [
    ([0], [11], "range 0 is \\[0, 11\\)"),
    ([-1], [2], "range 0 is \\[-1, 2\\)"),
    ([0, 5], [3, 4], "range 1 is \\[5, 4\\)"),
    ([0], [1, 2], "one end per start"),
])
def test_gather_ranges_rejects_ranges(backend, starts, ends, message):
    with pytest.raises(ValueError, match=message):
        kernels.gather_ranges(np.arange(10, dtype=np.int32), starts, ends)


def test_gather_ranges_rejects_arguments(backend):
    with pytest.raises(TypeError, match="tokens"):
        kernels.gather_ranges(np.arange(10.0), [0], [1])
    with pytest.raises(TypeError, match="tokens"):
        kernels.gather_ranges(np.zeros((2, 2), np.int32), [0], [1])
    with pytest.raises(ValueError, match="out"):
        kernels.gather_ranges(np.arange(10, dtype=np.int32), [0], [5], out=np.empty(4, np.int32))
    with pytest.raises(ValueError, match="out"):
        kernels.gather_ranges(np.arange(10, dtype=np.int32), [0], [5], out=np.empty(5, np.int64))
