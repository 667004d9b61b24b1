"""Batch-size ramp-up for grain ``IterDataset`` pipelines (seed 003).

A *batch ramp-up schedule* maps the batch step (0 for the first batch the iterator
yields) to the number of examples in that batch. :class:`BatchRampUpIterDataset`
batches its parent with such a schedule; :func:`batch_dataset_with_rampup` builds one
from config-style arguments and falls back to grain's own ``batch`` when the size never
changes.

Stepwise semantics: with ``boundaries_and_scales = {b_1: f_1, ..., b_n: f_n}`` the size
at step ``s`` is ``int(batch_size * f_i)`` for the largest boundary ``b_i <= s``, and
``batch_size`` before the first boundary. The switch happens *at* the boundary, as in
optax's piecewise schedules (the seed's prose says ``b_i < s``; the code it documents
switches at the boundary too). Factors scale the initial ``batch_size``; they are not
multiplied together.

The schedules are validated once, when they are created, so that a typo in a config
fails at start-up and not at step 50,000.

Beyond the seed: ``multiple_of`` rounds every size down to a multiple of, e.g., the
data-parallel size, and :func:`examples_consumed` / :func:`step_for_examples` convert
between steps and examples in O(number of boundaries). :func:`consumed_rampup_schedule`
builds a schedule whose boundaries are consumed tokens or examples (Megatron-style
``"0:768 250B:1536"``), converted exactly to steps.
"""

from __future__ import annotations

import bisect
import dataclasses
import decimal
import logging
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grain
import numpy as np

T = TypeVar("T")
S = TypeVar("S")

LOGGER = logging.getLogger(__name__)

SCHEDULE_TYPES = ("constant", "stepwise")
CONSUMED_UNITS = ("tokens", "examples")
# Decimal multipliers of amounts such as "250B" (G is accepted as a synonym of B).
_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_AMOUNT = re.compile(r"(\d+(?:\.\d+)?)([KMBGT]?)", re.IGNORECASE)


def _describe_leaves(value: Any) -> Any:
    """Returns ``value`` with every array leaf replaced by ``"dtype[shape]"``."""
    if isinstance(value, Mapping):
        return {key: _describe_leaves(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value).__name__ + str([_describe_leaves(item) for item in value])
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        described = {f.name: _describe_leaves(getattr(value, f.name)) for f in fields}
        return f"{type(value).__name__}({described})"
    array = np.asarray(value)
    return f"{array.dtype}{list(array.shape)}"


def _make_batch(values: Sequence[T]) -> T:
    """Returns a batch of values with a new batch dimension at the front.

    Stacks every leaf of the elements' pytree along a new leading axis, exactly as
    grain's own ``batch`` does (its public ``batch_and_pad`` with no padding), so a
    ramped-up batch equals the batch grain would build from the same elements.

    Raises:
      ValueError: ``values`` is empty, or the elements differ in structure or in a
        leaf's shape; the message lists every element's leaf dtypes and shapes.
    """
    if not values:
        raise ValueError("_make_batch got values=[]; expected at least one element to batch")
    try:
        return grain.experimental.batch_and_pad(values, batch_size=len(values))
    except ValueError as error:
        lines = "\n".join(f"  element {i}: {_describe_leaves(v)}" for i, v in enumerate(values))
        raise ValueError(
            f"_make_batch expected {len(values)} elements of the same structure and leaf"
            f" shapes; got (dtype[shape] per leaf):\n{lines}"
        ) from error


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r}; expected an integer >= 1")
    return int(value)


def _parse_boundary(boundary: Any) -> int:
    """Returns ``boundary`` (an int, or an integer string from a JSON/YAML config) as int."""
    if isinstance(boundary, str):
        try:
            step = int(boundary)
        except ValueError:
            step = None
    elif isinstance(boundary, numbers.Integral) and not isinstance(boundary, bool):
        step = int(boundary)
    else:
        step = None
    if step is None or step < 0:
        raise ValueError(
            f"boundary {boundary!r} in boundaries_and_scales; expected a step: an integer"
            " >= 0 or a string of one"
        )
    return step


