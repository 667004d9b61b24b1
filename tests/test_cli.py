"""The ``xbatch`` command: info, pack on every input format, bench, and its error lines."""

import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xbatch
from xbatch import cli
from xbatch.cli import bench as cli_bench
from xbatch.cli import info as cli_info
from xbatch.cli import pack as cli_pack
from xbatch.corpus import SYNTHETIC_EOD, synthetic_corpus
from xbatch.packing import pack_documents

# Small documents with token id 0 inside (a token like any other) and one longer than a row.
DOCUMENTS = [[5, 6, 7], [0, 9], [3] * 20, [], [8, 8, 0, 8]]
SEQ_LEN = 8
EOD = 2
PACK_ARGS = ["--seq-len", str(SEQ_LEN), "--eod", str(EOD), "--bins", "4", "--no-progress"]


def run(argv, capsys):
    """(exit status, stdout, stderr) of ``xbatch argv``, in process."""
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def expected_fields(**options):
    tokens = np.concatenate([np.array(d, dtype=np.int32) for d in DOCUMENTS])
    lengths = [len(d) for d in DOCUMENTS]
    batch = pack_documents(tokens, lengths, seq_len=SEQ_LEN, eod_token_id=EOD, num_packing_bins=4, **options)
    return {name: getattr(batch, name) for name in cli.ROW_FIELDS}


def assert_packed_like_pack_documents(output, **options):
    with np.load(output) as packed:
        assert sorted(packed.files) == sorted(cli.ROW_FIELDS)
        for name, expected in expected_fields(**options).items():
            np.testing.assert_array_equal(packed[name], expected, err_msg=name)


def test_info_names_version_backend_and_extension(capsys):
    status, out, _ = run(["info"], capsys)
    assert status == 0
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["xbatch"] == xbatch.__version__
    assert lines["backend"] == xbatch.BACKEND
    assert lines["numpy"] == np.__version__
    assert set(lines) >= {"extension", "jax", "grain", "python"}
    compiled = xbatch._backend.compiled_module()
    if xbatch.BACKEND == "cython":
        assert lines["extension"] == compiled.__file__
    else:
        assert xbatch._backend.FALLBACK_REASON in lines["extension"]


def test_info_reports_missing_libraries(monkeypatch, capsys):
    real_version = cli_info.importlib.metadata.version

    def version(name):
        if name == "pyarrow":
            raise cli_info.importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(cli_info.importlib.metadata, "version", version)
    _, out, _ = run(["info"], capsys)
    assert "pyarrow    not installed" in out.splitlines()


def test_pack_builtin_corpus_summary_and_row_table(tmp_path, capsys):
    output = tmp_path / "packed.npz"
    status, out, err = run(["pack", "--num-documents", "2000", "--no-progress", "-o", str(output)], capsys)
    assert status == 0, err
    corpus = synthetic_corpus(2000)
    batch, stats = pack_documents(corpus.tokens, corpus.lengths, seq_len=2048, eod_token_id=SYNTHETIC_EOD,
                                  num_packing_bins=64, return_stats=True)
    assert f"packed 2,000 documents ({corpus.num_tokens:,} tokens)" in out
    assert f"rows                {stats.rows:,} of 2,048 tokens" in out
    assert f"fill ratio          {stats.fill_ratio:.2%}" in out
    assert stats.documents_split > 0 and f"documents split     {stats.documents_split:,}" in out
    assert "documents/s" in out and "tokens/s" in out and f"backend             {xbatch.BACKEND}" in out
    table = out[out.index("row 0, columns"):].splitlines()
    assert [line.split()[0] for line in table[1:]] == [*cli.ROW_FIELDS, "doc"]
    with np.load(output) as packed:  # the streaming packer gives pack_documents' rows
        for name in cli.ROW_FIELDS:
            np.testing.assert_array_equal(packed[name], getattr(batch, name), err_msg=name)


def test_render_row_shows_the_seed_example():
    batch = pack_documents(np.array([1, 2, 3, 4, 5, 6, 7]), [3, 2, 2], seq_len=8, eod_token_id=9)
    fields = {name: getattr(batch, name) for name in cli.ROW_FIELDS}
    lines = cli.render_row(fields, 0, eod_token_id=9).splitlines()
    assert lines[0] == "row 0, columns 0..7 of 8 (E = end of document, id 9):"
    assert lines[1:] == [
        "  targets               [1, 2, 3, E, 4, 5, E, 0]",
        "  inputs                [E, 1, 2, 3, E, 4, 5, E]",
        "  targets_segmentation  [1, 1, 1, 1, 2, 2, 2, 0]",
        "  inputs_segmentation   [1, 1, 1, 1, 2, 2, 2, 0]",
        "  targets_position      [0, 1, 2, 3, 0, 1, 2, 0]",
        "  inputs_position       [0, 1, 2, 3, 0, 1, 2, 0]",
        "  doc borders           [1, 0, 0, 0, 1, 0, 0, 1]",
    ]


