"""attention_metadata: every test runs on both backends (the ``backend`` fixture).

Three legs: a plain-Python statement of the definition as the reference on random
segmentations (valid and not), the attention mask rebuilt from each format against the
mask built from the segment ids on batches of the LLM packer and of aligned packing, and
JAX's own attention with ``query_seq_lengths`` against attention with a segment mask.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xbatch import _backend, _kernels_numpy, kernels
from xbatch.packing import attention_metadata, pack_documents

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# ---------------------------------------------------------------------------------------
# References


def reference(seg, max_segments):
    """(status, row, column, lengths, offsets, cu_seqlens, max_seqlen), cell by cell.

    Status 0: valid; 1: row ``row`` has a segment ``max_segments + 1`` starting at
    ``column``; 2: the run starting at ``column`` does not carry its run number.
    """
    rows, length = seg.shape
    lengths = np.full((rows, max_segments), -1)
    offsets = np.full((rows, max_segments + 1), -1)
    for r in range(rows):
        n, previous = 0, 0
        for c in range(length):
            value = int(seg[r, c])
            if value != 0 and value != previous:
                n += 1
                if value != n:
                    return 2, r, c, None, None, None, None
                if n > max_segments:
                    return 1, r, c, None, None, None, None
                offsets[r, n - 1], lengths[r, n - 1] = c, 0
            if value != 0:
                lengths[r, n - 1] += 1
            previous = value
    used = lengths[lengths > 0]  # row-major order
    cu = np.full(rows * max_segments + 1, used.sum())
    cu[: len(used) + 1] = np.concatenate([[0], np.cumsum(used)])
    return 0, -1, -1, lengths, offsets, cu, int(used.max(initial=0))


def segment_id_mask(seg):
    """bool[B, L, L]: query i attends to key j -- same segment, not padding, j <= i."""
    length = seg.shape[1]
    causal = np.tril(np.ones((length, length), dtype=bool))
    return (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] != 0) & causal


def metadata_mask(seq_lengths, seq_offsets, length):
    """bool[B, L, L] from the per-row lengths and offsets alone (the docs' example)."""
    columns = np.arange(length)
    starts = seq_offsets[:, :-1, None]  # [B, M, 1]; -1 in unused slots
    inside = (columns >= starts) & (columns < starts + seq_lengths[:, :, None])  # [B, M, L]
    same = (inside[:, :, :, None] & inside[:, :, None, :]).any(axis=1)
    return same & (columns[:, None] >= columns[None, :])


def cu_seqlens_mask(cu_seqlens, num_tokens):
    """bool[T, T] over the tokens with padding removed, from cu_seqlens alone."""
    sequence = np.searchsorted(cu_seqlens, np.arange(num_tokens), side="right") - 1
    order = np.arange(num_tokens)
    return (sequence[:, None] == sequence[None, :]) & (order[:, None] >= order[None, :])


# ---------------------------------------------------------------------------------------
# Random segmentations


def valid_rows(rng, rows, length, max_gap=3, max_segment=12):
    """Rows of contiguous segments 1, 2, ... with random gaps of padding between them."""
    seg = np.zeros((rows, length), dtype=np.int64)
    for r in range(rows):
        c, n = int(rng.integers(0, max_gap + 1)) * int(rng.integers(0, 2)), 0
        while c < length:
            run = int(rng.integers(1, max_segment + 1))
            n += 1
            seg[r, c : c + run] = n
            c += run + int(rng.integers(0, max_gap + 1)) * int(rng.integers(0, 2))
    return seg


def noisy(rng, seg):
    """``seg`` with a few cells changed to ids near the valid ones (some stay valid)."""
    out = seg.copy()
    for _ in range(int(rng.integers(1, 4))):
        r, c = int(rng.integers(out.shape[0])), int(rng.integers(out.shape[1]))
        out[r, c] = int(rng.integers(-1, out.max() + 3))
    return out


def random_cases(seed, count=120):
    rng = np.random.default_rng(seed)
    for i in range(count):
        rows, length = int(rng.integers(0, 6)), int(rng.integers(0, 40))
        seg = valid_rows(rng, rows, length)
        if i % 2 and seg.size:
            seg = noisy(rng, seg)
        yield seg, int(rng.integers(1, 8))


def check_against_reference(seg, max_segments, got):
    """``got``: a backend's (status, row, column, max_seqlen) and its three outputs."""
    (status, row, column, longest), lengths, offsets, cu = got
    expected = reference(seg, max_segments)
    assert (status, row, column) == expected[:3], seg
    if status == 0:
        np.testing.assert_array_equal(lengths, expected[3])
        np.testing.assert_array_equal(offsets, expected[4])
        np.testing.assert_array_equal(cu, expected[5])
        assert longest == expected[6]


def run_kernel(module, seg, max_segments):
    rows = seg.shape[0]
    lengths = np.empty((rows, max_segments), dtype=np.int32)
    offsets = np.empty((rows, max_segments + 1), dtype=np.int32)
    cu = np.empty(rows * max_segments + 1, dtype=np.int32)
    result = module.attention_metadata(seg, max_segments, lengths, offsets, cu)
    return result, lengths, offsets, cu


# ---------------------------------------------------------------------------------------
# The kernels against the reference, and against each other


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_kernel_matches_reference_on_random_segmentations(backend, dtype):
    for seg, max_segments in random_cases(seed=1):
        seg = np.ascontiguousarray(seg, dtype=dtype)
        check_against_reference(seg, max_segments, run_kernel(backend, seg, max_segments))


@pytest.mark.skipif(_backend.compiled_module() is None, reason="compiled extension not built")
def test_backends_agree_on_random_segmentations():
    compiled = _backend.compiled_module()
    for seg, max_segments in random_cases(seed=2, count=300):
        ours = run_kernel(compiled, seg, max_segments)
        theirs = run_kernel(_kernels_numpy, seg, max_segments)
        assert ours[0] == theirs[0]
        if ours[0][0] == 0:
            for a, b in zip(ours[1:], theirs[1:]):
                np.testing.assert_array_equal(a, b)


@st.composite
def segmented_rows(draw):
    """(seg, max_segments, segments): rows built from (gap, length) runs, and the runs."""
    rows = draw(st.integers(0, 4))
    length = draw(st.integers(0, 24))
    seg = np.zeros((rows, length), dtype=np.int64)
    segments = []
    for r in range(rows):
        runs = draw(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 8)), max_size=8))
        c, row = 0, []
        for gap, run in runs:
            if c + gap >= length:
                break
            run = min(run, length - c - gap)
            seg[r, c + gap : c + gap + run] = len(row) + 1
            row.append((c + gap, run))
            c += gap + run
        segments.append(row)
    most = max((len(row) for row in segments), default=0)
    max_segments = draw(st.integers(max(most, 1), max(most, 1) + 3))
    return seg, max_segments, segments


