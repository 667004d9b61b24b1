"""Atomic file output: a file users keep is either the old one or the complete new one.

:func:`atomic_output` hands out a temporary file in the destination's directory (same
filesystem, so the final :func:`os.replace` is atomic), flushes and fsyncs it, and only
then renames it over the destination. On any exception, ``KeyboardInterrupt`` included,
the temporary file is removed and an existing destination is left untouched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yields a binary file to write ``path``'s new content into; renames it on success.

    The temporary file is named ``.<name>.<random>.tmp`` beside ``path``. Permissions of
    the result follow the umask, as a plain ``open(path, "wb")`` would give. The
    destination's directory must exist.
    """
    path = Path(path)
    descriptor, temporary = _create_beside(path)
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:  # KeyboardInterrupt too: never leave a partial file behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def _create_beside(path: Path) -> tuple[int, str]:
    """A new file ``.<name>.<random>.tmp`` in ``path``'s directory, opened for writing.

    Created with mode 0o666 (less the umask) like ``open(path, "wb")``, not mkstemp's 0o600,
    so the renamed result has the permissions users expect.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temporary = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary file name for {path.name}")


def _fsync_directory(directory: Path) -> None:
    """Makes the rename itself durable where the platform allows it (POSIX)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
