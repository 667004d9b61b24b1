"""Tests for xbatch.grain_batch_rampup: schedules, the ramp-up dataset, checkpoints, workers."""

import dataclasses
import math
import pickle
import re

import grain
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xbatch.grain_batch_rampup import (
    BatchRampUpIterDataset,
    BatchRampUpSchedule,
    _BatchRampUpDatasetIterator,
    _make_batch,
    batch_dataset_with_rampup,
    constant_rampup_schedule,
    create_batch_rampup_schedule,
    examples_consumed,
    step_for_examples,
    stepwise_rampup_schedule,
)


def _source(num_elements: int) -> grain.IterDataset:
    return grain.MapDataset.range(num_elements).to_iter_dataset()


def _scheduled_sizes(schedule, num_elements: int, drop_remainder: bool) -> list[int]:
    """Batch sizes a ramp-up over num_elements must yield, computed step by step."""
    sizes, left, step = [], num_elements, 0
    while left > 0:
        size = schedule(step)
        if size > left:
            if not drop_remainder:
                sizes.append(left)
            break
        sizes.append(size)
        left -= size
        step += 1
    return sizes


# Schedules -----------------------------------------------------------------------------


def test_stepwise_switches_at_the_boundary():
    schedule = stepwise_rampup_schedule(3, {10: 2, 20: 4})
    assert [schedule(s) for s in range(25)] == [3] * 10 + [6] * 10 + [12] * 5
    assert (schedule(9), schedule(10), schedule(19), schedule(20)) == (3, 6, 6, 12)
    assert schedule(10**15) == 12


def test_factors_scale_the_initial_size_and_are_not_accumulated():
    schedule = stepwise_rampup_schedule(10, {1: 2, 2: 3, 3: 0.35})
    assert [schedule(s) for s in range(4)] == [10, 20, 30, 3]  # int(3.5) == 3


def test_boundaries_are_sorted_and_boundary_zero_replaces_the_initial_size():
    assert stepwise_rampup_schedule(4, {5: 4, 0: 0.5, 2: 2}).sizes == (2, 8, 16)
    assert stepwise_rampup_schedule(4, {5: 4, 0: 0.5, 2: 2}).first_steps == (0, 2, 5)


def test_integer_string_boundaries_equal_int_boundaries():
    from_json = stepwise_rampup_schedule(8, {"100": 2, "50": 1.5, 200: 4})
    assert from_json == stepwise_rampup_schedule(8, {100: 2, 50: 1.5, 200: 4})
    assert [from_json(s) for s in (49, 50, 99, 100, 199, 200)] == [8, 12, 12, 16, 16, 32]


def test_constant_schedule_and_stepwise_without_boundaries():
    assert constant_rampup_schedule(7) == create_batch_rampup_schedule(7, "constant")
    assert create_batch_rampup_schedule(7, "stepwise") == constant_rampup_schedule(7)
    assert create_batch_rampup_schedule(7, "stepwise", {}).sizes == (7,)
    assert constant_rampup_schedule(7)(123456) == 7
    assert isinstance(create_batch_rampup_schedule(7, "constant"), BatchRampUpSchedule)
    assert constant_rampup_schedule(7).is_constant