@SETTINGS
@given(case=segmented_rows())
def test_metadata_lists_every_segment(backend, case):
    seg, max_segments, segments = case
    late = [r for r, row in enumerate(segments) if row and row[0][0] > 0]
    if max_segments == 1 and late:
        with pytest.raises(ValueError, match=f"row {late[0]} starts its segment at column"):
            attention_metadata(seg, max_segments=max_segments)
        return
    meta = attention_metadata(seg, max_segments=max_segments)
    for r, row in enumerate(segments):
        n = len(row)
        assert meta["seq_offsets"][r, :n].tolist() == [start for start, _ in row]
        assert meta["seq_lengths"][r, :n].tolist() == [run for _, run in row]
        assert (meta["seq_offsets"][r, n:] == -1).all() and (meta["seq_lengths"][r, n:] == -1).all()
    runs = [run for row in segments for _, run in row]
    cu = meta["cu_seqlens"]
    assert cu.shape == (seg.shape[0] * max_segments + 1,) and cu.dtype == np.int32
    assert cu[: len(runs) + 1].tolist() == np.concatenate([[0], np.cumsum(runs)]).tolist()
    assert (cu[len(runs) :] == int((seg != 0).sum())).all()
    assert meta["max_seqlen"] == max(runs, default=0)
    assert ("query_seq_lengths" in meta) == (max_segments == 1)


@SETTINGS
@given(case=segmented_rows(), data=st.data())
def test_too_many_segments_names_the_first_such_row(backend, case, data):
    seg, _, segments = case
    counts = [len(row) for row in segments]
    if max(counts, default=0) < 2:
        return
    cap = data.draw(st.integers(1, max(counts) - 1))
    row = next(r for r, n in enumerate(counts) if n > cap)
    column = segments[row][cap][0]
    with pytest.raises(ValueError, match=rf"row {row} holds more than max_segments={cap} .* column {column}\)"):
        attention_metadata(seg, max_segments=cap)


