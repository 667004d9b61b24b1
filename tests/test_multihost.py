"""Tests for xbatch.multihost: global batches, ramp-up, checkpoints, real multi-process runs."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest

from xbatch.grain_batch_rampup import consumed_rampup_schedule, stepwise_rampup_schedule
from xbatch.multihost import GlobalBatchIterator

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
sys.path.insert(0, str(WORKER.parent))
import multihost_worker  # noqa: E402


def _rows(n: int) -> grain.MapDataset:
    return grain.MapDataset.range(n).map(lambda i: {"x": np.full(4, i, np.int32), "i": np.int64(i)})


# One process ---------------------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [0, 2])
def test_rows_mode_follows_the_rampup_and_stops_at_the_last_full_batch(prefetch):
    schedule = stepwise_rampup_schedule(2, {3: 2})
    batches = list(GlobalBatchIterator(_rows(25), schedule, prefetch=prefetch))
    assert [b["x"].shape for b in batches] == [(2, 4)] * 3 + [(4, 4)] * 4  # 22 rows; 3 left
    assert all(isinstance(b["x"], jax.Array) for b in batches)
    assert np.concatenate([np.asarray(b["i"]) for b in batches]).tolist() == list(range(22))


def test_schedules_that_do_not_divide_are_rejected_at_creation_naming_the_step():
    schedule = consumed_rampup_schedule("0:4 20:6", unit="examples")
    with pytest.raises(ValueError, match=r"global batch size 6 from step 5 .* by 4 \(process_count\)"):
        GlobalBatchIterator(_rows(10), schedule, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="process_index=2, process_count=2"):
        GlobalBatchIterator(_rows(10), 4, process_index=2, process_count=2)
    with pytest.raises(TypeError, match="expected a global batch size"):
        GlobalBatchIterator(_rows(10), lambda step: 4)


@pytest.mark.parametrize("prefetch", [0, 1])
def test_state_restores_exactly_and_is_written_per_process_atomically(tmp_path, prefetch):
    schedule = stepwise_rampup_schedule(1, {2: 3})
    iterator = GlobalBatchIterator(_rows(40), schedule, prefetch=prefetch)
    for _ in range(4):
        next(iterator)
    path = iterator.save_state(tmp_path)
    assert path.name == "process_0-of-1.json" and os.listdir(tmp_path) == [path.name]
    assert json.loads(path.read_text())["step"] == 4
    rest = [np.asarray(b["i"]) for b in iterator]
    fresh = GlobalBatchIterator(_rows(40), schedule)
    fresh.restore_state(tmp_path)
    assert fresh.step == 4
    assert all(np.array_equal(np.asarray(b["i"]), r) for b, r in zip(fresh, rest, strict=True))


def test_stream_state_refuses_another_process_count_and_schedule():
    stream = GlobalBatchIterator(_rows(10).to_iter_dataset(), 2)
    next(stream)
    state = stream.get_state()
    with pytest.raises(ValueError, match="process 0 of 1 cannot restore process 0 of 2"):
        GlobalBatchIterator(_rows(10).to_iter_dataset(), 2, process_count=2).set_state(state)
    with pytest.raises(ValueError, match="restore with the same schedule"):
        GlobalBatchIterator(_rows(10).to_iter_dataset(), 4).set_state(state)
    with pytest.raises(ValueError, match="state mode 'stream'"):
        GlobalBatchIterator(_rows(10), 2).set_state(state)


def test_restore_from_an_empty_directory_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="process_"):
        GlobalBatchIterator(_rows(10), 2).restore_state(tmp_path)


# Several real processes ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _launch(num_processes: int, devices_each: int, out_dir: pathlib.Path, scenario: str) -> None:
    """Runs the worker as ``num_processes`` JAX processes on localhost; skips if they cannot start."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_each}",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent.parent), os.environ.get("PYTHONPATH", "")])}
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), str(num_processes), str(port),
                               str(out_dir), scenario], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(num_processes)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=50)[0])
    finally:
        for proc in procs:
            proc.kill()
    codes = [proc.returncode for proc in procs]
    if 77 in codes:
        pytest.skip(f"this platform cannot start JAX's distributed runtime on localhost: {outputs}")
    assert codes == [0] * num_processes, "\n".join(outputs)


@pytest.mark.timeout(120)
def test_real_processes_global_batches_restore_and_restart_on_other_host_counts(tmp_path):
    _launch(2, 2, tmp_path, "train")  # 2 hosts x 2 devices
    train = np.load(tmp_path / "train-2.npz")
    assert (train["process_count"], train["device_count"]) == (2, 4)
    tokens, lengths = multihost_worker.corpus()
    schedule = consumed_rampup_schedule(multihost_worker.SCHEDULE, unit="examples")
    rows = multihost_worker.rows_source()
    sizes = train["sizes"].tolist()
    assert sizes == [schedule(s) for s in range(len(sizes))] and sum(sizes) == len(rows)
    # Global step s holds the shuffled rows [consumed(s), consumed(s + 1)), each host's
    # share where the sharding puts it (checked per shard by the workers).
    assert train["local_shares_ok"]
    assert np.array_equal(train["targets"], np.stack([rows[i]["targets"] for i in range(sum(sizes))]))
    # Every document exactly once per epoch across hosts (its tokens, counted).
    counts = np.bincount(train["targets"][train["targets"] > 0], minlength=len(lengths) + 1)
    assert np.array_equal(counts[1:], lengths)
    assert train["restored_equal"] and train["stream_restored_equal"]
    # Stream source: host h's two elements are the h-th block of each global batch.
    stream = train["stream"]
    assert np.array_equal(stream, np.array([[4 * s, 4 * s + 2, 4 * s + 1, 4 * s + 3] for s in range(5)]))

    # Restart on 1 host, then on 4: the same global step, size and batches.
    for hosts, devices in [(1, 2), (4, 1)]:
        _launch(hosts, devices, tmp_path, "resume")
        resumed = np.load(tmp_path / f"resume-{hosts}.npz")
        step = multihost_worker.CHECKPOINT_STEP
        assert resumed["process_count"] == hosts
        assert (resumed["first_step"], resumed["first_global_size"]) == (step, schedule(step))
        assert resumed["sizes"].tolist() == sizes[step:]
        assert np.array_equal(resumed["targets"], train["targets"][sum(sizes[:step]):])