def test_render_row_centres_the_first_border():
    fields = {name: np.zeros((1, 100), np.int32) for name in cli.ROW_FIELDS}
    fields["inputs_segmentation"][0, 60:] = 1
    header = cli.render_row(fields, 0, eod_token_id=1, width=16).splitlines()[0]
    assert header.startswith("row 0, columns 52..67 of 100")


def test_synthetic_corpus_is_deterministic():
    first, second = synthetic_corpus(500, seed=3), synthetic_corpus(500, seed=3)
    np.testing.assert_array_equal(first.tokens, second.tokens)
    np.testing.assert_array_equal(first.lengths, second.lengths)
    assert first.lengths.sum() == first.num_tokens and first.lengths.min() >= 1
    assert first.tokens.min() >= 2  # neither padding 0 nor the EOD 1 inside documents
    assert not np.array_equal(synthetic_corpus(500, seed=4).lengths, first.lengths)


def write_npz(path):
    tokens = np.concatenate([np.array(d, dtype=np.int64) for d in DOCUMENTS])
    np.savez(path, tokens=tokens, lengths=[len(d) for d in DOCUMENTS])


def write_jsonl(path, field=None):
    lines = [json.dumps(d if field is None else {field: d, "id": i}) for i, d in enumerate(DOCUMENTS)]
    text = "\n".join(lines[:2] + [""] + lines[2:]) + "\n"  # a blank line is no document
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


@pytest.mark.parametrize("algorithm", ["first_fit", "best_fit"])
@pytest.mark.parametrize("long_documents", ["split", "truncate"])
def test_pack_npz(tmp_path, capsys, algorithm, long_documents):
    write_npz(tmp_path / "corpus.npz")
    output = tmp_path / "out.npz"
    argv = ["pack", str(tmp_path / "corpus.npz"), *PACK_ARGS, "-o", str(output),
            "--algorithm", algorithm, "--long-documents", long_documents]
    status, out, err = run(argv, capsys)
    assert status == 0, err
    assert_packed_like_pack_documents(output, algorithm=algorithm, long_documents=long_documents)
    truncated = 21 - SEQ_LEN if long_documents == "truncate" else 0
    assert f"tokens truncated    {truncated}\n" in out
    assert f"documents split     {int(long_documents == 'split')} " in out


def test_pack_npy_with_lengths(tmp_path, capsys):
    np.save(tmp_path / "tokens.npy", np.concatenate([np.array(d, dtype=np.int32) for d in DOCUMENTS]))
    np.save(tmp_path / "lengths.npy", np.array([len(d) for d in DOCUMENTS]))
    output = tmp_path / "out.npz"
    argv = ["pack", str(tmp_path / "tokens.npy"), "--lengths", str(tmp_path / "lengths.npy"), *PACK_ARGS,
            "-o", str(output)]
    assert run(argv, capsys)[0] == 0
    assert_packed_like_pack_documents(output)


@pytest.mark.parametrize("name,field", [("c.jsonl", None), ("c.jsonl", "input_ids"), ("c.jsonl.gz", "ids")])
def test_pack_jsonl(tmp_path, capsys, name, field):
    write_jsonl(tmp_path / name, field)
    output = tmp_path / "out.npz"
    argv = ["pack", str(tmp_path / name), *PACK_ARGS, "-o", str(output)] + (["--field", field] if field else [])
    status, _, err = run(argv, capsys)
    assert status == 0, err
    assert_packed_like_pack_documents(output)


def test_pack_parquet(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"id": list(range(len(DOCUMENTS))), "tokens": pa.array(DOCUMENTS, pa.list_(pa.int32()))})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=2)  # several batches
    output = tmp_path / "out.npz"
    status, _, err = run(["pack", str(tmp_path / "c.parquet"), *PACK_ARGS, "-o", str(output)], capsys)
    assert status == 0, err
    assert_packed_like_pack_documents(output)
    status, _, err = run(["pack", str(tmp_path / "c.parquet"), *PACK_ARGS, "--field", "id"], capsys)
    assert status == 1 and "column 'id' is int64, expected a list of integers" in err


