"""Tests for the packing index, rows on demand, and the shard-parallel packing jobs."""

import dataclasses
import json
import os

import grain
import numpy as np
import pytest

from xbatch import _backend, _kernels_numpy, kernels
from xbatch.packing import pack_documents
from xbatch.packing.index import (
    document_cells,
    load_index,
    merge_stats,
    pack_shard,
    save_index,
)
from xbatch.packing.jobs import build_index
from xbatch.packing.packed_rows import FIELDS, PackedRows
from xbatch.packing.pieces import document_pieces


def corpus(seed: int, num_documents: int, max_length: int = 40, vocab: int = 1000):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_length, num_documents)
    tokens = rng.integers(0, vocab, int(lengths.sum())).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return tokens, lengths, offsets


ARGUMENT_CASES = [
    dict(seq_len=16, eod_token_id=1001, pad_token_id=1002),
    dict(seq_len=16, eod_token_id=0, algorithm="best_fit", num_packing_bins=4),
    dict(seq_len=9, eod_token_id=7, long_documents="truncate", shift="targets"),
    dict(seq_len=9, eod_token_id=7, algorithm="first_fit_decreasing", max_documents_per_row=2),
    dict(seq_len=32, eod_token_id=5, algorithm="best_fit_decreasing", shift="targets"),
    dict(seq_len=8, eod_token_id=3, num_packing_bins=1, pad_token_id=9),
]


def _all_rows(rows: PackedRows) -> dict:
    return rows.read_rows(np.arange(len(rows)))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("arguments", ARGUMENT_CASES)
def test_rows_on_demand_equal_pack_documents(backend, seed, arguments):
    tokens, lengths, offsets = corpus(seed, 300)
    expected, stats = pack_documents(tokens, lengths, return_stats=True, **arguments)
    index = build_index(lengths, **arguments)
    assert index.stats == stats
    rows = _all_rows(PackedRows(tokens, offsets, index))
    for field in FIELDS:
        np.testing.assert_array_equal(rows[field], getattr(expected, field), err_msg=field)
    # Single rows, in a random order, equal the bulk rows too.
    for row in np.random.default_rng(seed).permutation(len(index))[:20]:
        single = PackedRows(tokens, offsets, index)[int(row)]
        assert all(np.array_equal(single[f], getattr(expected, f)[row]) for f in FIELDS)


@pytest.mark.parametrize("arguments", ARGUMENT_CASES[:3])
def test_shards_pack_like_pack_documents_per_shard_and_stats_merge_exactly(arguments):
    tokens, lengths, offsets = corpus(4, 500)
    index = build_index(lengths, shard_documents=120, **arguments)
    assert [s["first_document"] for s in index.shards] == [0, 120, 240, 360, 480]
    rows = _all_rows(PackedRows(tokens, offsets, index))
    expected, stats = [], []
    for first in range(0, 500, 120):
        part = slice(offsets[first], offsets[min(first + 120, 500)])
        batch, stat = pack_documents(tokens[part], lengths[first:first + 120], return_stats=True, **arguments)
        expected.append(batch)
        stats.append(stat)
    for field in FIELDS:
        np.testing.assert_array_equal(rows[field], np.concatenate([getattr(b, field) for b in expected]))
    assert index.stats == merge_stats(stats)
    assert [s["rows"] for s in index.shards] == [s.rows for s in stats]


def test_document_cells_equal_document_pieces():
    tokens, lengths, _ = corpus(5, 400, max_length=60)
    for long_documents in ("split", "truncate"):
        pieces = document_pieces(tokens, lengths, seq_len=13, eod_token_id=0, long_documents=long_documents)
        document, start, length, truncated, split = document_cells(lengths, seq_len=13,
                                                                   long_documents=long_documents)
        np.testing.assert_array_equal(length, pieces.lengths[:, 0])
        np.testing.assert_array_equal(start == 0, pieces.starts_document)
        assert (truncated, split) == (int(pieces.truncated.sum()), int(pieces.starts_split_document.sum()))
        assert np.array_equal(np.bincount(document, minlength=400) > 0, np.ones(400, bool))
    with pytest.raises(ValueError, match="document 0 has 20 tokens"):
        pack_shard([20], seq_len=8, eod_token_id=0, long_documents="error")