class BatchRampUpSchedule:
    """A piecewise-constant batch size: a callable from batch step to examples per batch.

    Built by :func:`constant_rampup_schedule`, :func:`stepwise_rampup_schedule` or
    :func:`create_batch_rampup_schedule`, which validate it. ``first_steps[i]`` is the
    first step at which ``sizes[i]`` examples are batched; ``first_steps[0] == 0`` and
    every size is >= 1 (and a multiple of ``multiple_of``).
    """

    def __init__(self, first_steps: Sequence[int], sizes: Sequence[int], multiple_of: int = 1):
        self.first_steps = tuple(first_steps)
        self.sizes = tuple(sizes)
        self.multiple_of = multiple_of
        # examples_before[i]: examples consumed by all steps before first_steps[i].
        examples_before = [0]
        for i in range(1, len(self.sizes)):
            length = self.first_steps[i] - self.first_steps[i - 1]
            examples_before.append(examples_before[-1] + length * self.sizes[i - 1])
        self.examples_before = tuple(examples_before)

    @property
    def is_constant(self) -> bool:
        """True when every step has the same size, so grain's plain ``batch`` suffices."""
        return len(set(self.sizes)) == 1

    def _segment(self, step: int) -> int:
        """Index of the piece that holds ``step``."""
        return bisect.bisect_right(self.first_steps, step) - 1

    def __call__(self, step: int) -> int:
        """Returns the batch size (examples) at batch step ``step`` (0-based)."""
        if step < 0:
            raise ValueError(f"step={step}; expected a batch step >= 0")
        return self.sizes[self._segment(step)]

    def __repr__(self) -> str:
        pieces = ", ".join(f"{s}: {n}" for s, n in zip(self.first_steps, self.sizes))
        return f"BatchRampUpSchedule(size from step {{{pieces}}}, multiple_of={self.multiple_of})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BatchRampUpSchedule):
            return NotImplemented
        return (self.first_steps, self.sizes, self.multiple_of) == (
            other.first_steps,
            other.sizes,
            other.multiple_of,
        )


def _round_size(size: int, multiple_of: int) -> int:
    # Down, not up: rounding up would batch more examples than the config asked for.
    return size // multiple_of * multiple_of


def constant_rampup_schedule(batch_size: int, *, multiple_of: int = 1) -> BatchRampUpSchedule:
    """Returns a constant batch rampup schedule.

    Args:
      batch_size: The constant batch size (examples per batch).
      multiple_of: Rounds the size down to a multiple of this (e.g. the data-parallel size).

    Returns:
      A function that takes the current batch step and returns the batch size.

    Raises:
      ValueError: ``batch_size`` or ``multiple_of`` is not an integer >= 1, or the size
        rounds down to 0.
    """
    return stepwise_rampup_schedule(batch_size, {}, multiple_of=multiple_of)


def stepwise_rampup_schedule(
    batch_size: int, boundaries_and_scales: Mapping[int | str, float], *, multiple_of: int = 1
) -> BatchRampUpSchedule:
    """Returns a stepwise batch rampup schedule.

    At step ``s`` the size is ``int(batch_size * f_i)`` for the largest boundary
    ``b_i <= s`` (the switch happens *at* the boundary), and ``batch_size`` before the
    first boundary. Factors scale the initial ``batch_size``; they do not accumulate.
    With ``multiple_of`` every size, ``batch_size`` included, is then rounded down to a
    multiple of it.

    Args:
      batch_size: The initial batch size on which the factors are applied.
      boundaries_and_scales: A dictionary mapping the boundaries b_i (batch steps: ints
        or integer strings such as ``"1000"``) to positive, finite scaling factors f_i.
      multiple_of: Rounds every size down to a multiple of this (e.g. the data-parallel
        size).

    Returns:
      A function that takes the current batch step and returns the batch size.

    Raises:
      ValueError: at creation, naming the boundary and factor, if a boundary is negative,
        not an integer or given twice, a factor is not a positive finite number, or a size
        would be ``<= 0`` (also after rounding); or if ``batch_size`` / ``multiple_of`` is
        not an integer >= 1.
    """
    batch_size = _positive_int("batch_size", batch_size)
    multiple_of = _positive_int("multiple_of", multiple_of)
    if not isinstance(boundaries_and_scales, Mapping):
        raise ValueError(
            f"boundaries_and_scales={boundaries_and_scales!r}; expected a mapping from"
            " boundary steps to scaling factors"
        )
    initial_size = _round_size(batch_size, multiple_of)
    if initial_size <= 0:
        raise ValueError(
            f"batch_size={batch_size} rounds down to 0 with multiple_of={multiple_of};"
            f" expected batch_size >= {multiple_of}"
        )
    size_from_step = {0: initial_size}
    given_as = {}  # parsed step -> the key as written, to name duplicates
    for boundary, factor in boundaries_and_scales.items():
        step = _parse_boundary(boundary)
        if step in given_as:
            raise ValueError(
                f"boundary {boundary!r} in boundaries_and_scales repeats boundary"
                f" {given_as[step]!r}; expected each step once"
            )
        given_as[step] = boundary
        if (
            isinstance(factor, bool)
            or not isinstance(factor, numbers.Real)
            or not math.isfinite(factor)
            or factor <= 0
        ):
            raise ValueError(
                f"factor {factor!r} at boundary {boundary!r} in boundaries_and_scales;"
                " expected a finite number > 0"
            )
        size = _round_size(int(batch_size * factor), multiple_of)
        if size <= 0:
            raise ValueError(
                f"factor {factor!r} at boundary {boundary!r} gives batch size"
                f" int({batch_size} * {factor}) rounded down to a multiple of"
                f" {multiple_of} = {size}; expected a size >= 1"
            )
        size_from_step[step] = size
    first_steps = sorted(size_from_step)
    sizes = [size_from_step[step] for step in first_steps]
    schedule = BatchRampUpSchedule(first_steps, sizes, multiple_of)
    LOGGER.info("Batch ramp-up schedule: %r", schedule)
    return schedule


