"""``xbatch pack FILES --index-out DIR``: a packing index over many files, serially, on a
process pool and on Ray, equal byte for byte; rows equal pack_documents' per file."""

import filecmp
import importlib.util
import json
import os

import numpy as np
import pytest

from xbatch import cli
from xbatch.cli import pack as cli_pack
from xbatch.packing import jobs, pack_documents
from xbatch.packing.index import load_index
from xbatch.packing.jobs import build_index
from xbatch.packing.packed_rows import FIELDS, PackedRows

EOD, SEQ_LEN = 1001, 32
INDEX_ARGS = ["--seq-len", str(SEQ_LEN), "--eod", str(EOD), "--no-progress"]


def run(argv, capsys):
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def write_files(directory, seed=0, sizes=(300, 0, 250, 400)):
    """Corpus files of several formats (.npz, .npy + lengths, JSON lines); their arrays."""
    rng = np.random.default_rng(seed)
    paths, arrays, lengths_paths = [], [], []
    for k, size in enumerate(sizes):
        lengths = rng.integers(0, 45, size)  # some longer than a row: split
        tokens = rng.integers(0, 1000, int(lengths.sum())).astype(np.int32)
        arrays.append((tokens, lengths))
        kind = ("npz", "npy", "jsonl")[k % 3]
        path = directory / f"part{k}.{kind}"
        if kind == "npz":
            np.savez(path, tokens=tokens, lengths=lengths)
        elif kind == "npy":
            np.save(path, tokens)
            np.save(directory / f"part{k}.lengths.npy", lengths)
            lengths_paths += ["--lengths", directory / f"part{k}.lengths.npy"]
        else:
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            path.write_text("".join(json.dumps(tokens[a:b].tolist()) + "\n" for a, b in zip(offsets, offsets[1:])))
        paths.append(path)
    return paths, arrays, lengths_paths


def same_directories(a, b):
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


def expected_rows(arrays, shard_documents=None, **arguments):
    """pack_documents over each file (each shard of each file) in turn."""
    parts = []
    for tokens, lengths in arrays:
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        step = shard_documents or max(len(lengths), 1)
        for a in range(0, len(lengths), step):
            b = min(a + step, len(lengths))
            batch = pack_documents(tokens[offsets[a]:offsets[b]], lengths[a:b], seq_len=SEQ_LEN, eod_token_id=EOD,
                                   **arguments)
            parts.append({name: getattr(batch, name) for name in FIELDS})
    return {name: np.concatenate([p[name] for p in parts]) for name in FIELDS}


def served_rows(index_dir, arrays):
    tokens = np.concatenate([t for t, _ in arrays])
    lengths = np.concatenate([l for _, l in arrays])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    rows = PackedRows(tokens, offsets, load_index(index_dir))
    return rows.read_rows(np.arange(len(rows)))


@pytest.mark.parametrize("options,arguments", [
    ([], {"num_packing_bins": 64}),
    (["--bins", "all", "--algorithm", "best_fit_decreasing", "--shift", "targets", "--shard-documents", "120"],
     {"num_packing_bins": None, "algorithm": "best_fit_decreasing", "shift": "targets", "shard_documents": 120}),
])
def test_serial_index_rows_equal_pack_documents_per_file(tmp_path, capsys, options, arguments):
    paths, arrays, lengths_paths = write_files(tmp_path)
    status, out, err = run(["pack", *paths, *lengths_paths, "--index-out", tmp_path / "index", *INDEX_ARGS,
                            *options], capsys)
    assert status == 0, err
    assert f"indexed {sum(len(l) for _, l in arrays):,} documents" in out and "from 4 files" in out
    expected = expected_rows(arrays, **arguments)
    served = served_rows(tmp_path / "index", arrays)
    for name in FIELDS:
        assert np.array_equal(served[name], expected[name]), name
    index = load_index(tmp_path / "index")
    assert [shard["source"] for shard in index.shards][:1] == [str(paths[0])]
    assert index.stats.rows == expected["inputs"].shape[0]