def test_save_load_round_trip_is_atomic_and_memory_mapped(tmp_path):
    tokens, lengths, offsets = corpus(6, 200)
    index = build_index(lengths, shard_documents=64, seq_len=16, eod_token_id=1)
    path = save_index(index, tmp_path / "index")
    save_index(index, tmp_path / "index")  # replaces the old one as a whole
    assert sorted(os.listdir(tmp_path)) == ["index"]
    assert sorted(os.listdir(path)) == sorted(["manifest.json", "piece_document.npy", "piece_length.npy",
                                               "piece_start.npy", "row_offsets.npy"])
    loaded = load_index(path)
    assert isinstance(loaded.piece_document, np.memmap)
    assert loaded.stats == index.stats and loaded.shards == index.shards and loaded.corpus == index.corpus
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["corpus"]["num_documents"] == 200 and manifest["arguments"]["seq_len"] == 16
    a, b = _all_rows(PackedRows(tokens, offsets, loaded)), _all_rows(PackedRows(tokens, offsets, index))
    assert all(np.array_equal(a[f], b[f]) for f in FIELDS)
    # 16 bytes per piece and 8 per row: never the rows.
    assert index.nbytes == 16 * index.stats.pieces + 8 * (index.stats.rows + 1)


def test_a_wrong_corpus_or_a_damaged_index_is_refused():
    tokens, lengths, offsets = corpus(7, 100)
    index = build_index(lengths, seq_len=16, eod_token_id=1)
    other_tokens, _, other_offsets = corpus(8, 100)
    with pytest.raises(ValueError, match="100 documents of"):
        PackedRows(other_tokens, other_offsets, index)
    swapped = offsets.copy()
    swapped[1:-1] = np.sort(np.random.default_rng(0).integers(0, len(tokens), 99))
    with pytest.raises(ValueError, match="another corpus"):
        PackedRows(tokens, swapped, index)
    damaged = dataclasses.replace(index, piece_length=index.piece_length.copy(), corpus={})
    damaged.piece_length[0] = 17
    with pytest.raises(ValueError, match="lengths in 1..seq_len=16"):
        PackedRows(tokens, offsets, damaged)
    damaged = dataclasses.replace(index, piece_start=index.piece_start + 5, corpus={})
    with pytest.raises(ValueError, match="runs past its document"):
        PackedRows(tokens, offsets, damaged)
    with pytest.raises(IndexError, match="out of range"):
        PackedRows(tokens, offsets, index).read_rows([len(index)])


def test_grain_map_dataset_shuffles_and_slices_the_rows():
    tokens, lengths, offsets = corpus(9, 300)
    index = build_index(lengths, seq_len=16, eod_token_id=1)
    rows = PackedRows(tokens, offsets, index)
    everything = _all_rows(rows)
    ds = grain.MapDataset.source(rows).shuffle(seed=3)
    order = [int(np.flatnonzero((everything["targets"] == r["targets"]).all(1)
                                & (everything["inputs"] == r["inputs"]).all(1))[0]) for r in ds]
    assert sorted(order) == list(range(len(rows)))
    assert [int(i) for i in order] != list(range(len(rows)))
    assert np.array_equal(ds[5]["targets"], ds.slice(slice(5, None))[0]["targets"])


def test_empty_documents_and_empty_corpus():
    tokens, lengths, offsets = np.zeros(0, np.int32), np.zeros(5, np.int64), np.zeros(6, np.int64)
    index = build_index(lengths, seq_len=4, eod_token_id=9)
    expected = pack_documents(tokens, lengths, seq_len=4, eod_token_id=9)
    assert np.array_equal(_all_rows(PackedRows(tokens, offsets, index))["targets"], expected.targets)
    empty = build_index(np.zeros(0, np.int64), seq_len=4, eod_token_id=9)
    assert len(empty) == 0 and empty.stats.rows == 0


