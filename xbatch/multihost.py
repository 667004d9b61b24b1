"""Global batches for multi-host JAX training: every process contributes its rows.

Under JAX's multi-controller runtime every process (host) runs the same program and
feeds the devices it owns. :class:`GlobalBatchIterator` turns each host's share of a
step into one global ``jax.Array`` batch with ``jax.make_array_from_process_local_data``
and follows a batch ramp-up: the *global* batch size comes from the schedule, and every
host's share is ``global_size / process_count`` at every step (a schedule whose sizes do
not divide is rejected at creation, naming the step).

Two kinds of sources:

- a ``grain.MapDataset`` of rows, the same on every host (e.g. packed rows served from a
  packing index, optionally ``.shuffle(seed)``-ed): global step ``s`` is the global rows
  ``[examples_consumed(s), examples_consumed(s + 1))`` of the dataset, and host ``h`` of
  ``H`` reads the ``h``-th contiguous ``1/H`` of them. The global batches therefore do not
  depend on the host count: a restart on a different number of hosts resumes at the same
  global step with the same global batch size and **the very same global batches** (the
  state is just the step). Each row is read by exactly one host, once.
- a ``grain.IterDataset``, this host's own shard (the usual online pipeline): each host
  takes its next ``global_size / H`` elements per step; host ``h``'s rows are the ``h``-th
  block of the global batch. The state holds this host's iterator state, so it restores
  only on the same number of hosts (another count raises, naming both).

Checkpoints follow grain's convention: one JSON file per process,
``process_{index}-of-{count}.json`` in a directory, written atomically.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import math
import os
import pathlib
import re
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import numpy as np

from .grain_batch_rampup import (
    BatchRampUpSchedule,
    _make_batch,
    constant_rampup_schedule,
    examples_consumed,
)

STATE_FILE = "process_{index}-of-{count}.json"
_STATE_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")


def default_sharding() -> jax.sharding.NamedSharding:
    """The batch axis split over every device of every process (one ``"data"`` mesh axis)."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def _batch_shards(sharding: Any) -> int:
    """Into how many blocks ``sharding`` cuts the batch axis (1 when not known)."""
    if isinstance(sharding, jax.sharding.NamedSharding) and len(sharding.spec) > 0:
        axes = sharding.spec[0]
        if axes is None:
            return 1
        axes = axes if isinstance(axes, tuple) else (axes,)
        return math.prod(sharding.mesh.shape[axis] for axis in axes)
    return 1


def _as_schedule(schedule: BatchRampUpSchedule | int) -> BatchRampUpSchedule:
    if isinstance(schedule, BatchRampUpSchedule):
        return schedule
    if isinstance(schedule, (int, np.integer)) and not isinstance(schedule, bool):
        return constant_rampup_schedule(int(schedule))
    raise TypeError(
        f"schedule={schedule!r}; expected a global batch size (int) or a BatchRampUpSchedule"
        " (e.g. from consumed_rampup_schedule), which can be checked at creation"
    )


def check_schedule_divides(schedule: BatchRampUpSchedule, divisor: int, what: str) -> None:
    """Raises a ValueError naming the first step whose global size ``divisor`` does not divide."""
    for first_step, size in zip(schedule.first_steps, schedule.sizes):
        if size % divisor:
            raise ValueError(
                f"global batch size {size} from step {first_step} of {schedule!r} is not divisible"
                f" by {divisor} ({what}); expected every global size to be a multiple of it"
            )