@pytest.mark.parametrize(
    ("boundaries_and_scales", "named"),
    [
        ({5: -1.0}, ["5", "-1.0"]),
        ({5: 0}, ["5", "0"]),
        ({5: math.nan}, ["5", "nan"]),
        ({5: math.inf}, ["5", "inf"]),
        ({5: -math.inf}, ["5", "-inf"]),
        ({5: "2"}, ["5", "'2'"]),
        ({5: True}, ["5", "True"]),
        ({-1: 2}, ["-1"]),
        ({"-3": 2}, ["'-3'"]),
        ({"1.5": 2}, ["'1.5'"]),
        ({"abc": 2}, ["'abc'"]),
        ({1.5: 2}, ["1.5"]),
        ({2.0: 2}, ["2.0"]),
        ({None: 2}, ["None"]),
        ({True: 2}, ["True"]),
        ({"5": 2, 5: 3}, ["5", "'5'"]),
        ({1: 2, 7: 0.1}, ["7", "0.1"]),  # int(3 * 0.1) == 0
    ],
)
def test_invalid_stepwise_schedules_are_rejected_at_creation(boundaries_and_scales, named):
    with pytest.raises(ValueError) as error:
        create_batch_rampup_schedule(3, "stepwise", boundaries_and_scales)
    for text in named:
        assert text in str(error.value)
    with pytest.raises(ValueError):  # also before any dataset exists
        batch_dataset_with_rampup(_source(10), 3, boundaries_and_scales=boundaries_and_scales)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"batch_size": 0, "schedule_type": "stepwise"}, "batch_size=0"),
        ({"batch_size": -2, "schedule_type": "constant"}, "batch_size=-2"),
        ({"batch_size": 2.0, "schedule_type": "constant"}, "batch_size=2.0"),
        ({"batch_size": True, "schedule_type": "constant"}, "batch_size=True"),
        ({"batch_size": 4, "schedule_type": "linear"}, "schedule_type='linear'"),
        ({"batch_size": 4, "schedule_type": "constant", "boundaries_and_scales": {5: 2}}, "{5: 2}"),
        (
            {"batch_size": 4, "schedule_type": "stepwise", "boundaries_and_scales": [(5, 2)]},
            "[(5, 2)]",
        ),
        ({"batch_size": 4, "schedule_type": "stepwise", "multiple_of": 0}, "multiple_of=0"),
        ({"batch_size": 4, "schedule_type": "constant", "multiple_of": 8}, "multiple_of=8"),
    ],
)
def test_invalid_schedule_arguments_are_rejected(kwargs, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        create_batch_rampup_schedule(**kwargs)


def test_schedule_rejects_negative_steps():
    with pytest.raises(ValueError, match="step=-1"):
        constant_rampup_schedule(4)(-1)


# multiple_of ---------------------------------------------------------------------------


def test_multiple_of_rounds_every_size_down():
    schedule = stepwise_rampup_schedule(100, {10: 1.5, 20: 3.33}, multiple_of=8)
    assert schedule.sizes == (96, 144, 328)  # 100 -> 96, 150 -> 144, 333 -> 328
    assert all(size % 8 == 0 for size in schedule.sizes)


def test_multiple_of_rejects_a_size_that_rounds_to_zero():
    with pytest.raises(ValueError, match=r"factor 0\.25 at boundary '4'.*multiple of 8"):
        stepwise_rampup_schedule(16, {"4": 0.25}, multiple_of=8)


def test_batch_dataset_with_rampup_multiple_of():
    ds = batch_dataset_with_rampup(_source(60), 10, boundaries_and_scales={2: 2.5}, multiple_of=4)
    assert [len(batch) for batch in ds] == [8, 8, 24, 20]  # int(10 * 2.5) = 25 -> 24; 20 left


# examples_consumed / step_for_examples ------------------------------------------------


def test_examples_consumed_worked_example():
    schedule = stepwise_rampup_schedule(4, {2: 2, 5: 0.5})  # sizes 4 4 8 8 8 2 2 ...
    assert [examples_consumed(schedule, s) for s in range(8)] == [0, 4, 8, 16, 24, 32, 34, 36]
    assert examples_consumed(schedule, 10**12) == 32 + (10**12 - 5) * 2


def test_the_worked_schedule_of_docs_rampup_rst():
    schedule = stepwise_rampup_schedule(128, {"1000": 2, "3000": 3.3, 6000: 8}, multiple_of=64)
    assert schedule.first_steps == (0, 1000, 3000, 6000)
    assert schedule.sizes == (128, 256, 384, 1024)  # int(128 * 3.3) = 422 -> 384
    consumed = [examples_consumed(schedule, s) for s in schedule.first_steps]
    assert consumed == [0, 128_000, 640_000, 1_792_000]
    assert step_for_examples(schedule, 2_000_000) == 6204
    assert examples_consumed(schedule, 6203) == 1_999_872


@settings(max_examples=60, deadline=None)
@given(
    batch_size=st.integers(1, 16),
    boundaries=st.dictionaries(
        st.integers(0, 30), st.sampled_from([0.5, 1, 1.5, 2, 3]), max_size=4
    ),
    multiple_of=st.sampled_from([1, 2]),
)
def test_examples_consumed_and_its_inverse_match_a_step_by_step_count(
    batch_size, boundaries, multiple_of
):
    try:
        schedule = stepwise_rampup_schedule(batch_size, boundaries, multiple_of=multiple_of)
    except ValueError:
        return  # some size rounds to 0; rejection is tested elsewhere
    consumed = 0
    for step in range(40):
        assert examples_consumed(schedule, step) == consumed
        assert step_for_examples(schedule, consumed) == step
        for extra in range(1, schedule(step)):  # partway into the next batch
            assert step_for_examples(schedule, consumed + extra) == step + 1
        consumed += schedule(step)


def test_step_for_examples_far_out_is_closed_form():
    schedule = stepwise_rampup_schedule(256, {1000: 2, 5000: 4})
    assert step_for_examples(schedule, 0) == 0
    left_after_step_5000 = 10**15 - 256 * 1000 - 512 * 4000
    assert step_for_examples(schedule, 10**15) == 5000 + -(-left_after_step_5000 // 1024)


def test_examples_conversions_reject_bad_arguments():
    schedule = constant_rampup_schedule(4)
    with pytest.raises(ValueError, match="step=-1"):
        examples_consumed(schedule, -1)
    with pytest.raises(ValueError, match="num_examples=-5"):
        step_for_examples(schedule, -5)
    with pytest.raises(TypeError, match="BatchRampUpSchedule"):
        examples_consumed(lambda step: 4, 3)


# The dataset ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    num_elements=st.integers(0, 80),
    batch_size=st.integers(1, 8),
    boundaries=st.dictionaries(
        st.integers(0, 12), st.sampled_from([1.5, 2, 3]), min_size=1, max_size=3
    ),
    drop_remainder=st.booleans(),
)
def test_whole_stream_sizes_and_nothing_lost_nothing_repeated(
    num_elements, batch_size, boundaries, drop_remainder
):
    schedule = stepwise_rampup_schedule(batch_size, boundaries)
    ds = BatchRampUpIterDataset(_source(num_elements), schedule, drop_remainder=drop_remainder)
    batches = list(ds)
    sizes = _scheduled_sizes(schedule, num_elements, drop_remainder)
    assert [len(batch) for batch in batches] == sizes
    flat = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    np.testing.assert_array_equal(flat, np.arange(sum(sizes)))  # in order, each once
    if not drop_remainder:
        assert sum(sizes) == num_elements


def test_drop_remainder_drops_only_the_short_final_batch():
    schedule = stepwise_rampup_schedule(2, {2: 2})  # 2 2 4 4 4 ...
    kept = [b.tolist() for b in BatchRampUpIterDataset(_source(13), schedule)]
    assert kept == [[0, 1], [2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12]]
    ds = BatchRampUpIterDataset(_source(13), schedule, drop_remainder=True)
    dropped = [b.tolist() for b in ds]
    assert dropped == kept[:-1]


def test_nested_elements_are_stacked_per_leaf():
    parent = _source(6).map(lambda i: {"tokens": np.full(3, i, np.int32), "meta": (np.float32(i),)})
    first, second = BatchRampUpIterDataset(parent, stepwise_rampup_schedule(2, {1: 2}))
    assert first["tokens"].shape == (2, 3) and first["tokens"].dtype == np.int32
    np.testing.assert_array_equal(second["meta"][0], np.arange(2, 6, dtype=np.float32))


def test_any_callable_schedule_is_checked_at_the_step_it_fails():
    ds = BatchRampUpIterDataset(_source(10), lambda step: 2 - step)  # 2, 1, then 0
    iterator = iter(ds)
    assert [len(next(iterator)), len(next(iterator))] == [2, 1]
    with pytest.raises(ValueError, match=r"batch_rampup_schedule\(2\) returned 0"):
        next(iterator)
    with pytest.raises(TypeError, match="batch_rampup_schedule=4"):
        BatchRampUpIterDataset(_source(10), 4)


def test_str_names_the_schedule():
    schedule = stepwise_rampup_schedule(2, {3: 2})
    ds = BatchRampUpIterDataset(_source(4), schedule, drop_remainder=True)
    assert str(ds) == (
        "BatchRampUpIterDataset(batch_rampup_schedule=BatchRampUpSchedule("
        "size from step {0: 2, 3: 4}, multiple_of=1), drop_remainder=True)"
    )
    assert isinstance(iter(ds), _BatchRampUpDatasetIterator)


@pytest.mark.parametrize(
    ("schedule_type", "boundaries_and_scales"),
    [("constant", None), ("stepwise", None), ("stepwise", {}), ("stepwise", {"10": 1.0})],
)
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_constant_schedules_fall_back_to_grain_batch(
    schedule_type, boundaries_and_scales, drop_remainder
):
    ds = batch_dataset_with_rampup(
        _source(11), 4, drop_remainder, None, schedule_type, boundaries_and_scales
    )
    assert not isinstance(ds, BatchRampUpIterDataset)
    assert str(ds) == f"BatchIterDataset(batch_size=4, drop_remainder={drop_remainder})"
    expected = list(_source(11).batch(4, drop_remainder=drop_remainder))
    np.testing.assert_equal(list(ds), expected)


def test_batches_equal_grain_batches_for_the_same_elements():
    schedule = stepwise_rampup_schedule(3, {2: 2})
    parent = _source(18).map(lambda i: {"x": np.arange(i, i + 2)})
    ramped = list(BatchRampUpIterDataset(parent, schedule))
    np.testing.assert_equal(ramped[:2], list(parent.batch(3))[:2])
    np.testing.assert_equal(ramped[2:], list(parent.batch(6))[1:])


# batch_fn and _make_batch ----------------------------------------------------------------


@dataclasses.dataclass
class _Rows:
    tokens: np.ndarray
    count: int


def _rows_batch_fn(values):
    return _Rows(tokens=np.stack(values), count=len(values))


def test_custom_batch_fn_builds_the_batches():
    ds = batch_dataset_with_rampup(
        _source(9).map(lambda i: np.full(2, i)),
        2,
        batch_fn=_rows_batch_fn,
        boundaries_and_scales={1: 3.5},
    )
    batches = list(ds)
    assert [b.count for b in batches] == [2, 7]
    np.testing.assert_array_equal(batches[1].tokens[:, 0], np.arange(2, 9))


def test_stack_rows_as_batch_fn_yields_llm_batches():
    from xbatch.batch import LLMBatch, stack_rows

    length = 4
    names = ["inputs", "targets", "inputs_position", "inputs_segmentation", "targets_position",
             "targets_segmentation"]  # fmt: skip
    rows = _source(5).map(lambda i: {name: np.full(length, i, np.int32) for name in names})
    ds = batch_dataset_with_rampup(rows, 1, batch_fn=stack_rows, boundaries_and_scales={1: 4})
    batches = list(ds)
    assert all(isinstance(b, LLMBatch) for b in batches)
    assert [b.inputs.shape for b in batches] == [(1, length), (4, length)]
    np.testing.assert_array_equal(batches[1].targets[:, 0], [1, 2, 3, 4])


def test_make_batch_stacks_along_a_new_leading_axis():
    batch = _make_batch([{"a": np.array([1, 2])}, {"a": np.array([3, 4])}, {"a": np.array([5, 6])}])
    np.testing.assert_array_equal(batch["a"], [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(_make_batch([np.array([7, 8])]), [[7, 8]])


def test_make_batch_error_shows_shapes_and_dtypes():
    values = [{"a": np.zeros(3, np.int32)}, {"a": np.zeros(4, np.int64)}]
    shapes = r"element 0: \{'a': 'int32\[3\]'\}\n  element 1: \{'a': 'int64\[4\]'\}"
    with pytest.raises(ValueError, match=shapes):
        _make_batch(values)
    with pytest.raises(ValueError, match=r"values=\[\]"):
        _make_batch([])


# Checkpoints, pickling, worker processes ---------------------------------------------------


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_restoring_at_every_step_yields_the_remaining_batches(drop_remainder):
    schedule = stepwise_rampup_schedule(2, {"2": 1.5, 4: 3, 6: 0.5})
    ds = BatchRampUpIterDataset(_source(29), schedule, drop_remainder=drop_remainder)
    grain.experimental.assert_equal_output_after_checkpoint(ds)


def test_state_is_small_and_restores_into_a_fresh_pipeline():
    def make():
        return BatchRampUpIterDataset(_source(40), stepwise_rampup_schedule(2, {3: 3}))

    iterator = iter(make())
    for _ in range(4):
        next(iterator)
    state = iterator.get_state()
    assert state["batch_step"] == 4 and set(state) == {"parent", "batch_step"}
    rest = list(iterator)
    restored = iter(pickle.loads(pickle.dumps(make())))
    restored.set_state(pickle.loads(pickle.dumps(state)))
    np.testing.assert_equal(list(restored), rest)
    assert [len(b) for b in rest] == [6, 6, 6, 6, 4]  # 2+2+2+6 = 12 of 40 consumed before


def test_dataset_pickles():
    ds = batch_dataset_with_rampup(_source(20), 3, boundaries_and_scales={"1": 2})
    np.testing.assert_equal(list(pickle.loads(pickle.dumps(ds))), list(ds))


@pytest.mark.timeout(120)
def test_mp_prefetch_two_workers_deliver_every_element_once():
    schedule = stepwise_rampup_schedule(2, {2: 2})
    ds = BatchRampUpIterDataset(_source(30), schedule)
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=2))
    iterator = iter(ds)
    try:
        batches = list(iterator)
    finally:
        iterator.close()
    assert sorted(np.concatenate(batches).tolist()) == list(range(30))
    # Each worker ramps up over its own 15 elements: 2, 2, 4, 4, 3.
    assert sorted(len(b) for b in batches) == sorted([2, 2, 4, 4, 3] * 2)


@pytest.mark.timeout(120)
def test_ramp_up_after_mp_prefetch_follows_one_schedule():
    schedule = stepwise_rampup_schedule(2, {2: 2})
    parent = _source(30).mp_prefetch(grain.MultiprocessingOptions(num_workers=2))
    iterator = iter(BatchRampUpIterDataset(parent, schedule))
    try:
        batches = list(iterator)
    finally:
        iterator.close()
    assert [len(b) for b in batches] == [2, 2, 4, 4, 4, 4, 4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(30))


# Schedules by consumed tokens or examples ------------------------------------------------

from xbatch.grain_batch_rampup import (  # noqa: E402
    consumed_rampup_schedule,
    parse_amount,
    parse_rampup_string,
    tokens_consumed,
)


def _size_by_walking(size_at: dict[int, int], per_example: int, step: int) -> int:
    """The size at ``step``, walking step by step: the size of the largest boundary consumed."""
    consumed = 0
    for _ in range(step):
        consumed += _size_for(size_at, consumed) * per_example
    return _size_for(size_at, consumed)


def _size_for(size_at, consumed):
    return size_at[max(b for b in size_at if b <= consumed)]


def test_megatron_string_in_tokens_converts_exactly():
    schedule = consumed_rampup_schedule("0:768 250B:1536", unit="tokens", seq_len=4096)
    # 250e9 tokens / (768 rows * 4096 tokens) = 79472.65... -> the switch is at step 79473.
    assert schedule.first_steps == (0, 79473) and schedule.sizes == (768, 1536)
    assert tokens_consumed(schedule, 79472, 4096) < 250 * 10**9 <= tokens_consumed(schedule, 79473, 4096)


def test_dict_string_and_int_forms_are_equal():
    text = consumed_rampup_schedule("0:8, 1.5K:16 4k:32", unit="examples")
    as_dict = consumed_rampup_schedule({0: 8, "1500": "16", 4000: 32}, unit="examples")
    assert text == as_dict
    assert parse_rampup_string("0:8 1K:16") == {"0": "8", "1K": "16"}


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.integers(1, 5000), st.integers(1, 40), max_size=5),
    st.integers(1, 40),
    st.sampled_from([("examples", 1), ("tokens", 1), ("tokens", 7), ("tokens", 128)]),
)
def test_consumed_schedule_matches_a_step_by_step_walk(later, first_size, unit_and_len):
    unit, seq_len = unit_and_len
    size_at = {0: first_size, **later}
    try:
        schedule = consumed_rampup_schedule(size_at, unit=unit, seq_len=seq_len)
    except ValueError as error:
        # Rejected only when two boundaries fall in one step: check that they do.
        assert "same step" in str(error)
        return
    last = schedule.first_steps[-1] + 3
    for step in range(last):
        assert schedule(step) == _size_by_walking(size_at, seq_len, step), step


