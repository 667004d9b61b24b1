"""``xbatch pack`` with loss masks (JSONL prompts, Parquet/JSONL mask columns, .npz arrays) and a row cap."""

import json

import numpy as np
import pytest

from xbatch import cli
from xbatch.packing import pack_documents
from xbatch.packing.pieces import BULK_ALGORITHMS

PROMPTS = [[5, 6], [], [0, 1, 1], [4] * 9, [7]]
ANSWERS = [[8, 9, 10], [3], [0], [6] * 5, []]
SEQ_LEN = 8
EOD = 2
PACK_ARGS = ["--seq-len", str(SEQ_LEN), "--eod", str(EOD), "--bins", "3", "--no-progress"]


def run(argv, capsys):
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def expected(**options):
    """pack_documents on the prompt + answer documents, prompts not trained on."""
    docs = [p + a for p, a in zip(PROMPTS, ANSWERS)]
    tokens = np.array([t for d in docs for t in d], np.int32)
    batch, stats = pack_documents(tokens, [len(d) for d in docs], seq_len=SEQ_LEN, eod_token_id=EOD,
                                  num_packing_bins=3, prompt_lengths=[len(p) for p in PROMPTS],
                                  return_stats=True, **options)
    return batch, stats


def assert_rows(output, batch):
    with np.load(output) as packed:
        for name in cli.ROW_FIELDS:
            np.testing.assert_array_equal(packed[name], getattr(batch, name), err_msg=name)


@pytest.mark.parametrize("extra, options", [
    ([], {}),
    (["--no-eod-loss", "--shift", "targets"], {"train_on_eod": False, "shift": "targets"}),
    (["--max-documents-per-row", "1", "--long-documents", "truncate"],
     {"max_documents_per_row": 1, "long_documents": "truncate"}),
])
def test_jsonl_prompt_and_completion(tmp_path, capsys, extra, options):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in zip(PROMPTS, ANSWERS)))
    output = tmp_path / "out.npz"
    status, out, err = run(["pack", str(path), "--field", "answer", "--prompt-field", "prompt", *PACK_ARGS,
                            "-o", str(output), *extra], capsys)
    assert status == 0, err
    batch, stats = expected(**options)
    assert_rows(output, batch)
    assert stats.loss_tokens == np.count_nonzero(batch.targets_segmentation)
    assert f"loss tokens         {stats.loss_tokens:,} " in out
    if "max_documents_per_row" in options:
        assert batch.inputs_segmentation.max() == 1 and "documents per row   at most 1" in out


def test_jsonl_and_parquet_mask_columns_and_npz_arrays(tmp_path, capsys):
    docs = [p + a for p, a in zip(PROMPTS, ANSWERS)]
    masks = [[0] * len(p) + [1] * len(a) for p, a in zip(PROMPTS, ANSWERS)]
    batch, _ = expected()
    jsonl = tmp_path / "masked.jsonl"
    jsonl.write_text("".join(json.dumps({"ids": d, "mask": m}) + "\n" for d, m in zip(docs, masks)))
    status, _, err = run(["pack", str(jsonl), "--field", "ids", "--mask-field", "mask", *PACK_ARGS,
                          "-o", str(tmp_path / "a.npz")], capsys)
    assert status == 0, err
    assert_rows(tmp_path / "a.npz", batch)
    npz = tmp_path / "corpus.npz"
    np.savez(npz, tokens=np.array([t for d in docs for t in d], np.int32), lengths=[len(d) for d in docs],
             loss_mask=np.array([v for m in masks for v in m], np.uint8))
    status, _, err = run(["pack", str(npz), *PACK_ARGS, "-o", str(tmp_path / "b.npz")], capsys)
    assert status == 0, err
    assert_rows(tmp_path / "b.npz", batch)
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"ids": pa.array(docs, pa.list_(pa.int32())), "mask": pa.array(masks, pa.list_(pa.int8())),
                      "prompt": pa.array(PROMPTS, pa.list_(pa.int64())),
                      "answer": pa.array(ANSWERS, pa.list_(pa.int32()))})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=2)
    for flags in (["--field", "ids", "--mask-field", "mask"], ["--field", "answer", "--prompt-field", "prompt"]):
        status, _, err = run(["pack", str(tmp_path / "c.parquet"), *flags, *PACK_ARGS, "-o", str(tmp_path / "c.npz")],
                             capsys)
        assert status == 0, err
        assert_rows(tmp_path / "c.npz", batch)
    # Whole-corpus packing reads the same masks.
    status, _, err = run(["pack", str(tmp_path / "c.parquet"), "--field", "ids", "--mask-field", "mask",
                          "--seq-len", "8", "--eod", "2", "--bins", "all", "-o", str(tmp_path / "d.npz")], capsys)
    assert status == 0, err
    with np.load(tmp_path / "d.npz") as packed:
        np.testing.assert_array_equal(packed["targets_segmentation"] != 0,
                                      pack_documents(np.array([t for d in docs for t in d]), [len(d) for d in docs],
                                                     seq_len=8, eod_token_id=2, loss_mask=np.concatenate(masks))
                                      .targets_segmentation != 0)