def test_process_pool_writes_the_serial_index_byte_for_byte(tmp_path, capsys):
    paths, _, lengths_paths = write_files(tmp_path, seed=1)
    common = ["pack", *paths, *lengths_paths, *INDEX_ARGS, "--algorithm", "best_fit", "--bins", "8"]
    assert run([*common, "--index-out", tmp_path / "serial"], capsys)[0] == 0
    status, out, err = run([*common, "--index-out", tmp_path / "pool", "--engine", "processes", "--workers", "2"],
                           capsys)
    assert status == 0, err
    assert "engine processes, 2 workers" in out
    same_directories(tmp_path / "serial", tmp_path / "pool")
    # A worker's error comes back as itself: one line naming the file (the first failing one in order).
    (tmp_path / "missing.npz").unlink(missing_ok=True)
    status, _, err = run(["pack", paths[0], tmp_path / "missing.npz", *INDEX_ARGS, "--index-out", tmp_path / "pool",
                          "--engine", "processes", "--workers", "2"], capsys)
    assert status == 1 and err.count("\n") == 1 and "missing.npz" in err, err
    same_directories(tmp_path / "serial", tmp_path / "pool")  # the earlier index is kept


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason='Ray is not installed (optional extra: pip install "xbatch[ray]")')
def test_ray_writes_the_serial_index_and_builds_the_serial_index(tmp_path, capsys):
    import ray

    paths, arrays, lengths_paths = write_files(tmp_path, seed=2)
    common = ["pack", *paths, *lengths_paths, *INDEX_ARGS, "--max-documents-per-row", "3"]
    assert run([*common, "--index-out", tmp_path / "serial"], capsys)[0] == 0
    lengths = np.concatenate([l for _, l in arrays])
    arguments = dict(seq_len=16, eod_token_id=0, algorithm="best_fit", num_packing_bins=8)
    serial = build_index(lengths, shard_documents=100, **arguments)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # one local instance for both
    try:
        status, _, err = run([*common, "--index-out", tmp_path / "ray", "--engine", "ray", "--workers", "2"], capsys)
        assert status == 0, err
        same_directories(tmp_path / "serial", tmp_path / "ray")
        on_ray = build_index(lengths, shard_documents=100, engine="ray", **arguments)
        for name in ("piece_document", "piece_start", "piece_length", "row_offsets"):
            assert np.array_equal(getattr(on_ray, name), getattr(serial, name)), name
        assert (on_ray.stats, on_ray.shards, on_ray.corpus) == (serial.stats, serial.shards, serial.corpus)
        # A task's error arrives as itself, one line, not Ray's wrapper.
        bad = tmp_path / "bad.jsonl"
        bad.write_text("[1, 2]\n[" + ", ".join(["3"] * 40) + "]\n")
        status, _, err = run(["pack", bad, *INDEX_ARGS, "--long-documents", "error", "--index-out", tmp_path / "x",
                              "--engine", "ray"], capsys)
        assert status == 1 and err.count("\n") == 1 and "bad.jsonl: document 1 (line 2) has 40 tokens" in err
    finally:
        ray.shutdown()


def test_xbatch_corpus_directories_are_indexed_from_their_lengths(tmp_path, capsys):
    from xbatch.sources import open_corpus, write_xbatch_corpus

    rng = np.random.default_rng(3)
    directories, arrays = [], []
    for k in range(2):
        lengths = rng.integers(1, 30, 200)
        tokens = rng.integers(0, 60_000, int(lengths.sum())).astype(np.uint16)
        directories.append(write_xbatch_corpus(tmp_path / f"corpus{k}", tokens, lengths=lengths))
        arrays.append((tokens.astype(np.int32), lengths))
    status, _, err = run(["pack", *directories, "--index-out", tmp_path / "index", *INDEX_ARGS], capsys)
    assert status == 0, err
    expected = expected_rows(arrays, num_packing_bins=64)
    assert np.array_equal(served_rows(tmp_path / "index", arrays)["targets"], expected["targets"])
    assert len(open_corpus(directories)) == 400