@pytest.mark.parametrize(
    "seg, message",
    [
        ([[1, 1, 0, 1]], r"row 0, column 3: segment 1 resumes after a gap"),
        ([[1, 1, 2, 1]], r"row 0, column 3: id 1 where segment 3 \(or padding 0\) was expected"),
        ([[1, 1, 3, 3]], r"row 0, column 2: id 3 where segment 2"),
        ([[1, 2], [2, 1]], r"row 1, column 0: id 2 where segment 1"),
        ([[0, 0], [1, -1]], r"row 1, column 1: id -1 where segment 2"),
    ],
)
def test_ids_out_of_order_or_resumed_are_rejected(backend, seg, message):
    with pytest.raises(ValueError, match=message):
        attention_metadata(np.array(seg), max_segments=4)


# ---------------------------------------------------------------------------------------
# The masks: metadata against segment ids on packed batches


def packed_batches(seed):
    """inputs_segmentation of LLM-packer batches (both shifts) and of aligned packing."""
    rng = np.random.default_rng(seed)
    for seq_len, shift in [(16, "inputs"), (48, "targets"), (96, "inputs")]:
        lengths = np.clip(rng.lognormal(2.5, 1.0, size=40), 0, 200).astype(np.int64)
        tokens = rng.integers(1, 1000, size=int(lengths.sum()))
        batch = pack_documents(
            tokens, lengths, seq_len=seq_len, eod_token_id=1, num_packing_bins=8, shift=shift
        )
        yield np.asarray(batch.inputs_segmentation)
    # Aligned packing leaves padding between documents, as grain's drop-ins may.
    item_lengths = rng.integers(1, 9, size=30)
    packer = kernels.BinPacker(32, num_bins=6, alignments=4)
    bins = np.zeros(len(item_lengths), dtype=np.int64)
    placed = packer.place(item_lengths.reshape(-1, 1), bins)
    seg = np.empty((6, 32), dtype=np.int32)
    kernels.pack_rows(item_lengths[:placed], bins[:placed], seg, np.empty_like(seg), alignment=4)
    yield seg


def test_packed_batch_masks_equal_segment_id_masks(backend):
    for seg in packed_batches(seed=3):
        most = int(seg.max())
        for max_segments in (most, most + 3):
            meta = attention_metadata(seg, max_segments=max_segments)
            expected = segment_id_mask(seg)
            np.testing.assert_array_equal(
                metadata_mask(meta["seq_lengths"], meta["seq_offsets"], seg.shape[1]), expected
            )
            # cu_seqlens: the same mask over the tokens with padding removed.
            flat = seg.reshape(-1)
            kept = np.flatnonzero(flat)
            row = kept // seg.shape[1]
            stream_expected = (
                (row[:, None] == row[None, :])
                & (flat[kept][:, None] == flat[kept][None, :])
                & (kept[:, None] >= kept[None, :])
            )
            np.testing.assert_array_equal(cu_seqlens_mask(meta["cu_seqlens"], len(kept)), stream_expected)
            assert meta["max_seqlen"] == np.bincount(row * (most + 1) + flat[kept]).max(initial=0)


# ---------------------------------------------------------------------------------------
# One document per row: query_seq_lengths


def test_query_seq_lengths_one_document_per_row(backend):
    seg = np.array([[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    meta = attention_metadata(seg, max_segments=1)
    assert meta["query_seq_lengths"].tolist() == [3, 0, 4]
    assert meta["query_seq_lengths"].dtype == np.int32
    with pytest.raises(ValueError, match="row 1 starts its segment at column 2"):
        attention_metadata(np.array([[1, 1, 0], [0, 0, 1]]), max_segments=1)
    assert "query_seq_lengths" not in attention_metadata(seg, max_segments=2)


def test_jax_query_seq_lengths_equal_segment_mask_attention(backend):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(4)
    batch, length, heads, dim = 4, 16, 2, 8
    doc_lengths = np.array([16, 9, 1, 0])
    seg = (np.arange(length) < doc_lengths[:, None]).astype(np.int32)
    meta = attention_metadata(seg, max_segments=1)
    q, k, v = (jnp.asarray(rng.normal(size=(batch, length, heads, dim)), jnp.float32) for _ in range(3))
    lengths = jnp.asarray(meta["query_seq_lengths"])
    with_lengths = jax.nn.dot_product_attention(
        q, k, v, is_causal=True, query_seq_lengths=lengths, key_value_seq_lengths=lengths
    )
    mask = jnp.asarray(segment_id_mask(seg))[:, None]  # [B, 1, T, S]
    with_mask = jax.nn.dot_product_attention(q, k, v, mask=mask)
    valid = seg.astype(bool)  # padding queries attend to nothing: their output is undefined
    np.testing.assert_allclose(np.asarray(with_lengths)[valid], np.asarray(with_mask)[valid], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.uint32, np.uint64])
def test_any_integer_dtype_and_layout_gives_the_same_metadata(backend, dtype):
    seg = valid_rows(np.random.default_rng(5), 5, 30, max_segment=5)
    expected = attention_metadata(seg, max_segments=12)
    for variant in (seg.astype(dtype), np.asfortranarray(seg), seg[:, ::-1][:, ::-1], seg.tolist()):
        got = attention_metadata(variant, max_segments=12)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])


