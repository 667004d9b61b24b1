"""Packers refuse bad arguments at construction and stay small for any bin count
(issue 11, items 4 and 10)."""

import tracemalloc

import grain
import numpy as np
import pytest

from xbatch.packing import (
    BestFitPackIterDataset,
    FirstFitPackIterDataset,
    LLMPackIterDataset,
    pack_documents,
)


def documents(count=20):
    rng = np.random.default_rng(0)
    return [rng.integers(2, 100, int(n), dtype=np.int32) for n in rng.integers(1, 30, count)]


@pytest.mark.parametrize("seed", [-1, 1.5, None, True])
def test_llm_packer_checks_seed_at_construction(seed):
    parent = grain.MapDataset.source(documents()).to_iter_dataset()
    with pytest.raises(ValueError, match="seed"):
        LLMPackIterDataset(parent, seq_len=16, num_packing_bins=4, eod_token_id=1, shuffle_bins=True, seed=seed)


@pytest.mark.parametrize("packer", [FirstFitPackIterDataset, BestFitPackIterDataset])
def test_drop_ins_check_the_shuffle_seed_at_construction(packer):
    parent = grain.MapDataset.source([{"x": d} for d in documents()]).to_iter_dataset()
    with pytest.raises(ValueError, match="seed"):
        packer(parent, length_struct={"x": 32}, num_packing_bins=4, shuffle_bins=True, seed=-1)
    # grain never reads the seed without the shuffle, and neither do the drop-ins.
    rows = list(packer(parent, length_struct={"x": 32}, num_packing_bins=4, shuffle_bins=False, seed=-1))
    assert rows


def test_llm_packer_bounds_seq_len_by_int32_positions():
    parent = grain.MapDataset.source(documents()).to_iter_dataset()
    with pytest.raises(ValueError, match="seq_len"):
        LLMPackIterDataset(parent, seq_len=2**31, num_packing_bins=4, eod_token_id=1)


@pytest.mark.parametrize(
    "lengths", [[2**63 - 1, 2**63 - 1, 7], [2**62, 2**62, 2**62, 2**62 + 5], [6, -1], [2, 2, 2]]
)
def test_document_lengths_whose_sum_wraps_around_are_rejected(backend, lengths):
    with pytest.raises(ValueError, match="lengths: "):
        pack_documents(np.arange(5, dtype=np.int32), lengths, seq_len=8, eod_token_id=1)


@pytest.mark.parametrize("num_bins", [2**31 - 1, 2**62])
def test_huge_bin_counts_cost_memory_only_for_rows_in_use(backend, num_bins):
    docs = documents(200)
    parent = grain.MapDataset.source(docs).to_iter_dataset()
    tracemalloc.start()
    try:
        rows = list(LLMPackIterDataset(parent, seq_len=64, num_packing_bins=num_bins, eod_token_id=1))
        batch = pack_documents(np.concatenate(docs), [len(d) for d in docs], seq_len=64, eod_token_id=1,
                               num_packing_bins=num_bins)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(rows) == batch.inputs.shape[0] and peak < 8 << 20
