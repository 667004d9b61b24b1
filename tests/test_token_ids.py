"""One rule for token ids everywhere: integers in [0, 2**31), the EOD and padding ids too;
and the LLM packer's parent must be a grain dataset."""

import subprocess
import sys

import grain
import numpy as np
import pytest

from xbatch.packing import LLMPackIterDataset, pack_documents, window_documents

TOP = 2**31 - 1
GOOD = np.array([5, 0, 7, TOP, 3], dtype=np.int32)


def stream(parent, **options):
    options = {"seq_len": 8, "num_packing_bins": 2, "eod_token_id": 1, **options}
    return list(LLMPackIterDataset(grain.MapDataset.source(parent).to_iter_dataset(), **options))


def bulk(tokens, lengths, **options):
    return pack_documents(tokens, lengths, **{"seq_len": 8, "eod_token_id": 1, **options})


def windows(tokens, lengths, **options):
    return window_documents(tokens, lengths, **{"seq_len": 8, "eod_token_id": 1, **options})


PACKERS = {
    "pack_documents": bulk,
    "window_documents": windows,
    "LLMPackIterDataset, ragged chunk": lambda tokens, lengths, **o: stream([{"tokens": tokens, "lengths": lengths}], **o),
    "LLMPackIterDataset, one document": lambda tokens, lengths, **o: stream([tokens], **o),
}


@pytest.mark.parametrize("packer", PACKERS)
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("bad", [-1, -(2**31)])
def test_negative_token_ids_are_rejected_with_their_index(backend, packer, dtype, bad):
    tokens = GOOD.astype(dtype)
    tokens[3] = bad
    with pytest.raises(ValueError, match=rf"token ids must be in \[0, 2\*\*31\); the token at index 3 is {bad}\b"):
        PACKERS[packer](tokens, [5])


@pytest.mark.parametrize("packer", PACKERS)
def test_token_ids_past_int32_are_rejected(backend, packer):
    tokens = GOOD.astype(np.int64)
    tokens[2] = 2**31
    with pytest.raises(ValueError, match=r"the token at index 2 is 2147483648\b"):
        PACKERS[packer](tokens, [5])
    with pytest.raises(ValueError, match=r"the token at index 0 is -3\b"):
        PACKERS[packer]([-3, 4], [2])  # Python lists take the same check


@pytest.mark.parametrize("packer", PACKERS)
def test_the_whole_range_is_accepted(backend, packer):
    PACKERS[packer](GOOD, [5])
    PACKERS[packer](GOOD.astype(np.uint32), [5])


@pytest.mark.parametrize("packer", PACKERS)
@pytest.mark.parametrize("option", ["eod_token_id", "pad_token_id"])
@pytest.mark.parametrize("value", [-1, 2**31])
def test_eod_and_pad_ids_follow_the_same_rule(backend, packer, option, value):
    with pytest.raises(ValueError, match=rf"{option}: expected an integer token id in \[0, 2\*\*31\), got {value}"):
        PACKERS[packer](GOOD, [5], **{option: value})


def test_a_list_parent_is_a_type_error_naming_parent():
    with pytest.raises(TypeError, match=r"^parent: expected a grain dataset .* got \[\[1, 2\]\]; wrap documents"):
        LLMPackIterDataset([[1, 2]], seq_len=8, num_packing_bins=2, eod_token_id=1)


def test_a_list_parent_prints_no_ignored_exception():
    code = (
        "from xbatch.packing import LLMPackIterDataset\n"
        "try:\n    LLMPackIterDataset([[1, 2]], seq_len=8, num_packing_bins=2, eod_token_id=1)\n"
        "except TypeError as exc:\n    print(type(exc).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "TypeError" and "Exception ignored" not in result.stderr, result.stderr


def test_a_map_dataset_parent_still_works():
    rows = list(LLMPackIterDataset(grain.MapDataset.source([np.array([3, 4])]), seq_len=8, num_packing_bins=2,
                                   eod_token_id=1))
    assert rows[0]["targets"].tolist() == [3, 4, 1, 0, 0, 0, 0, 0]
