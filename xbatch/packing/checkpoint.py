"""Checkpoint states that say what they can be restored into.

A packer's state (a window's start, rows already emitted, a shuffle counter) only means
something to a packer built with the same arguments: a state saved with ``seq_len=64``
and restored with ``seq_len=128`` silently drops or repeats tokens. So every packer adds
to its state the arguments its restore depends on and a format version, and checks both
in ``set_state``::

    def get_state(self):
        return checkpoint.record_arguments(state, self._options, packer="MyPacker", version=1)

    def set_state(self, state):
        checkpoint.check_arguments(state, self._options, packer="MyPacker", version=1)
        ...

The record lives under the ``"xbatch"`` key and holds only JSON types (checkpoints are
written as JSON), so a state survives a round trip through a checkpoint file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

KEY = "xbatch"


def plain(value: Any) -> Any:
    """``value`` as JSON types (dict keys as strings, tuples as lists, NumPy scalars and
    arrays as Python numbers and lists); anything else as its ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return repr(value)


def record_arguments(state: Mapping[str, Any], options: Mapping[str, Any], *, packer: str,
                     version: int) -> dict[str, Any]:
    """``state`` plus the record ``check_arguments`` reads: the packer's name, the state
    format ``version`` and ``options`` (the arguments the restore depends on)."""
    return {**state, KEY: {"packer": packer, "version": version, "arguments": plain(options)}}


def _same(a: Any, b: Any) -> bool:
    # Compared as JSON text: a state read back from a checkpoint file has lists for
    # tuples, and NaN paddings must equal themselves.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def check_arguments(state: Mapping[str, Any], options: Mapping[str, Any], *, packer: str,
                    version: int) -> None:
    """Raises a ValueError unless ``state`` was saved by ``packer`` at state format
    ``version`` with the same ``options``; the message names every mismatch."""
    record = state.get(KEY) if isinstance(state, Mapping) else None
    if not isinstance(record, Mapping):
        raise ValueError(
            f"state: not a {packer} checkpoint state (no {KEY!r} record of its arguments and "
            "version: saved by another dataset, or by an older xbatch)"
        )
    if record.get("packer") != packer:
        raise ValueError(
            f"state: saved by a {record.get('packer')}, cannot be restored into a {packer}"
        )
    if record.get("version") != version:
        raise ValueError(
            f"state: format version {record.get('version')!r}, this {packer} reads version {version}"
        )
    saved, current = record.get("arguments", {}), plain(options)
    mismatches = [
        f"{name}={saved.get(name, '<missing>')!r} (this pipeline: {value!r})"
        for name, value in current.items()
        if name not in saved or not _same(saved[name], value)
    ]
    mismatches += [f"{name}={value!r} (this pipeline: <none>)" for name, value in saved.items()
                   if name not in current]
    if mismatches:
        raise ValueError(
            f"state: saved by a {packer} built with different arguments: {'; '.join(mismatches)}. "
            "Restoring it would drop or repeat data; restore into a pipeline built with the "
            "same arguments."
        )