@pytest.mark.parametrize(
    ("schedule", "kwargs", "named"),
    [
        ("0:768 250B:1536", {"unit": "tokens"}, "seq_len=None"),
        ("0:768 250X:1536", {"unit": "examples"}, "250X"),
        ("0:768 1.0005K:1536", {"unit": "examples"}, "1.0005K"),
        ("0:768 -5:1536", {"unit": "examples"}, "-5"),
        ("0:768 100:0", {"unit": "examples"}, "100"),
        ("0:768 100:1.5", {"unit": "examples"}, "1.5"),
        ("10:768", {"unit": "examples"}, "no boundary 0"),
        ("0:768 100", {"unit": "examples"}, "'100'"),
        ("0:768 1K:8 1K:16", {"unit": "examples"}, "appears twice"),
        ("0:768 1K:8 1000:16", {"unit": "examples"}, "'1000' repeats boundary '1K'"),
        ({0: 8, "1K": 16, 1000: 32}, {"unit": "examples"}, "repeats"),
        ("0:768 100:1536", {"unit": "examples", "multiple_of": 512}, "multiple_of=512"),
        ("0:8 10:16 11:32", {"unit": "examples"}, "boundary '11'"),
        ("0:8", {"unit": "rows"}, "unit='rows'"),
        ({}, {"unit": "examples"}, "non-empty"),
    ],
)
def test_invalid_consumed_schedules_are_rejected_at_creation(schedule, kwargs, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        consumed_rampup_schedule(schedule, **kwargs)


def test_parse_amount():
    assert [parse_amount(v) for v in ("250B", "1.5m", "3T", "7", 9, "2G")] == [
        250 * 10**9, 1_500_000, 3 * 10**12, 7, 9, 2 * 10**9]
    for bad in ("1.5", 1.5, True, -1, "", "B"):
        with pytest.raises(ValueError):
            parse_amount(bad)


def test_consumed_schedule_drives_the_rampup_dataset():
    schedule = consumed_rampup_schedule("0:2 10:4", unit="tokens", seq_len=3)
    sizes = [len(b) for b in BatchRampUpIterDataset(_source(20), schedule)]
    assert sizes == [2, 2, 4, 4, 4, 4]  # 6 tokens after 1 step, 12 >= 10 after 2