class GlobalBatchIterator:
    """Yields global ``jax.Array`` batches (pytrees, e.g. dicts or ``LLMBatch``) step by step.

    Args:
      source: a ``grain.MapDataset`` of rows, identical on every process (host-count
        independent batches), or a ``grain.IterDataset`` of this process's own rows.
      schedule: the global batch size (int) or a :class:`BatchRampUpSchedule`; every size
        must be divisible by ``process_count`` and by the number of devices the sharding
        splits the batch axis over.
      sharding: how to lay each global batch out; default :func:`default_sharding`.
      batch_fn: stacks a list of rows into this host's local batch (default: a new leading
        axis per leaf, as grain's ``batch``).
      prefetch: batches built ahead on a background thread (0: none), already on the
        devices when ``next`` asks for them.
      process_index, process_count: default ``jax.process_index()``/``jax.process_count()``.

    Raises:
      ValueError: at creation, a global size that does not divide, naming the step.
    """

    def __init__(
        self,
        source: grain.MapDataset | grain.IterDataset,
        schedule: BatchRampUpSchedule | int,
        *,
        sharding: Any = None,
        batch_fn: Callable[[Sequence[Any]], Any] | None = None,
        prefetch: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        if not isinstance(source, (grain.MapDataset, grain.IterDataset)):
            raise TypeError(
                f"source={source!r}; expected a grain.MapDataset (the same rows on every"
                " process) or a grain.IterDataset (this process's own rows)"
            )
        self._rows_mode = isinstance(source, grain.MapDataset)
        self._source = source
        self.schedule = _as_schedule(schedule)
        self.process_index = jax.process_index() if process_index is None else int(process_index)
        self.process_count = jax.process_count() if process_count is None else int(process_count)
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(
                f"process_index={self.process_index}, process_count={self.process_count};"
                " expected 0 <= process_index < process_count"
            )
        self.sharding = default_sharding() if sharding is None else sharding
        check_schedule_divides(self.schedule, self.process_count, "process_count")
        shards = _batch_shards(self.sharding)
        check_schedule_divides(self.schedule, shards, "devices along the sharding's batch axis")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch={prefetch!r}; expected an integer >= 0")
        self._batch_fn = _make_batch if batch_fn is None else batch_fn
        self._prefetch = prefetch
        self._parent = None if self._rows_mode else source.__iter__()
        self._step = 0  # batches yielded
        self._next_step = 0  # batches built (ahead of _step with prefetch)
        self._pending: collections.deque = collections.deque()
        self._executor = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="xbatch-prefetch")
            if prefetch
            else None
        )
        self._state_after_yielded = self._current_state()

    # Steps and sizes ------------------------------------------------------------------

    @property
    def step(self) -> int:
        """Global batches yielded so far (the next batch's step)."""
        return self._step

    def global_batch_size(self, step: int | None = None) -> int:
        """Rows in the global batch of ``step`` (default: the next one)."""
        return self.schedule(self._step if step is None else step)

    def local_batch_size(self, step: int | None = None) -> int:
        """Rows this process contributes at ``step``: ``global_batch_size / process_count``."""
        return self.global_batch_size(step) // self.process_count

    # Iteration ------------------------------------------------------------------------

    def __iter__(self) -> GlobalBatchIterator:
        return self

    def __next__(self) -> Any:
        if self._executor is None:
            batch, state = self._build()
        else:
            while len(self._pending) < self._prefetch + 1:
                self._pending.append(self._executor.submit(self._build))
            batch, state = self._pending.popleft().result()
        self._step += 1
        self._state_after_yielded = state
        return batch

    def _local_rows(self, step: int) -> list[Any] | None:
        local = self.local_batch_size(step)
        if self._rows_mode:
            start = examples_consumed(self.schedule, step) + self.process_index * local
            if examples_consumed(self.schedule, step + 1) > len(self._source):
                return None  # a global batch must be full: every process stops here
            return [self._source[i] for i in range(start, start + local)]
        rows = []
        for _ in range(local):
            try:
                rows.append(next(self._parent))
            except StopIteration:
                return None
        return rows

    def _build(self) -> tuple[Any, dict[str, Any]]:
        step = self._next_step
        rows = self._local_rows(step)
        if rows is None:
            raise StopIteration
        local = self._batch_fn(rows)
        global_size = self.global_batch_size(step)

        def to_global(leaf: Any) -> jax.Array:
            leaf = np.asarray(leaf)
            return jax.make_array_from_process_local_data(
                self.sharding, leaf, (global_size, *leaf.shape[1:])
            )

        batch = jax.tree.map(to_global, local)
        self._next_step = step + 1
        return batch, self._current_state(self._next_step)

    # Checkpoints ----------------------------------------------------------------------

    def _current_state(self, step: int | None = None) -> dict[str, Any]:
        step = self._next_step if step is None else step
        state = {
            "mode": "rows" if self._rows_mode else "stream",
            "step": step,
            "rows_consumed": examples_consumed(self.schedule, step),
            "process_index": self.process_index,
            "process_count": self.process_count,
        }
        if not self._rows_mode:
            state["parent"] = self._parent.get_state()
        return state

    def get_state(self) -> dict[str, Any]:
        """This process's state after the batches yielded so far (JSON-serializable)."""
        return dict(self._state_after_yielded)

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues after the batches ``state`` describes.

        A ``"rows"`` state may come from any process of a run with any process count; a
        ``"stream"`` state only from this process index with this process count.
        """
        mode = "rows" if self._rows_mode else "stream"
        if state.get("mode") != mode:
            raise ValueError(
                f"state mode {state.get('mode')!r}; expected {mode!r} for a"
                f" {type(self._source).__name__} source"
            )
        step = int(state["step"])
        if int(state["rows_consumed"]) != examples_consumed(self.schedule, step):
            raise ValueError(
                f"state says {state['rows_consumed']} global rows were consumed by step {step};"
                f" this iterator's schedule {self.schedule!r} consumes"
                f" {examples_consumed(self.schedule, step)}: restore with the same schedule"
            )
        if not self._rows_mode:
            saved = (int(state["process_index"]), int(state["process_count"]))
            if saved != (self.process_index, self.process_count):
                raise ValueError(
                    f"a stream state of process {saved[0]} of {saved[1]} cannot restore process"
                    f" {self.process_index} of {self.process_count}: each process's stream is its"
                    " own shard; restarts on another number of processes need a MapDataset"
                    " source (e.g. rows from a packing index)"
                )
        self._drain()
        if not self._rows_mode:
            self._parent.set_state(state["parent"])
        self._step = self._next_step = step
        self._state_after_yielded = self._current_state()

    def _drain(self) -> None:
        while self._pending:
            future = self._pending.popleft()
            future.cancel()
            try:
                future.result()
            except (StopIteration, concurrent.futures.CancelledError):
                pass

    def save_state(self, directory: str | os.PathLike) -> pathlib.Path:
        """Writes this process's state to ``directory/process_{i}-of-{n}.json`` atomically."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / STATE_FILE.format(index=self.process_index, count=self.process_count)
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as file:
                json.dump(self.get_state(), file, indent=2)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            pathlib.Path(temporary).unlink(missing_ok=True)
            raise
        return path

    def restore_state(self, directory: str | os.PathLike) -> None:
        """Restores from the files :meth:`save_state` wrote, by any number of processes.

        Reads this process's own file when the process count is unchanged. Otherwise (only
        for a MapDataset source) reads every file of the saved run, checks that they agree
        on the step, and continues from it.
        """
        directory = pathlib.Path(directory)
        own = directory / STATE_FILE.format(index=self.process_index, count=self.process_count)
        if own.exists():
            self.set_state(json.loads(own.read_text()))
            return
        saved = sorted(p for p in directory.glob("process_*-of-*.json") if _STATE_FILE.fullmatch(p.name))
        if not saved:
            raise FileNotFoundError(f"no process_*-of-*.json state files in {str(directory)!r}")
        states = [json.loads(p.read_text()) for p in saved]
        steps = {int(s["step"]) for s in states}
        if len(steps) != 1:
            raise ValueError(
                f"the state files in {str(directory)!r} disagree on the step: {sorted(steps)};"
                " expected one global step"
            )
        self.set_state(states[0])

    def close(self) -> None:
        """Stops the prefetch thread."""
        self._drain()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
