"""The loss-mask kernels (``eod_cell_mask``, ``trained_segmentation``) on both backends.

Differential: random inputs against a plain reference (the mask scattered into rows like
its tokens, times ``pack_rows``' segment ids, shifted left for ``shift=1``); bad input
raises naming the argument; the compiled loops refuse out-of-range items even when called
past the wrappers. CI also runs this file on a build with bounds checks on.
"""

import numpy as np
import pytest

from xbatch import _backend, kernels


def _reference_cells(mask, lengths, eod_loss):
    out, start = [], 0
    for n in lengths:
        out += list(mask[start:start + n]) + [eod_loss]
        start += n
    return np.array(out, np.int32)


def _reference_trained(mask, lengths, bins, rows, row_length, shift):
    """Scatter the mask like tokens, times the segment ids, shifted; count non-zero cells."""
    segmentation = np.zeros((rows, row_length), np.int32)
    positions = np.zeros((rows, row_length), np.int32)
    mask_rows = np.zeros((rows, row_length), np.int32)
    cursor, items, source = [0] * rows, [0] * rows, 0
    for n, b in zip(lengths, bins):
        items[b] += 1
        segmentation[b, cursor[b]:cursor[b] + n] = items[b]
        mask_rows[b, cursor[b]:cursor[b] + n] = mask[source:source + n]
        cursor[b] += n
        source += n
    trained = (mask_rows != 0) * segmentation
    if shift:
        trained = np.concatenate([trained[:, 1:], np.zeros((rows, 1), np.int32)], axis=1)
    return trained.astype(np.int32), np.count_nonzero(trained, axis=1)


def _random_placement(rng, rows, row_length):
    """Items in random order that fit their rows (some empty, some rows empty)."""
    lengths, bins = [], []
    for b in range(rows):
        room = row_length
        while room and rng.random() < 0.8:
            n = int(rng.integers(0, room + 1))
            lengths.append(n)
            bins.append(b)
            room -= n
    order = rng.permutation(len(lengths))
    # Items of one row keep their relative order (cells follow placement order).
    order = sorted(order, key=lambda i: (rng.random(), i))
    return np.array(lengths, np.int64)[order], np.array(bins, np.int64)[order]


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("shift", [0, 1])
def test_trained_segmentation_matches_reference(backend, seed, shift):
    rng = np.random.default_rng(seed)
    rows, row_length = int(rng.integers(1, 6)), int(rng.integers(1, 12))
    lengths, bins = _random_placement(rng, rows, row_length)
    mask = rng.integers(0, 2, int(lengths.sum())).astype(np.int32)
    out = np.full((rows, row_length), -7, np.int32)  # every cell must be written
    counts = kernels.trained_segmentation(mask, lengths, bins, out, shift=shift)
    expected, expected_counts = _reference_trained(mask, lengths, bins, rows, row_length, shift)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(counts, expected_counts)
    assert counts.dtype == np.int64


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("eod_loss", [0, 1])
def test_eod_cell_mask_matches_reference(backend, seed, eod_loss):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 6, int(rng.integers(0, 8))).astype(np.int64)
    mask = rng.integers(0, 2, int(lengths.sum()))
    expected = _reference_cells(mask, lengths, eod_loss)
    for value in (mask.astype(np.int32), mask.astype(bool), mask.astype(np.uint8), mask.astype(np.int64),
                  mask.tolist()):
        got = kernels.eod_cell_mask(value, lengths, eod_loss=eod_loss)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("bad", [2, -1, 2**31 - 1, -2**31])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_eod_cell_mask_names_the_first_bad_value(backend, bad, dtype):
    if not np.iinfo(dtype).min <= bad <= np.iinfo(dtype).max:
        pytest.skip("value outside the dtype")
    mask = np.array([1, 0, 1, 1, 0], dtype)
    mask[3] = bad
    with pytest.raises(ValueError, match=rf"loss_mask: expected 0 or 1 per token, got {bad} at token 3"):
        kernels.eod_cell_mask(mask, [2, 3], eod_loss=1)