@pytest.mark.parametrize("algorithm", ["first_fit_decreasing", "best_fit_decreasing"])
def test_pack_whole_corpus(tmp_path, capsys, algorithm):
    write_npz(tmp_path / "corpus.npz")
    output = tmp_path / "out.npz"
    argv = ["pack", str(tmp_path / "corpus.npz"), "--seq-len", "8", "--eod", "2", "--bins", "all",
            "--algorithm", algorithm, "-o", str(output)]
    assert run(argv, capsys)[0] == 0
    tokens = np.concatenate([np.array(d, dtype=np.int32) for d in DOCUMENTS])
    batch = pack_documents(tokens, [len(d) for d in DOCUMENTS], seq_len=8, eod_token_id=2, algorithm=algorithm)
    with np.load(output) as packed:
        np.testing.assert_array_equal(packed["targets"], batch.targets)


def bad_cases(tmp_path):
    """(argv, words the one error line must contain) for bad files and options."""
    write_npz(tmp_path / "ok.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "keys.npz", ids=np.arange(3))
    np.savez(tmp_path / "sums.npz", tokens=np.arange(5), lengths=[2, 2])
    np.savez(tmp_path / "floats.npz", tokens=np.ones(3), lengths=[3])
    (tmp_path / "bad.jsonl").write_text("[1, 2]\n{oops\n")
    (tmp_path / "floats.jsonl").write_text("[1, 2.5]\n")
    write_jsonl(tmp_path / "objects.jsonl", "input_ids")
    (tmp_path / "c.txt").write_text("1 2 3\n")
    np.save(tmp_path / "tokens.npy", np.arange(4))
    np.savez(tmp_path / "objects.npz", tokens=np.array([[1], [2, 3]], dtype=object), lengths=[1, 2])
    np.save(tmp_path / "objects.npy", np.array([[1], [2, 3]], dtype=object))
    np.savez(tmp_path / "negative.npz", tokens=[5, 6, 7, -1], lengths=[2, 2])
    (tmp_path / "negative.jsonl").write_text("[1, 2]\n\n[-5, 3]\n")
    (tmp_path / "huge.jsonl").write_text("[1, 2]\n[3, %d]\n" % 2**70)
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n\n")
    (tmp_path / "hollow.jsonl").write_text("[]\n[]\n")
    ok = str(tmp_path / "ok.npz")
    return [
        (["pack", str(tmp_path / "missing.npz"), "--eod", "1"], "no such file"),
        (["pack", str(tmp_path / "garbage.npz"), "--eod", "1"], "cannot read it as an .npz archive (not a zip file"),
        (["pack", str(tmp_path / "objects.npz"), "--eod", "1"], "holds Python objects (pickled data)"),
        (["pack", str(tmp_path / "objects.npy"), "--eod", "1", "--lengths", str(tmp_path / "tokens.npy")],
         "holds Python objects (pickled data)"),
        (["pack", str(tmp_path), "--eod", "1"], "is a directory; expected a corpus file"),
        (["pack", ok, "--eod", "1", "--lengths", str(tmp_path / "tokens.npy")], "--lengths goes only with a .npy"),
        (["pack", str(tmp_path / "negative.npz"), "--eod", "1"],
         "negative.npz: document 1: token ids must be in [0, 2**31); its token 1 is -1"),
        (["pack", str(tmp_path / "negative.jsonl"), "--eod", "1"],
         "negative.jsonl: document 1 (line 3): token ids must be in [0, 2**31); its token 0 is -5"),
        (["pack", str(tmp_path / "huge.jsonl"), "--eod", "1"], "huge.jsonl: line 2: token ids must be in [0, 2**31)"),
        (["pack", str(tmp_path / "empty.jsonl"), "--eod", "1"], "empty.jsonl: no documents; pass --allow-empty"),
        (["pack", str(tmp_path / "blank.jsonl"), "--eod", "1"], "blank.jsonl: no documents; pass --allow-empty"),
        (["pack", str(tmp_path / "hollow.jsonl"), "--eod", "1"], "hollow.jsonl: 2 documents but no tokens"),
        (["pack", ok, "--eod", "1", "--seq-len", "10000000000"], "argument --seq-len: expected an integer in [1, 2**31)"),
        (["pack", "--seq-len", "2000000000"], "more than the"),
        (["pack", str(tmp_path / "keys.npz"), "--eod", "1"], "expected arrays 'tokens' and 'lengths'"),
        (["pack", str(tmp_path / "sums.npz"), "--eod", "1"], "sum to 4 tokens but 'tokens' holds 5"),
        (["pack", str(tmp_path / "floats.npz"), "--eod", "1"], "1-d integer array"),
        (["pack", str(tmp_path / "bad.jsonl"), "--eod", "1"], "bad.jsonl:2: not valid JSON"),
        (["pack", str(tmp_path / "floats.jsonl"), "--eod", "1"], "floats.jsonl:1: expected a list of integer"),
        (["pack", str(tmp_path / "objects.jsonl"), "--eod", "1"], "name its token-list field with --field"),
        (["pack", str(tmp_path / "objects.jsonl"), "--eod", "1", "--field", "x"], "no field 'x'"),
        (["pack", str(tmp_path / "c.txt"), "--eod", "1"], "unknown corpus format"),
        (["pack", str(tmp_path / "tokens.npy"), "--eod", "1"], "--lengths LENGTHS.npy"),
        (["pack", ok], "--eod: required with a corpus file"),
        (["pack", ok, "--eod", "1", "--seq-len", "0"], "argument --seq-len: expected an integer >= 1"),
        (["pack", ok, "--eod", "x"], "argument --eod: expected a token id"),
        (["pack", ok, "--eod", "1", "--bins", "many"], "argument --bins"),
        (["pack", ok, "--eod", "1", "--algorithm", "next_fit"], "invalid choice: 'next_fit'"),
        (["pack", ok, "--eod", "1", "--algorithm", "best_fit_decreasing"], "use it with --bins all"),
        (["pack", ok, "--eod", "1", "--long-documents", "error", "--seq-len", "8"],
         "ok.npz: document 2 has 20 tokens, which with its EOD exceed --seq-len 8"),
        (["pack", ok, "--eod", "1", "-o", str(tmp_path / "out.txt")], "expected a file name ending in .npz"),
        (["pack", ok, "--eod", "1", "-o", str(tmp_path / "no" / "out.npz")], "does not exist"),
        (["pack", "--num-documents", "0"], "--num-documents: expected an integer >= 1"),
        (["pack", "--frobnicate"], "xbatch pack: error: unrecognized arguments: --frobnicate (see xbatch pack --help)"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ]


def test_bad_files_and_options_give_one_line_and_exit_1(tmp_path, capsys):
    for argv, words in bad_cases(tmp_path):
        status, _, err = run(argv, capsys)
        assert status == 1, argv
        assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)
        assert words in err, (argv, err)
        assert "pickle" not in err.replace("(pickled data)", ""), (argv, err)  # never advise unsafe loading


def test_bad_file_from_the_console_has_no_traceback(tmp_path):
    (tmp_path / "bad.jsonl").write_text("[1, 2]\nnot json\n")
    result = subprocess.run([sys.executable, "-m", "xbatch", "pack", str(tmp_path / "bad.jsonl"), "--eod", "1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("xbatch pack: error: ") and result.stderr.count("\n") == 1


def test_pack_writes_the_table_to_the_given_stream():
    out = io.StringIO()
    assert cli.main(["pack", "--num-documents", "50", "--no-progress"], out=out) == 0
    assert "doc borders" in out.getvalue()


def test_bench_quick_prints_ratios_and_spreads(monkeypatch, capsys):
    # Smaller than --quick's corpus keeps the test fast; the code path is the same.
    monkeypatch.setattr(cli_bench, "bench_corpora", lambda _: {"tiny": synthetic_corpus(300)})
    status, out, err = run(["bench", "--quick", "--min-time", "0"], capsys)
    assert status == 0, err
    lines = out.splitlines()
    assert "median of >= 3 runs and >= 0.2 s per pipeline" in lines[0]
    assert lines[1].split() == ["case", "grain", "docs/s", "spread", "xbatch", "docs/s", "spread", "speed-up"]
    assert len(lines) == 2 + 4
    for line in lines[2:]:
        *_, grain_spread, _, xbatch_spread, speedup = line.split()
        assert speedup.endswith("x") and float(speedup[:-1]) > 0
        assert grain_spread.endswith("%") and xbatch_spread.endswith("%")


def test_bench_prints_each_case_as_it_is_measured(monkeypatch):
    monkeypatch.setattr(cli_bench, "bench_corpora", lambda _: {"tiny": synthetic_corpus(100)})
    seen = []

    class Out(io.StringIO):
        def write(self, text):
            seen.append(text)
            return super().write(text)

    real = cli_bench.compare_with_grain

    def spy(*args, on_result, **kwargs):  # each result must be out before the next case starts
        def check(result):
            on_result(result)
            assert result.case in "".join(seen)
        return real(*args, on_result=check, **kwargs)

    monkeypatch.setattr(cli_bench, "compare_with_grain", spy)
    assert cli.main(["bench", "--repeats", "1", "--min-time", "0"], out=Out()) == 0


def test_min_time_repeats_until_it_is_reached():
    from xbatch.compare import run_seconds

    times = run_seconds(lambda: None, 2, min_seconds=0.01)
    assert len(times) >= 2 and sum(times) >= 0.01


def test_readme_example_runs_and_yields_an_llm_batch():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    example = readme.split("## End to end")[1].split("```python\n")[1].split("```")[0]
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    batch = namespace["batch"]
    assert type(batch).__name__ == "LLMBatch" and batch.inputs.shape == (8, 2048)
    assert batch.inputs.dtype == np.int32 and (batch.inputs[:, 0] == 2).all()  # rows start with the EOD


def test_error_mode_names_the_document_in_the_whole_corpus(tmp_path, capsys):
    # Document 5000 lies deep inside the second chunk the streaming packer is given.
    documents = [[3, 4]] * 6000
    documents[5000] = [3] * 20
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(d) for d in documents) + "\n")
    argv = ["pack", str(tmp_path / "c.jsonl"), *PACK_ARGS, "--long-documents", "error"]
    status, _, err = run(argv, capsys)
    assert status == 1
    assert "c.jsonl: document 5000 (line 5001) has 20 tokens, which with its EOD exceed --seq-len 8" in err


def test_empty_corpus_with_allow_empty_writes_zero_rows(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("\n")
    output = tmp_path / "out.npz"
    status, out, err = run(["pack", str(tmp_path / "empty.jsonl"), *PACK_ARGS, "--allow-empty", "-o", str(output)],
                           capsys)
    assert status == 0, err
    with np.load(output) as packed:
        assert all(packed[name].shape == (0, SEQ_LEN) for name in cli.ROW_FIELDS)


def test_parquet_null_token_names_its_row(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"tokens": pa.array([[1, 2], [3, None, 4], [5]], pa.list_(pa.int32()))})
    pq.write_table(table, tmp_path / "c.parquet")
    status, _, err = run(["pack", str(tmp_path / "c.parquet"), *PACK_ARGS], capsys)
    assert status == 1 and "c.parquet: row 1 of column 'tokens' holds a null token id" in err
    assert "zero_copy" not in err


@pytest.mark.parametrize("ratio,text", [(0.999999, "99.99+%"), (1.0, "100.00%"), (0.98051, "98.05%"),
                                        (1e-7, "0.00+%"), (0.0, "0.00%")])
def test_fill_ratio_never_rounds_to_full_or_empty(ratio, text):
    assert cli_pack.percent(ratio) == text


def console(argv, env=None, hide=()):
    """(status, stdout, stderr) of ``python -m xbatch argv`` with ``hide``'s modules missing."""
    code = (
        "import importlib.abc, sys\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        f"        if name.split('.')[0] in {tuple(hide)!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from xbatch.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    environment = {k: v for k, v in os.environ.items() if k != "XBATCH_BACKEND"}
    result = subprocess.run([sys.executable, "-c", code, *argv], env={**environment, **(env or {})},
                            capture_output=True, text=True, timeout=120)
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize("command", [["info"], ["pack", "--num-documents", "10"], ["bench", "--quick"]])
def test_a_bad_backend_variable_is_one_line_and_info_reports_it(command):
    status, out, err = console(command, env={"XBATCH_BACKEND": "bogus"})
    reason = "XBATCH_BACKEND='bogus' is not a backend"
    if command == ["info"]:
        assert status == 0 and err == "", err
        assert f"backend    none: {reason}" in out
    else:
        assert status == 1 and err == f"xbatch {command[0]}: error: {reason}; expected one of ('cython', 'numpy') or unset\n"


def test_pack_without_grain_packs_the_same_rows(tmp_path):
    argv = ["pack", "--num-documents", "300", "--bins", "8", "--no-progress", "-o"]
    status, _, err = console([*argv, str(tmp_path / "without.npz")], hide=("grain",))
    assert status == 0, err
    assert cli.main([*argv, str(tmp_path / "with.npz")]) == 0
    with np.load(tmp_path / "without.npz") as without, np.load(tmp_path / "with.npz") as with_grain:
        for name in cli.ROW_FIELDS:
            np.testing.assert_array_equal(without[name], with_grain[name], err_msg=name)


@pytest.mark.parametrize("command,hide,missing", [
    (["pack", "--num-documents", "10"], ("grain", "jax"), "jax"),
    (["bench", "--quick"], ("grain",), "grain"),
])
def test_a_missing_library_names_what_to_install(command, hide, missing):
    status, _, err = console(command, hide=hide)
    assert status == 1 and err.count("\n") == 1, err
    assert f"this needs {missing}, which is not installed: pip install {missing}" in err and "[cli] extra" in err