def test_empty_batches(backend):
    for shape in [(0, 8), (3, 0), (0, 0)]:
        meta = attention_metadata(np.zeros(shape, dtype=np.int32), max_segments=2)
        assert meta["seq_lengths"].shape == (shape[0], 2)
        assert meta["seq_offsets"].shape == (shape[0], 3)
        assert meta["cu_seqlens"].tolist() == [0] * (shape[0] * 2 + 1)
        assert meta["max_seqlen"] == 0


@pytest.mark.parametrize(
    "seg, max_segments, error, message",
    [
        (np.ones((2, 3), dtype=np.float32), 2, TypeError, "segmentation: expected an integer array"),
        (np.ones((2, 3), dtype=bool), 2, TypeError, "segmentation: expected an integer array"),
        (np.ones(3, dtype=np.int32), 2, ValueError, "segmentation: expected a 2-d array"),
        (np.ones((1, 2, 3), dtype=np.int32), 2, ValueError, "segmentation: expected a 2-d array"),
        (np.ones((2, 3), dtype=np.int32), 0, ValueError, "max_segments: expected an integer >= 1, got 0"),
        (np.ones((2, 3), dtype=np.int32), True, ValueError, "max_segments: expected an integer >= 1"),
        (np.ones((2, 3), dtype=np.int32), 2.0, ValueError, "max_segments: expected an integer >= 1"),
        (np.ones((2, 3), dtype=np.int32), 2**31, ValueError, "max_segments: 2 rows x"),
        (np.full((1, 1), 2**63, dtype=np.uint64), 2, ValueError, "segmentation: ids must be"),
        # No copy is made before this check: the broadcast view stays a view.
        (np.broadcast_to(np.int32(0), (2**16, 2**15)), 2, ValueError, "at most 2147483647 tokens"),
    ],
)
def test_bad_arguments_are_named(backend, seg, max_segments, error, message):
    with pytest.raises(error, match=message):
        attention_metadata(seg, max_segments=max_segments)


def test_compiled_kernel_checks_output_shapes():
    compiled = _backend.compiled_module()
    if compiled is None:
        pytest.skip("compiled extension not built")
    seg = np.ones((2, 4), dtype=np.int32)
    good = [np.empty((2, 3), np.int32), np.empty((2, 4), np.int32), np.empty(7, np.int32)]
    for i, wrong in enumerate([np.empty((2, 2), np.int32), np.empty((2, 3), np.int32), np.empty(6, np.int32)]):
        outs = list(good)
        outs[i] = wrong
        with pytest.raises(ValueError, match="expected shapes"):
            compiled.attention_metadata(seg, 3, *outs)
    with pytest.raises(ValueError, match="max_segments"):
        compiled.attention_metadata(seg, 0, np.empty((2, 0), np.int32), np.empty((2, 1), np.int32), np.empty(1, np.int32))


def test_layout_docs_examples_run(backend):
    """docs/layout.rst's attention metadata examples run and assert what they say."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "docs" / "layout.rst").read_text()
    section = text[text.index("Attention metadata for packed") : text.index("Document borders and state resets")]
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", section)
    assert len(blocks) == 4  # the fourth: the packers' attention_metadata=True
    namespace = {}
    for block in blocks:
        exec("\n".join(line[3:] for line in block.split("\n")), namespace)
    assert namespace["meta"]["cu_seqlens"].tolist() == [0, 4, 7, 9, 12, 13, 13]