def test_process_pool_gives_the_serial_index():
    arguments = dict(seq_len=16, eod_token_id=0, algorithm="best_fit", num_packing_bins=4)
    _, lengths, _ = corpus(10, 2000)
    serial = build_index(lengths, shard_documents=300, **arguments)
    pooled = build_index(lengths, shard_documents=300, engine="processes", workers=2, **arguments)
    _assert_same_index(pooled, serial)


def _assert_same_index(a, b):
    for name in ("piece_document", "piece_start", "piece_length", "row_offsets"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert getattr(a, name).dtype == getattr(b, name).dtype
    assert (a.stats, a.shards, a.corpus, a.arguments) == (b.stats, b.shards, b.corpus, b.arguments)


def test_bad_job_arguments_are_named():
    with pytest.raises(ValueError, match="engine"):
        build_index([1, 2], engine="spark", seq_len=4, eod_token_id=0)
    with pytest.raises(ValueError, match="concat_then_split"):
        build_index([1, 2], algorithm="concat_then_split", seq_len=4, eod_token_id=0)
    with pytest.raises(ValueError, match="shard_documents"):
        build_index([1, 2], shard_documents=0, seq_len=4, eod_token_id=0)


def test_a_corpus_from_xbatch_sources_packs_and_serves_rows():
    from xbatch.sources import Corpus

    tokens, lengths, offsets = corpus(12, 150)
    source = Corpus.from_arrays(tokens, offsets=offsets)
    index = build_index(source, seq_len=16, eod_token_id=3)
    expected = pack_documents(tokens, lengths, seq_len=16, eod_token_id=3)
    assert np.array_equal(_all_rows(PackedRows.from_corpus(source, index))["inputs"], expected.inputs)


# --- the gather kernel: rows straight from the corpus, safe on any index -------------------


def _kernel_arguments(tokens, offsets, index, rows, first_document=0):
    return (tokens, offsets[:-1], offsets[1:], first_document, index.piece_document,
            index.piece_start, index.piece_length, index.row_offsets, np.asarray(rows, np.int64))


def _run_kernel(module, arguments, n, seq_len, eod=7, pad=9, shift_targets=0):
    out = [np.full((n, seq_len), -5, np.int32) for _ in range(6)]
    status = module.gather_packed_rows(*arguments, eod, pad, shift_targets, *out)
    return status, out


def test_kernel_backends_agree_on_damaged_indexes_and_never_leave_their_arrays():
    """Random damage to every index array, random requests: the compiled kernel and its
    NumPy twin return the same status, and the same rows where they accept them."""
    backend = _backend.compiled_module()
    if backend is None or os.environ.get(_backend.ENV_VAR, "").strip().lower() == "numpy":
        pytest.skip("compares the compiled kernel with its twin: the extension is not built or forced off")
    rng = np.random.default_rng(0)
    statuses = set()
    for case in range(1000):
        tokens, lengths, offsets = corpus(case, int(rng.integers(0, 30)), max_length=12)
        seq_len = int(rng.integers(1, 20))
        arguments = dict(seq_len=seq_len, eod_token_id=7, long_documents=("split", "truncate")[case % 2])
        index = pack_shard(lengths, **arguments)
        arrays = {name: np.array(getattr(index, name)) for name in ("piece_document", "piece_start",
                                                                    "piece_length", "row_offsets")}
        for _ in range(int(rng.integers(0, 3))):  # damage
            name = ["piece_document", "piece_start", "piece_length", "row_offsets"][int(rng.integers(0, 4))]
            if arrays[name].size:
                big = np.iinfo(arrays[name].dtype)
                value = rng.choice([-1, 0, 1, seq_len, seq_len + 1, 10**6, big.min, big.max,
                                    int(rng.integers(-3, 40))])
                arrays[name][int(rng.integers(0, arrays[name].size))] = value
        if case % 7 == 0 and tokens.size:
            tokens[int(rng.integers(0, tokens.size))] = -3  # a bad token id
        damaged = dataclasses.replace(index, **arrays)
        num_rows = max(damaged.row_offsets.shape[0] - 1, 0)
        rows = rng.integers(0, num_rows, int(rng.integers(0, 6))) if num_rows else np.zeros(0, np.int64)
        first_document = int(rng.integers(0, 2)) if case % 5 == 0 else 0
        call = _kernel_arguments(tokens, offsets, damaged, rows, first_document)
        for shift_targets in (0, 1):
            compiled = _run_kernel(backend, call, rows.shape[0], seq_len, shift_targets=shift_targets)
            twin = _run_kernel(_kernels_numpy, call, rows.shape[0], seq_len, shift_targets=shift_targets)
            assert compiled[0] == twin[0], case
            statuses.add(np.sign(compiled[0] + 1) if compiled[0] > -2 else -2)
            if compiled[0] == -1:
                for a, b in zip(compiled[1], twin[1]):
                    np.testing.assert_array_equal(a, b)
    assert statuses == {0, 1, -2}  # accepted, bad row, bad token: every outcome was reached


@pytest.mark.parametrize("dtype", [np.uint16, np.int64, np.uint32, np.uint64, np.int16])
def test_any_integer_corpus_dtype_gives_the_int32_rows(backend, dtype):
    tokens, lengths, offsets = corpus(3, 200, vocab=30_000)
    index = build_index(lengths, seq_len=16, eod_token_id=5, shift="targets")
    expected = _all_rows(PackedRows(tokens, offsets, index))
    wide = tokens.astype(dtype)
    for field, value in _all_rows(PackedRows(wide, offsets, index)).items():
        np.testing.assert_array_equal(value, expected[field], err_msg=field)
    if np.dtype(dtype).itemsize >= 4 or np.dtype(dtype).kind == "i":
        bad = wide.copy()
        bad[offsets[40] + 1] = -1 if np.dtype(dtype).kind == "i" else np.iinfo(dtype).max
        rows = PackedRows(bad, offsets, index)
        row = int(np.flatnonzero((np.asarray(index.piece_document) == 40) & (index.piece_start == 0))[0])
        row = int(np.searchsorted(index.row_offsets, row, side="right") - 1)
        with pytest.raises(ValueError, match=rf"tokens: row {row} holds token id .*document 40"):
            rows.read_rows(np.arange(len(rows)))


def test_non_contiguous_tokens_and_reused_outputs(backend):
    tokens, lengths, offsets = corpus(4, 120)
    index = build_index(lengths, seq_len=12, eod_token_id=5)
    expected = _all_rows(PackedRows(tokens, offsets, index))
    strided = np.repeat(tokens, 2)[::2]
    assert not strided.flags.c_contiguous
    rows = PackedRows(strided, offsets, index)
    out = {name: np.empty((len(rows), 12), np.int32) for name in FIELDS}
    result = rows.read_rows(np.arange(len(rows)), out=out)
    assert all(result[name] is out[name] for name in FIELDS)
    assert all(np.array_equal(out[name], expected[name]) for name in FIELDS)


def test_the_kernel_wrapper_names_what_is_wrong(backend):
    tokens, lengths, offsets = corpus(5, 60)
    index = build_index(lengths, seq_len=16, eod_token_id=1)
    common = dict(seq_len=16, eod_token_id=1, pad_token_id=0)
    arrays = (offsets[:-1], offsets[1:], index.piece_document, index.piece_start, index.piece_length,
              index.row_offsets)

    def gather(rows, *, tokens=tokens, arrays=arrays, **extra):
        return kernels.gather_packed_rows(tokens, *arrays, rows, **{**common, **extra})

    with pytest.raises(ValueError, match="outside the index"):
        gather([len(index)])
    with pytest.raises(TypeError, match="tokens"):
        gather([0], tokens=tokens.astype(np.float32))
    with pytest.raises(ValueError, match="shift"):
        gather([0], shift="both")
    with pytest.raises(ValueError, match="piece_start: values .* do not fit int32"):
        gather([0], arrays=(*arrays[:3], index.piece_start.astype(np.int64) + 2**40, *arrays[4:]))
    with pytest.raises(ValueError, match=r"out\['inputs'\]"):
        gather([0], out={name: np.empty((1, 15), np.int32) for name in kernels.PACKED_ROW_FIELDS})
    shared = np.empty((1, 16), np.int32)
    with pytest.raises(ValueError, match="must not share memory"):
        gather([0], out={name: shared for name in kernels.PACKED_ROW_FIELDS})
    # A damaged index: named by row and piece, on both backends; nothing is read outside.
    damaged = index.piece_document.copy()
    damaged[3] = 10**12
    row = int(np.searchsorted(index.row_offsets, 3, side="right") - 1)
    with pytest.raises(ValueError, match=rf"row {row}, piece 3: document 1000000000000 is not among"):
        gather([row], arrays=(*arrays[:2], damaged, *arrays[3:]))
    offsets_damaged = index.row_offsets.copy()
    offsets_damaged[1] = 10**9
    with pytest.raises(ValueError, match="row_offsets: row 0 claims pieces"):
        gather([0], arrays=(*arrays[:5], offsets_damaged))
    lengths_damaged = index.piece_length.copy()
    lengths_damaged[0] = 17
    with pytest.raises(ValueError, match="row 0, piece 0 .* lies outside"):
        gather([0], arrays=(*arrays[:4], lengths_damaged, arrays[5]))
    rows = PackedRows(tokens, offsets, dataclasses.replace(index, piece_length=lengths_damaged), verify=False)
    with pytest.raises(ValueError, match="lies outside"):
        rows[0]


def test_rows_from_a_corpus_of_several_files(backend, tmp_path):
    """xbatch pack FILES --index-out over xbatch corpus directories; rows served from
    open_corpus(FILES) equal pack_documents per file."""
    from xbatch import cli
    from xbatch.sources import open_corpus, write_xbatch_corpus

    rng = np.random.default_rng(6)
    paths, expected = [], []
    for k, size in enumerate((150, 0, 90, 200)):
        lengths = rng.integers(0, 25, size)
        tokens = rng.integers(0, 60_000, int(lengths.sum())).astype(np.uint16)
        paths.append(str(write_xbatch_corpus(tmp_path / f"part{k}", tokens, lengths=lengths)))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for a in range(0, size, 60):  # rows never span shards of --shard-documents 60
            b = min(a + 60, size)
            expected.append(pack_documents(tokens[offsets[a]:offsets[b]].astype(np.int32), lengths[a:b],
                                           seq_len=16, eod_token_id=3, num_packing_bins=8))
    assert cli.main(["pack", *paths, "--index-out", str(tmp_path / "index"), "--seq-len", "16", "--eod", "3",
                     "--bins", "8", "--no-progress", "--shard-documents", "60"]) == 0
    rows = PackedRows.from_corpus(open_corpus(paths), load_index(tmp_path / "index"))
    order = np.random.default_rng(0).permutation(len(rows))
    served = rows.read_rows(order)
    for field in FIELDS:
        whole = np.concatenate([getattr(batch, field) for batch in expected])
        np.testing.assert_array_equal(served[field], whole[order], err_msg=field)
    # An index whose shard spans two files cannot be served from them.
    spanning = build_index(open_corpus(paths), seq_len=16, eod_token_id=3)
    with pytest.raises(ValueError, match="spans corpus shards"):
        PackedRows.from_corpus(open_corpus(paths), spanning)