def test_mask_options_errors(tmp_path, capsys):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"ids": [1, 2, 3], "mask": [1, 0], "p": [4]}) + "\n")
    cases = [
        (["--field", "ids", "--mask-field", "mask"], "c.jsonl:1: 'mask' must hold 0 or 1 for each of the 3 tokens"),
        (["--prompt-field", "p"], "--prompt-field: needs --field"),
        (["--field", "ids", "--prompt-field", "p", "--mask-field", "mask"], "at most one"),
        (["--field", "ids", "--prompt-field", "q"], "no field 'q'"),
        (["--field", "ids", "--max-documents-per-row", "0"], "--max-documents-per-row"),
    ]
    for flags, message in cases:
        status, _, err = run(["pack", str(jsonl), *flags, *PACK_ARGS], capsys)
        assert status == 1 and message in err, (flags, err)
    jsonl.write_text(json.dumps({"ids": [1, 2], "mask": [1, 2]}) + "\n")
    status, _, err = run(["pack", str(jsonl), "--field", "ids", "--mask-field", "mask", *PACK_ARGS], capsys)
    assert status == 1 and "c.jsonl:1: 'mask' must hold 0 or 1" in err
    npz = tmp_path / "c.npz"
    np.savez(npz, tokens=[1, 2, 3], lengths=[3], loss_mask=[1, 2, 0])
    for bins in ("3", "all"):  # streaming and bulk
        status, _, err = run(["pack", str(npz), *PACK_ARGS, "--bins", bins], capsys)
        assert status == 1 and "loss_mask: expected 0 or 1 per token, got 2 at token 1" in err, err
    np.savez(npz, tokens=[1, 2, 3], lengths=[3], prompt_lengths=[4])
    status, _, err = run(["pack", str(npz), *PACK_ARGS], capsys)
    assert status == 1 and "prompt_lengths: expected 0 <= prompt length <= document length" in err, err
    status, _, err = run(["pack", "--mask-field", "m", "--no-progress"], capsys)
    assert status == 1 and "need a CORPUS file" in err


@pytest.mark.parametrize("algorithm", BULK_ALGORITHMS)
def test_every_algorithm_takes_masks_from_every_input(tmp_path, capsys, algorithm):
    """JSONL prompts (--prompt-field), a Parquet mask column (--mask-field) and an xbatch
    corpus's loss_mask column give pack_documents' rows for the same masks, with every
    algorithm (or, where the algorithm refuses masks, its error)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from xbatch.sources import write_xbatch_corpus

    rng = np.random.default_rng(4)
    prompts = [rng.integers(0, 50, rng.integers(0, 12)).tolist() for _ in range(60)]
    answers = [rng.integers(0, 50, rng.integers(0, 15)).tolist() for _ in range(60)]
    docs = [p + a for p, a in zip(prompts, answers)]
    masks = [[0] * len(p) + [1] * len(a) for p, a in zip(prompts, answers)]
    tokens = np.array([t for d in docs for t in d], np.int32)
    lengths = np.array([len(d) for d in docs], np.int64)
    flat_mask = np.array([v for m in masks for v in m], np.int8)
    (tmp_path / "chat.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in zip(prompts, answers)))
    pq.write_table(pa.table({"ids": pa.array(docs, pa.list_(pa.int32())), "mask": pa.array(masks, pa.list_(pa.int8()))}),
                   tmp_path / "masked.parquet", row_group_size=16)
    write_xbatch_corpus(tmp_path / "corpus", tokens, lengths=lengths, token_columns={"loss_mask": flat_mask})
    inputs = {
        "jsonl --prompt-field": [str(tmp_path / "chat.jsonl"), "--field", "answer", "--prompt-field", "prompt"],
        "parquet --mask-field": [str(tmp_path / "masked.parquet"), "--field", "ids", "--mask-field", "mask"],
        "xbatch corpus loss_mask": [str(tmp_path / "corpus")],
    }
    bins = "all" if algorithm.endswith("_decreasing") else "3"
    for extra, options in (([], {}), (["--no-eod-loss", "--shift", "targets", "--max-documents-per-row", "2"],
                                      {"train_on_eod": False, "shift": "targets", "max_documents_per_row": 2})):
        try:
            batch = pack_documents(tokens, lengths, seq_len=SEQ_LEN, eod_token_id=EOD, algorithm=algorithm,
                                   num_packing_bins=None if bins == "all" else 3, loss_mask=flat_mask, **options)
        except ValueError:  # an algorithm without masks (yet): the CLI says so, no rows
            batch = None
        for name, source in inputs.items():
            output = tmp_path / "out.npz"
            status, out, err = run(["pack", *source, "--seq-len", str(SEQ_LEN), "--eod", str(EOD), "--bins", bins,
                                    "--algorithm", algorithm, "--no-progress", "-o", str(output), *extra], capsys)
            if batch is None:
                assert status == 1 and algorithm in err and "does not take" in err, (name, extra, err)
                assert not output.exists()
                continue
            assert status == 0, (name, extra, err)
            assert_rows(output, batch)
            assert f"loss tokens         {np.count_nonzero(batch.targets_segmentation):,} " in out, (name, out)
            output.unlink()