def create_batch_rampup_schedule(
    batch_size: int,
    schedule_type: str,
    boundaries_and_scales: Mapping[int | str, float] | None = None,
    *,
    multiple_of: int = 1,
) -> BatchRampUpSchedule:
    """Creates a batch rampup schedule.

    Args:
      batch_size: The initial batch size.
      schedule_type: The type of the batch rampup schedule. Supported types are
        "constant" and "stepwise".
      boundaries_and_scales: For "stepwise": a dictionary mapping the boundaries b_i to
        positive scaling factors f_i (see :func:`stepwise_rampup_schedule`); ``None`` or
        empty gives a constant schedule. Must be empty for "constant".
      multiple_of: Rounds every size down to a multiple of this (e.g. the data-parallel
        size).

    Returns:
      A function that takes the current batch step and returns the batch size.

    Raises:
      ValueError: unknown ``schedule_type``, boundaries given to "constant", or an
        invalid stepwise schedule.
    """
    if schedule_type == "constant":
        if boundaries_and_scales:
            raise ValueError(
                f"boundaries_and_scales={boundaries_and_scales!r} with"
                " schedule_type='constant'; expected None or {} (or schedule_type='stepwise')"
            )
        return constant_rampup_schedule(batch_size, multiple_of=multiple_of)
    if schedule_type == "stepwise":
        return stepwise_rampup_schedule(
            batch_size, boundaries_and_scales or {}, multiple_of=multiple_of
        )
    raise ValueError(f"schedule_type={schedule_type!r}; expected one of {SCHEDULE_TYPES}")


def _require_schedule(schedule: Any) -> BatchRampUpSchedule:
    if not isinstance(schedule, BatchRampUpSchedule):
        raise TypeError(
            f"schedule={schedule!r}; expected a BatchRampUpSchedule from"
            " create_batch_rampup_schedule or its siblings"
        )
    return schedule


def examples_consumed(schedule: BatchRampUpSchedule, step: int) -> int:
    """Returns the examples in batch steps ``0 .. step - 1``, i.e. consumed after ``step`` batches.

    Assumes the stream does not run out (a short final batch is not modelled). Costs
    O(log number of boundaries).
    """
    schedule = _require_schedule(schedule)
    if step < 0:
        raise ValueError(f"step={step}; expected a number of batch steps >= 0")
    i = schedule._segment(step)
    return schedule.examples_before[i] + (step - schedule.first_steps[i]) * schedule.sizes[i]


