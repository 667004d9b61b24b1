"""Checkpoint compatibility (issue 11, items 8 and 9).

Every packer's state restores exactly into a pipeline built with the same arguments
(grain's own ``assert_equal_output_after_checkpoint``, and through a JSON round trip as a
checkpoint file does), its stats included; restored into a pipeline built with any other
argument, or into another packer, it raises a ValueError naming what differs instead of
silently dropping or repeating tokens.
"""

import dataclasses
import json

import grain
import numpy as np
import pytest

from xbatch.packing import BestFitPackIterDataset, FirstFitPackIterDataset, LLMPackIterDataset


def documents(count=120, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(3, 1, count), 1, 150).astype(int)
    return [rng.integers(2, 1000, n, dtype=np.int32) for n in lengths]


def chunks(docs, per_chunk=4):
    return [
        {"tokens": np.concatenate(docs[i : i + per_chunk]), "lengths": np.array([len(d) for d in docs[i : i + per_chunk]])}
        for i in range(0, len(docs), per_chunk)
    ]


def source(elements):
    return grain.MapDataset.source(elements).to_iter_dataset()


LLM_BASE = dict(seq_len=64, num_packing_bins=8, eod_token_id=1, algorithm="first_fit", shuffle_bins=True, seed=3)
LLM_CHANGES = [
    ("seq_len", 128), ("seq_len", 32), ("num_packing_bins", 16), ("num_packing_bins", 2),
    ("shuffle_bins", False), ("seed", 4), ("long_documents", "truncate"), ("eod_token_id", 2),
    ("pad_token_id", 7), ("shift", "targets"), ("train_on_eod", False), ("max_documents_per_row", 3),
]
DROP_IN_BASE = dict(
    length_struct={"inputs": 64, "targets": 64}, num_packing_bins=8, seed=3, shuffle_bins=True,
)
DROP_IN_CHANGES = [
    ("length_struct", {"inputs": 128, "targets": 128}), ("length_struct", {"inputs": 64, "targets": 32}),
    ("num_packing_bins", 16), ("num_packing_bins", 2), ("seed", 4), ("shuffle_bins", False),
    ("shuffle_bins_group_by_feature", "inputs_segment_ids"), ("meta_features", ("targets",)),
    ("pack_alignment_struct", {"inputs": 2, "targets": 1}), ("padding_struct", {"inputs": -1, "targets": 0}),
    ("max_sequences_per_bin", 3),
]


def llm(parent_kind="documents", **changes):
    docs = documents()
    parent = source(chunks(docs) if parent_kind == "chunks" else docs)
    return LLMPackIterDataset(parent, **{**LLM_BASE, **changes})


def drop_in(packer, **changes):
    docs = [{"inputs": d[:64], "targets": d[:64] + 1} for d in documents()]
    return packer(source(docs), **{**DROP_IN_BASE, **changes})


# (packer id, dataset factory taking argument changes, argument changes to try)
PACKERS = [
    ("llm-first_fit", lambda **c: llm(**c), LLM_CHANGES + [("algorithm", "best_fit"), ("algorithm", "concat_then_split")]),
    ("llm-best_fit", lambda **c: llm(**{"algorithm": "best_fit", **c}), [("algorithm", "first_fit"), ("seq_len", 32)]),
    ("llm-chunks", lambda **c: llm("chunks", **c), LLM_CHANGES[:6]),
    ("llm-concat_then_split", lambda **c: llm(**{"algorithm": "concat_then_split", **c}),
     [(name, value) for name, value in LLM_CHANGES if name not in ("train_on_eod", "max_documents_per_row")]
     + [("algorithm", "first_fit")]),
    ("first_fit", lambda **c: drop_in(FirstFitPackIterDataset, **c), DROP_IN_CHANGES),
    ("best_fit", lambda **c: drop_in(BestFitPackIterDataset, **c), DROP_IN_CHANGES),
]
IDS = [name for name, _, _ in PACKERS]


def saved_state(dataset, rows=7):
    """The state after ``rows`` rows, through JSON as a checkpoint file holds it."""
    iterator = iter(dataset)
    for _ in range(rows):
        next(iterator)
    return json.loads(json.dumps(iterator.get_state()))


@pytest.mark.parametrize("name, make, changes", PACKERS, ids=IDS)
def test_state_restored_with_other_arguments_raises_naming_them(name, make, changes):
    state = saved_state(make())
    for argument, value in changes:
        iterator = iter(make(**{argument: value}))
        with pytest.raises(ValueError, match=rf"different arguments: .*{argument}="):
            iterator.set_state(state)


@pytest.mark.parametrize("name, make, changes", PACKERS, ids=IDS)
def test_state_of_another_packer_or_version_raises(name, make, changes):
    state = saved_state(make())
    others = [make2 for other, make2, _ in PACKERS if other.split("-")[0] != name.split("-")[0]]
    for other in others:
        with pytest.raises(ValueError, match="state: "):
            iter(other()).set_state(state)
    with pytest.raises(ValueError, match="format version 0"):
        iter(make()).set_state({**state, "xbatch": {**state["xbatch"], "version": 0}})
    with pytest.raises(ValueError, match="not a .* checkpoint state"):
        iter(make()).set_state({key: value for key, value in state.items() if key != "xbatch"})


@pytest.mark.parametrize("parents", [("documents", "chunks"), ("chunks", "documents")])
def test_state_restored_onto_the_other_kind_of_parent_raises(parents):
    saved, restored = parents
    state = saved_state(llm(saved), rows=9)
    iterator = iter(llm(restored))
    iterator.set_state(state)
    with pytest.raises(ValueError, match=f"starts in a {saved[:-1]} of the parent.*now gives a {restored[:-1]}"):
        next(iterator)


@pytest.mark.parametrize("name, make, changes", PACKERS, ids=IDS)
def test_same_argument_restores_are_exact(backend, name, make, changes):
    dataset = make()
    limited = grain.experimental.LimitIterDataset(dataset, count=12)
    grain.experimental.assert_equal_output_after_checkpoint(limited)
    # And through JSON, from a few points of a longer run, with the stats (item 9).
    expected, final_stats = [], None
    iterator = iter(dataset)
    states, stats = [], []
    for row in iterator:
        states.append(json.loads(json.dumps(iterator.get_state())))
        stats.append(iterator.stats)
        expected.append(row)
    final_stats = iterator.stats
    for k in (0, 5, len(expected) // 2, len(expected) - 2):
        restored = iter(make())
        restored.set_state(states[k])
        assert restored.stats == stats[k]
        rest = list(restored)
        assert len(rest) == len(expected) - k - 1
        for got, want in zip(rest, expected[k + 1 :]):
            assert got.keys() == want.keys()
            for key in got:
                np.testing.assert_array_equal(got[key], want[key])
        assert restored.stats == final_stats, dataclasses.asdict(restored.stats)
