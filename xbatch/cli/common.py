"""What every ``xbatch`` command shares: the one-line error, argument types, progress bars."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np


class CommandError(Exception):
    """A problem with the user's files or options: printed as one line, exit status 1."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line and exits with status 1."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --- argument types -------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def row_length(text: str) -> int:
    """A --seq-len: an integer in [1, 2**31), as positions are int32."""
    value = positive_int(text)
    if value > np.iinfo(np.int32).max:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, 2**31), got {text!r}")
    return value


def bins(text: str) -> int | None:
    return None if text == "all" else positive_int(text)


def token_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= np.iinfo(np.int32).max:
        raise argparse.ArgumentTypeError(f"expected a token id in [0, 2**31), got {text!r}")
    return value


# --- progress -------------------------------------------------------------------------


class NoBar:
    """Stands in for a tqdm bar where tqdm is not installed."""

    n = 0

    def __init__(self, **_: Any) -> None:
        pass

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *_: Any) -> None:
        pass

    def update(self, _: int = 1) -> None:
        pass


def progress_factory(enabled: bool) -> Callable[..., Any]:
    """tqdm on stderr (it hides itself when stderr is not a terminal), or no bar."""
    if not enabled:
        return NoBar
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional (the "cli" extra)
        return NoBar
    return lambda **kwargs: tqdm(disable=None, leave=False, file=sys.stderr, **kwargs)


# --- output ---------------------------------------------------------------------------


def rate(count: float, seconds: float, unit: str) -> str:
    """``count / seconds`` as text such as ``1.23 M tokens/s``."""
    value = count / seconds if seconds > 0 else 0.0
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {prefix} {unit}/s"
    return f"{value:.0f} {unit}/s"


# --- memory ---------------------------------------------------------------------------

# Bytes per row cell of packed output: six int32 fields.
ROW_CELL_BYTES = 24


def available_memory() -> int | None:
    """Bytes the system can still give this process (Linux ``MemAvailable``), or None."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def size_text(num_bytes: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes:.0f} bytes"


def check_rows_fit(rows: int, seq_len: int, advice: str) -> None:
    """Fails before allocating when ``rows`` x ``seq_len`` packed cells cannot fit in memory."""
    needed = rows * seq_len * ROW_CELL_BYTES
    available = available_memory()
    if available is not None and needed > available:
        raise CommandError(
            f"--seq-len {seq_len:,}: {rows:,} rows of {seq_len:,} tokens need at least {size_text(needed)} "
            f"({ROW_CELL_BYTES} bytes per token: six int32 fields), more than the {size_text(available)} "
            f"of memory available; {advice}"
        )
