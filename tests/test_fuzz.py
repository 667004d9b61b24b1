"""Bounded fuzzing of every public kernel and packer, in subprocesses (issue 11).

Each test runs ``tests/fuzz_worker.py`` for ``XBATCH_FUZZ_SECONDS`` (default 25) in a
child process: a crash there (segfault, abort, heap corruption, hang) is a failure here
that names the example it was running, instead of taking pytest down. The worker checks
that every call succeeds or raises ValueError/TypeError, leaves every cell outside its
outputs untouched, and ends the same way on both backends. With ``XBATCH_BACKEND=numpy``
only the NumPy backend is fuzzed.

A longer run, by hand: ``XBATCH_FUZZ_SECONDS=300 python -m pytest -q tests/test_fuzz.py``
(or ``python tests/fuzz_worker.py --target kernels --seconds 300``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xbatch import _backend

WORKER = Path(__file__).with_name("fuzz_worker.py")
SECONDS = float(os.environ.get("XBATCH_FUZZ_SECONDS", "25"))
NUMPY_ONLY = os.environ.get(_backend.ENV_VAR, "").strip().lower() == "numpy" or _backend.compiled_module() is None


@pytest.mark.timeout(int(2 * SECONDS) + 300)
@pytest.mark.parametrize("target", ["kernels", "packers"])
def test_fuzz_never_crashes_and_backends_agree(target, tmp_path):
    log = tmp_path / "example.txt"
    command = [sys.executable, "-W", "ignore", str(WORKER), "--target", target, "--seconds", str(SECONDS),
               "--log", str(log)] + (["--numpy-only"] if NUMPY_ONLY else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=2 * SECONDS + 240)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the fuzz worker hung; last example: {log.read_text() if log.exists() else '?'}\n{exc}")
    example = log.read_text() if log.exists() else "(none)"
    assert done.returncode == 0, (
        f"fuzz worker exited with {done.returncode} (negative: killed by that signal) while running\n"
        f"{example}\n--- stderr (tail) ---\n{done.stderr[-6000:]}"
    )
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    print(summary)  # cases and successes per kernel/packer, for the CI log
    assert summary["cases"] > 0 and sum(summary["succeeded"].values()) > 0