@pytest.mark.parametrize(
    "mask, lengths, eod_loss, error, match",
    [
        ([1, 0, 1], [2], 1, ValueError, r"loss_mask: expected one value per token \(2 tokens"),
        ([1, 0], [-1, 3], 1, ValueError, "lengths: expected lengths >= 0"),
        ([1, 0], [5], 1, ValueError, "loss_mask: expected one value per token, .* shorter than"),
        ([1, 0], [2**62, 2**62], 1, ValueError, "shorter than"),
        ([1, 0], [1, 0, 0], 1, ValueError, r"one value per token \(1 tokens"),
        ([1.0, 0.0], [2], 1, TypeError, "bools or 0/1 integers"),
        ([[1, 0]], [2], 1, ValueError, "1-d"),
        ([1, 0], [2], 2, ValueError, "eod_loss"),
        ([1, 0], [2], True, ValueError, "eod_loss"),
        ([1, 0], [1.5], 1, TypeError, "lengths"),
    ],
)
def test_eod_cell_mask_arguments_are_checked(backend, mask, lengths, eod_loss, error, match):
    with pytest.raises(error, match=match):
        kernels.eod_cell_mask(mask, lengths, eod_loss=eod_loss)


def test_trained_segmentation_arguments_are_checked(backend):
    out = np.zeros((2, 4), np.int32)
    mask = np.ones(5, np.int32)
    with pytest.raises(ValueError, match="does not fit row 0"):
        kernels.trained_segmentation(mask, [3, 2], [0, 0], out)
    assert not out.any()  # nothing written
    with pytest.raises(ValueError, match="longer than a row"):
        kernels.trained_segmentation(mask, [5], [0], out)
    with pytest.raises(ValueError, match=r"bins: expected bin indices in \[0, 2\)"):
        kernels.trained_segmentation(mask, [3, 2], [0, 2], out)
    with pytest.raises(ValueError, match="summing to the 5 cells"):
        kernels.trained_segmentation(mask, [3, 1], [0, 1], out)
    with pytest.raises(TypeError, match="loss_mask: expected a 1-d int32"):
        kernels.trained_segmentation(mask.astype(np.int64), [3, 2], [0, 1], out)
    with pytest.raises(TypeError, match="out: expected dtype int32"):
        kernels.trained_segmentation(mask, [3, 2], [0, 1], out.astype(np.int64))
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.trained_segmentation(mask, [3, 2], [0, 1], np.zeros((4, 2), np.int32).T)
    with pytest.raises(ValueError, match="shift"):
        kernels.trained_segmentation(mask, [3, 2], [0, 1], out, shift=2)
    with pytest.raises(ValueError, match="must not share memory|overlap"):
        kernels.trained_segmentation(out.reshape(-1)[:5], [3, 2], [0, 1], out)


def test_compiled_mask_kernels_guard_their_own_bounds():
    """Even called directly, past the wrappers, the loops refuse out-of-range input."""
    compiled = _backend.compiled_module()
    if compiled is None:
        pytest.skip("the compiled extension is not built")
    as_i64 = lambda x: np.array(x, dtype=np.int64)  # noqa: E731
    mask = np.ones(5, np.int32)
    out = np.zeros((2, 4), np.int32)
    counts = np.zeros(2, np.int64)
    assert compiled.trained_segmentation(mask, as_i64([3]), as_i64([5]), 0, out, counts) == 0
    assert compiled.trained_segmentation(mask, as_i64([-2]), as_i64([0]), 1, out, counts) == 0
    assert compiled.trained_segmentation(mask[:2], as_i64([3]), as_i64([0]), 0, out, counts) == 0
    assert compiled.trained_segmentation(mask, as_i64([5]), as_i64([0]), 0, out, counts) == 0
    assert not out.any()
    with pytest.raises(ValueError, match="out_counts"):
        compiled.trained_segmentation(mask, as_i64([3]), as_i64([0]), 0, out, counts[:1])
    with pytest.raises(ValueError, match="shift"):
        compiled.trained_segmentation(mask, as_i64([3]), as_i64([0]), -1, out, counts)
    cells = np.zeros(4, np.int32)
    for lengths in ([3, 3], [-1], [6], [2**62]):
        with pytest.raises(RuntimeError, match="internal error: eod_cell_mask"):
            compiled.eod_cell_mask(mask, as_i64(lengths), 1, cells)
    with pytest.raises(RuntimeError, match="internal error: eod_cell_mask"):
        compiled.eod_cell_mask(mask, as_i64([1, 1]), 1, cells)  # leaves values unread
