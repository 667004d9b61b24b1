"""xbatch pack reads every corpus-source format; xbatch convert writes xbatch's own."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from xbatch.cli import main
from xbatch.sources import open_corpus
from xbatch.sources.format_megatron import write_megatron


@pytest.fixture
def documents():
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, 1000, size=n).astype(np.int32) for n in rng.integers(0, 40, size=200)]
    docs[3] = np.zeros(3, np.int32)
    return docs


def run(*argv):
    out = io.StringIO()
    code = main(list(map(str, argv)), out=out)
    return code, out.getvalue()


def packed(tmp_path, corpus, name):
    output = tmp_path / f"{name}.npz"
    code, text = run("pack", corpus, "--eod", 1, "--seq-len", 64, "--no-progress", "-o", output)
    assert code == 0, text
    with np.load(output) as archive:
        return {key: archive[key] for key in archive.files}


def test_pack_reads_every_format_and_convert_writes_ours(tmp_path, documents, capsys):
    lengths = [len(d) for d in documents]
    np.savez(tmp_path / "c.npz", tokens=np.concatenate(documents), lengths=lengths)
    want = packed(tmp_path, tmp_path / "c.npz", "npz")
    table = pa.table({"ids": pa.array([d.tolist() for d in documents], pa.list_(pa.int32()))})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=50)
    with ipc.new_file(tmp_path / "c.arrow", table.schema) as writer:
        writer.write_table(table, max_chunksize=64)
    write_megatron(tmp_path / "m", documents, dtype=np.uint16)
    code, text = run("convert", tmp_path / "c.parquet", tmp_path / "c.xbatch", "--dtype", "uint16")
    assert code == 0 and "200 documents" in text, text
    assert open_corpus(tmp_path / "c.xbatch").tokens.dtype == np.uint16
    for corpus in ("c.arrow", "m.bin", "m", "c.xbatch"):
        got = packed(tmp_path, tmp_path / corpus, corpus.replace(".", "_"))
        for key, value in want.items():
            np.testing.assert_array_equal(got[key], value)
    code, text = run("convert", tmp_path / "c.npz", tmp_path / "c.xbatch")
    assert code == 1 and "already exists (--overwrite replaces it)" in capsys.readouterr().err
    code, _ = run("convert", tmp_path / "c.npz", tmp_path / "c.xbatch", "--overwrite")
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_convert_errors(tmp_path, capsys):
    (tmp_path / "bad.idx").write_bytes(b"nonsense-header-bytes-here-and-more-of-them")
    (tmp_path / "bad.bin").write_bytes(b"")
    code, _ = run("convert", tmp_path / "bad.idx", tmp_path / "out")
    assert code == 1
    assert "not a Megatron index" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_pack_trains_only_on_an_xbatch_corpus_loss_mask_column(tmp_path, documents):
    from xbatch.sources import write_xbatch_corpus

    tokens = np.concatenate(documents)
    lengths = [len(d) for d in documents]
    mask = np.random.default_rng(1).integers(0, 2, size=tokens.shape[0]).astype(np.int8)
    write_xbatch_corpus(tmp_path / "masked", tokens, lengths=lengths, token_columns={"loss_mask": mask})
    np.savez(tmp_path / "masked.npz", tokens=tokens, lengths=lengths, loss_mask=mask)
    from_directory = packed(tmp_path, tmp_path / "masked", "from_directory")
    from_npz = packed(tmp_path, tmp_path / "masked.npz", "from_npz")
    assert from_directory.keys() == from_npz.keys()
    for key in from_npz:
        np.testing.assert_array_equal(from_directory[key], from_npz[key])
    assert (from_npz["targets_segmentation"] != from_npz["inputs_segmentation"]).any()