def step_for_examples(schedule: BatchRampUpSchedule, num_examples: int) -> int:
    """Returns the fewest batch steps after which at least ``num_examples`` were consumed.

    The inverse of :func:`examples_consumed`:
    ``step_for_examples(sch, examples_consumed(sch, s)) == s`` for every ``s >= 0``.
    Costs O(log number of boundaries).
    """
    schedule = _require_schedule(schedule)
    if num_examples < 0:
        raise ValueError(f"num_examples={num_examples}; expected a number of examples >= 0")
    i = bisect.bisect_left(schedule.examples_before, num_examples) - 1
    if i < 0:  # num_examples == 0
        return 0
    remaining = num_examples - schedule.examples_before[i]
    return schedule.first_steps[i] + -(-remaining // schedule.sizes[i])


def parse_amount(value: Any, *, name: str = "amount") -> int:
    """Returns an exact integer amount from an int or a string such as ``"250B"`` or ``"1.5M"``.

    Suffixes are decimal: K = 10**3, M = 10**6, B (or G) = 10**9, T = 10**12, case-insensitive.
    ``"1.5K"`` is 1500; ``"1.0005K"`` is not an integer and is rejected, as are negative
    numbers, floats, bools and anything else.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0:
        return int(value)
    match = _AMOUNT.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is not None:
        exact = decimal.Decimal(match.group(1)) * _SUFFIXES[match.group(2).upper()]
        if exact == exact.to_integral_value():
            return int(exact)
    raise ValueError(
        f"{name} {value!r}; expected an integer >= 0, or a string such as '250B' or '1.5M'"
        " (suffixes K, M, B/G, T: powers of 1000) that names a whole number"
    )


def parse_rampup_string(text: str) -> dict[str, str]:
    """Splits a Megatron-style ``"0:768 250B:1536"`` into ``{"0": "768", "250B": "1536"}``.

    Pairs ``boundary:size`` are separated by whitespace or commas; nothing is converted
    (see :func:`consumed_rampup_schedule`, which validates).
    """
    if not isinstance(text, str):
        raise TypeError(f"schedule={text!r}; expected a string such as '0:768 250B:1536'")
    pairs: dict[str, str] = {}
    for item in re.split(r"[\s,]+", text.strip()):
        boundary, sep, size = item.partition(":")
        if not item or not sep or not boundary or not size or ":" in size:
            raise ValueError(
                f"schedule item {item!r} in {text!r}; expected 'boundary:size' pairs separated"
                " by spaces, such as '0:768 250B:1536'"
            )
        if boundary in pairs:
            raise ValueError(f"boundary {boundary!r} appears twice in schedule {text!r}")
        pairs[boundary] = size
    return pairs


def consumed_rampup_schedule(
    schedule: str | Mapping[int | str, int | str],
    *,
    unit: str = "tokens",
    seq_len: int | None = None,
    multiple_of: int = 1,
) -> BatchRampUpSchedule:
    """Returns a schedule whose boundaries are consumed tokens or examples, as steps.

    ``schedule`` maps boundaries to **absolute** batch sizes (examples, i.e. packed rows,
    per batch), as a Megatron-style string ``"0:768 250B:1536"`` or a dict
    ``{0: 768, "250B": 1536}``. A size applies from the first step at which at least its
    boundary was consumed, counting full batches before that step: with packed rows every
    example is ``seq_len`` tokens, so a token boundary ``b`` is reached at the first step
    ``s`` with ``examples_consumed(s) * seq_len >= b``. The conversion is exact integer
    arithmetic, done once here; the result is an ordinary step-based
    :class:`BatchRampUpSchedule`.

    Args:
      schedule: boundaries (ints or strings with K/M/B/T suffixes, see :func:`parse_amount`)
        to sizes (integers >= 1, or integer strings). Must contain boundary 0.
      unit: ``"tokens"`` (needs ``seq_len``) or ``"examples"``.
      seq_len: tokens per example (packed row), for ``unit="tokens"``.
      multiple_of: every size must be a multiple of this (e.g. the data-parallel size); a
        size that is not is rejected (sizes are given exactly, so none is rounded).

    Raises:
      ValueError: at creation, naming the boundary: a malformed boundary or size, no
        boundary 0, a size not a multiple of ``multiple_of``, or a boundary that falls in
        the same step as the previous one (its predecessor's size would never be used).
    """
    if unit not in CONSUMED_UNITS:
        raise ValueError(f"unit={unit!r}; expected one of {CONSUMED_UNITS}")
    multiple_of = _positive_int("multiple_of", multiple_of)
    if unit == "tokens":
        if seq_len is None:
            raise ValueError("seq_len=None with unit='tokens'; expected the tokens per packed row")
        per_example = _positive_int("seq_len", seq_len)
    else:
        per_example = 1
    if isinstance(schedule, str):
        schedule = parse_rampup_string(schedule)
    if not isinstance(schedule, Mapping) or not schedule:
        raise ValueError(
            f"schedule={schedule!r}; expected a non-empty mapping from boundaries ({unit}) to"
            " batch sizes, or a string such as '0:768 250B:1536'"
        )
    size_at: dict[int, int] = {}
    written: dict[int, Any] = {}
    for boundary, size in schedule.items():
        amount = parse_amount(boundary, name=f"boundary ({unit})")
        if amount in written:
            raise ValueError(
                f"boundary {boundary!r} repeats boundary {written[amount]!r}; expected each once"
            )
        written[amount] = boundary
        try:
            examples = parse_amount(size, name=f"batch size at boundary {boundary!r}")
        except ValueError:
            examples = 0
        if examples < 1 or examples % multiple_of:
            raise ValueError(
                f"batch size {size!r} at boundary {boundary!r}; expected an integer >= 1 that is"
                f" a multiple of multiple_of={multiple_of}"
            )
        size_at[amount] = examples
    if 0 not in size_at:
        raise ValueError(
            f"schedule {dict(schedule)!r} has no boundary 0; expected the size at the start,"
            " such as '0:768'"
        )
    first_steps, sizes, consumed = [0], [size_at[0]], 0  # consumed: examples before the step
    previous = written[0]
    for amount in sorted(size_at)[1:]:
        threshold = -(-amount // per_example)  # examples needed to have consumed `amount`
        # First step (after first_steps[-1]) whose preceding batches reach the threshold.
        steps = -(-(threshold - consumed) // sizes[-1])
        if steps < 1:
            raise ValueError(
                f"boundary {written[amount]!r} ({unit}) is reached at the same step"
                f" {first_steps[-1]} as boundary {previous!r}, so the size {sizes[-1]} of"
                f" {previous!r} would never be used; expected boundaries at least one batch"
                " apart"
            )
        consumed += steps * sizes[-1]
        first_steps.append(first_steps[-1] + steps)
        sizes.append(size_at[amount])
        previous = written[amount]
    result = BatchRampUpSchedule(first_steps, sizes, multiple_of)
    LOGGER.info("Batch ramp-up schedule by consumed %s: %r", unit, result)
    return result


def tokens_consumed(schedule: BatchRampUpSchedule, step: int, seq_len: int) -> int:
    """Returns the tokens in batch steps ``0 .. step - 1`` with packed rows of ``seq_len`` tokens."""
    return examples_consumed(schedule, step) * _positive_int("seq_len", seq_len)


class _BatchRampUpDatasetIterator(grain.DatasetIterator[T]):
    """Iterator that batches elements with a batch rampup schedule.

    Its state is the parent's state plus ``batch_step``, the number of batches yielded,
    which is all the schedule needs to continue.
    """

    def __init__(
        self,
        parent: grain.DatasetIterator[S],
        batch_rampup_schedule: Callable[[int], int],
        drop_remainder: bool,
        batch_fn: Callable[[Sequence[S]], T],
        stats: Any = None,
    ):
        # `stats` keeps the seed's signature: grain >= 0.2 keeps statistics in the
        # iterator context it shares with `parent`, so there is nothing to pass on.
        del stats
        super().__init__(parent)
        self._batch_rampup_schedule = batch_rampup_schedule
        self._drop_remainder = drop_remainder
        self._batch_fn = batch_fn
        self._batch_step = 0

    def _batch_size(self) -> int:
        size = self._batch_rampup_schedule(self._batch_step)
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(
                f"batch_rampup_schedule({self._batch_step}) returned {size!r}; expected an"
                " integer batch size >= 1"
            )
        return int(size)

    def __next__(self) -> T:
        values = []
        for _ in range(self._batch_size()):
            try:
                values.append(next(self._parent))
            except StopIteration:
                if self._drop_remainder:
                    raise
                break
        if not values:
            raise StopIteration
        self._batch_step += 1
        return self._batch_fn(values)

    def get_state(self) -> dict[str, Any]:
        """Return the state of the iterator."""
        return {"parent": self._parent.get_state(), "batch_step": self._batch_step}

    def set_state(self, state: dict[str, Any]) -> None:
        """Set the state of the iterator."""
        self._parent.set_state(state["parent"])
        self._batch_step = int(state["batch_step"])

    def __str__(self) -> str:
        return (
            f"BatchRampUpDatasetIterator(batch_rampup_schedule={self._batch_rampup_schedule!r},"
            f" drop_remainder={self._drop_remainder}, batch_step={self._batch_step})"
        )


class BatchRampUpIterDataset(grain.IterDataset[T]):
    """Batch transformation with ramp up for IterDatasets.

    Batch step ``s`` (0-based) holds ``batch_rampup_schedule(s)`` elements, stacked by
    ``batch_fn``. With ``drop_remainder`` a final batch shorter than its scheduled size
    is dropped, otherwise it is yielded.

    Under ``mp_prefetch`` every worker process ramps up over its own batch steps; put
    the ramp-up after ``mp_prefetch`` for one schedule over the merged stream.

    Args:
      parent: The parent IterDataset whose elements are batched.
      batch_rampup_schedule: Batch step -> batch size (examples >= 1), e.g. from
        :func:`create_batch_rampup_schedule`. It must pickle for ``mp_prefetch``.
      drop_remainder: Whether to drop the last batch if it is smaller than its size.
      batch_fn: A function that takes a list of elements and returns a batch.
        Defaults to stacking the elements along a new batch dimension.

    Raises:
      TypeError: ``batch_rampup_schedule`` is not callable.
    """

    def __init__(
        self,
        parent: grain.IterDataset[S],
        batch_rampup_schedule: Callable[[int], int],
        drop_remainder: bool = False,
        batch_fn: Callable[[Sequence[S]], T] | None = None,
    ):
        super().__init__(parent)
        if not callable(batch_rampup_schedule):
            raise TypeError(
                f"batch_rampup_schedule={batch_rampup_schedule!r}; expected a callable from"
                " batch step to batch size"
            )
        self._batch_rampup_schedule = batch_rampup_schedule
        self._drop_remainder = drop_remainder
        self._batch_fn = _make_batch if batch_fn is None else batch_fn

    def __iter__(self) -> _BatchRampUpDatasetIterator[T]:
        return _BatchRampUpDatasetIterator(
            self._parent.__iter__(),
            self._batch_rampup_schedule,
            self._drop_remainder,
            self._batch_fn,
            None,
        )

    def __str__(self) -> str:
        return (
            f"BatchRampUpIterDataset(batch_rampup_schedule={self._batch_rampup_schedule!r},"
            f" drop_remainder={self._drop_remainder})"
        )


def batch_dataset_with_rampup(
    parent: grain.IterDataset,
    batch_size: int,
    drop_remainder: bool = False,
    batch_fn: Callable[[Sequence[Any]], Any] | None = None,
    schedule_type: str = "stepwise",
    boundaries_and_scales: Mapping[int | str, float] | None = None,
    *,
    multiple_of: int = 1,
) -> grain.IterDataset:
    """Creates a BatchRampUpIterDataset from an IterDataset.

    Args:
      parent: The parent IterDataset whose elements are batched.
      batch_size: The initial batch size.
      drop_remainder: Whether to drop the last batch if it is smaller than its size.
      batch_fn: A function that takes a list of elements and returns a batch.
        Defaults to stacking the elements along a new batch dimension.
      schedule_type: The type of the batch rampup schedule. Supported types are
        "constant" and "stepwise".
      boundaries_and_scales: Used only for the "stepwise" schedule type. A dictionary
        mapping the boundaries b_i to positive scaling factors f_i: from step ``b_i`` on
        (inclusive) the size is ``int(batch_size * f_i)`` for the largest such ``b_i``.
      multiple_of: Rounds every size down to a multiple of this (e.g. the data-parallel
        size).

    Returns:
      A BatchRampUpIterDataset that batches elements. If the schedule is constant, grain's
      own ``parent.batch(...)`` with that size.

    Raises:
      ValueError: an invalid schedule (see :func:`create_batch_rampup_schedule`).
    """
    schedule = create_batch_rampup_schedule(
        batch_size, schedule_type, boundaries_and_scales, multiple_of=multiple_of
    )
    if schedule.is_constant:
        return parent.batch(schedule.sizes[0], drop_remainder=drop_remainder, batch_fn=batch_fn)
    return BatchRampUpIterDataset(
        parent, schedule, drop_remainder=drop_remainder, batch_fn=batch_fn
    )