def test_an_existing_index_is_replaced_whole_or_kept(tmp_path, capsys):
    paths, _, lengths_paths = write_files(tmp_path, seed=4)
    out_dir = tmp_path / "index"
    assert run(["pack", *paths, *lengths_paths, "--index-out", out_dir, *INDEX_ARGS], capsys)[0] == 0
    before = {name: (out_dir / name).read_bytes() for name in os.listdir(out_dir)}
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    status, _, err = run(["pack", paths[0], tmp_path / "broken.npz", "--index-out", out_dir, *INDEX_ARGS], capsys)
    assert status == 1 and "broken.npz" in err
    assert {name: (out_dir / name).read_bytes() for name in os.listdir(out_dir)} == before
    assert sorted(os.listdir(tmp_path)) == sorted(["broken.npz", "index", *[p.name for p in tmp_path.glob("part*")]])
    assert run(["pack", paths[0], "--index-out", out_dir, *INDEX_ARGS, "--seq-len", "64"], capsys)[0] == 0
    assert load_index(out_dir).arguments["seq_len"] == 64


@pytest.mark.parametrize("extra,message", [
    (["--index-out", "{tmp}/i"], "--lengths: expected one per .npy input"),
    (["--index-out", "{tmp}/i", "--lengths", "{tmp}/part1.lengths.npy", "-o", "{tmp}/x.npz"], "--output: not with"),
    (["--index-out", "{tmp}/i", "--lengths", "{tmp}/part1.lengths.npy", "--workers", "2"], "--workers: goes with"),
    (["--index-out", "{tmp}/i", "--lengths", "{tmp}/part1.lengths.npy", "--algorithm", "first_fit_decreasing"],
     "--bins all"),
    (["--index-out", "{tmp}/i", "--lengths", "{tmp}/part1.lengths.npy", "--algorithm", "concat_then_split",
      "--bins", "all"], "concat_then_split"),
    (["--index-out", "{tmp}/missing/i", "--lengths", "{tmp}/part1.lengths.npy"], "does not exist"),
    (["--lengths", "{tmp}/part1.lengths.npy"], "several files pack into a packing index with --index-out"),
    (["--lengths", "{tmp}/part1.lengths.npy", "--engine", "processes"], "--engine: goes with --index-out"),
])
def test_bad_options_are_one_line(tmp_path, capsys, extra, message):
    paths, _, _ = write_files(tmp_path, sizes=(20, 20))
    status, _, err = run(["pack", *paths, *INDEX_ARGS, *[a.format(tmp=tmp_path) for a in extra]], capsys)
    assert status == 1 and err.count("\n") == 1 and message in err, err


def test_what_an_index_cannot_hold_is_refused(tmp_path, capsys):
    tokens = np.arange(10, dtype=np.int32)
    np.savez(tmp_path / "masked.npz", tokens=tokens, lengths=[4, 6], loss_mask=np.ones(10, np.int32))
    status, _, err = run(["pack", tmp_path / "masked.npz", "--index-out", tmp_path / "i", *INDEX_ARGS], capsys)
    assert status == 1 and "holds no loss masks" in err
    np.savez(tmp_path / "empty.npz", tokens=np.zeros(0, np.int32), lengths=np.zeros(0, np.int64))
    status, _, err = run(["pack", tmp_path / "empty.npz", "--index-out", tmp_path / "i", *INDEX_ARGS], capsys)
    assert status == 1 and "--allow-empty" in err and not (tmp_path / "i").exists()
    status, _, err = run(["pack", tmp_path / "empty.npz", "--index-out", tmp_path / "i", *INDEX_ARGS,
                          "--allow-empty"], capsys)
    assert status == 0 and load_index(tmp_path / "i").num_rows == 0


def test_the_cli_spells_the_engines_of_the_jobs_module():
    assert cli_pack.ENGINES == jobs.ENGINES


def test_run_tasks_keeps_task_order_and_raises_the_first_failure():
    assert jobs.run_tasks(divmod, [(7, 2), (9, 4)]) == [(3, 1), (2, 1)]
    with pytest.raises(ZeroDivisionError):
        jobs.run_tasks(divmod, [(7, 2), (1, 0)])
    with pytest.raises(ValueError, match="workers"):
        jobs.run_tasks(divmod, [(7, 2)], workers=2)
    with pytest.raises(ValueError, match="engine"):
        jobs.run_tasks(divmod, [(7, 2)], engine="spark")
