"""xbatch's own corpus format: a directory of ``.npy`` arrays, memory-mapped when read.

Layout of ``NAME/`` (any directory name; ``NAME.xbatch`` by convention)::

    tokens.npy    1-d integer array (int32 usually; uint16 for small vocabularies), the
                  documents' tokens back to back
    offsets.npy   int64[documents + 1], document i is tokens[offsets[i]:offsets[i+1]];
                  offsets[0] == 0, never falling, offsets[-1] == len(tokens)
    <name>.npy    optional per-token columns, one entry per token (e.g. loss_mask.npy)

Opening reads the two ``.npy`` headers and the first and last offset; nothing per
document. The directory is written complete or not at all (a temporary directory
beside it, renamed into place).
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import describe
from .corpus import Corpus, CorpusError, CorpusShard

TOKENS = "tokens.npy"
OFFSETS = "offsets.npy"


def is_xbatch_corpus(path: Path) -> bool:
    """True for a directory holding ``tokens.npy`` and ``offsets.npy``."""
    return path.is_dir() and (path / TOKENS).is_file() and (path / OFFSETS).is_file()


def _memmap(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise CorpusError(f"{path}: cannot memory-map it as a .npy array ({exc})") from None


def read_xbatch_shard(path: Path) -> CorpusShard:
    """One xbatch corpus directory as a memory-mapped shard (O(1) checks only)."""
    if not path.is_dir():
        raise CorpusError(f"{path}: expected an xbatch corpus directory (with {TOKENS} and {OFFSETS})")
    missing = [name for name in (TOKENS, OFFSETS) if not (path / name).is_file()]
    if missing:
        raise CorpusError(f"{path}: an xbatch corpus directory needs {TOKENS} and {OFFSETS}; missing {missing}")
    tokens = _memmap(path / TOKENS)
    offsets = _memmap(path / OFFSETS)
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu" or tokens.dtype.itemsize > 8:
        raise CorpusError(f"{path / TOKENS}: expected a 1-d integer array, got {describe(tokens)}")
    if offsets.ndim != 1 or offsets.dtype != np.int64 or offsets.shape[0] < 1:
        raise CorpusError(f"{path / OFFSETS}: expected a 1-d int64 array of documents + 1 entries, "
                          f"got {describe(offsets)}")
    if int(offsets[0]) != 0 or int(offsets[-1]) != tokens.shape[0]:
        raise CorpusError(f"{path / OFFSETS}: expected offsets from 0 to {tokens.shape[0]} (the tokens), "
                          f"got {int(offsets[0])} to {int(offsets[-1])}")
    columns = {}
    for column in sorted(path.glob("*.npy")):
        if column.name in (TOKENS, OFFSETS):
            continue
        values = _memmap(column)
        if values.shape[:1] != tokens.shape:
            raise CorpusError(f"{column}: a per-token column needs {tokens.shape[0]} entries, got {describe(values)}")
        columns[column.stem] = values
    return CorpusShard.from_offsets(tokens, offsets, str(path), columns)


@contextlib.contextmanager
def _atomic_directory(path: Path, overwrite: bool):
    """Yields a temporary directory beside ``path``; renames it to ``path`` on success."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    temporary.mkdir()
    try:
        yield temporary
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.{secrets.token_hex(4)}.old"
            os.rename(path, old)
        os.rename(temporary, path)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    except BaseException:  # KeyboardInterrupt too: never leave a partial corpus behind
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as file:
        np.save(file, array, allow_pickle=False)
        file.flush()
        os.fsync(file.fileno())


def write_xbatch_corpus(path: str | os.PathLike[str], tokens: Any, *, offsets: Any = None,
                        lengths: Any = None, token_columns: Mapping[str, Any] | None = None,
                        overwrite: bool = False) -> Path:
    """Writes documents given back to back as an xbatch corpus directory, atomically.

    Args:
      path: the directory to create.
      tokens: 1-d integer array, kept in its dtype (e.g. uint16 halves the file).
      offsets: int[documents + 1] from 0 to ``len(tokens)``; or give ``lengths``.
      lengths: int[documents] summing to ``len(tokens)``.
      token_columns: optional name -> per-token array (``name.npy``), e.g. ``loss_mask``.
      overwrite: replace an existing ``path``.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    corpus = Corpus.from_arrays(tokens, offsets=offsets, lengths=lengths, name=str(path))
    shard = corpus.shards[0]
    if int(shard.offsets[0]) != 0 or int(shard.offsets[-1]) != shard.tokens.shape[0]:
        raise CorpusError(f"{path}: offsets must run from 0 to the {shard.tokens.shape[0]} tokens, got "
                          f"{int(shard.offsets[0])} to {int(shard.offsets[-1])}")
    columns = {name: np.asarray(values) for name, values in (token_columns or {}).items()}
    for name, values in columns.items():
        if name in ("tokens", "offsets") or not name.isidentifier():
            raise ValueError(f"token_columns: {name!r} is not a usable column name")
        if values.shape[:1] != shard.tokens.shape:
            raise ValueError(f"token_columns[{name!r}]: expected {shard.tokens.shape[0]} entries (one per token), "
                             f"got {describe(values)}")
    path = Path(path)
    with _atomic_directory(path, overwrite) as folder:
        _save(folder / TOKENS, shard.tokens)
        _save(folder / OFFSETS, shard.offsets)
        for name, values in columns.items():
            _save(folder / f"{name}.npy", values)
    return path


class XbatchCorpusWriter:
    """Streams documents into an xbatch corpus directory without holding them in memory.

    ``add(tokens, lengths)`` appends documents given back to back; ``close()`` (or the end
    of a ``with`` block) writes the ``.npy`` headers and renames the directory into place.
    On an exception nothing is left behind. Used by ``xbatch convert``.
    """

    def __init__(self, path: str | os.PathLike[str], *, dtype: Any = np.int32, overwrite: bool = False):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind not in "iu":
            raise ValueError(f"dtype: expected an integer dtype for the tokens, got {self.dtype}")
        self._context = _atomic_directory(self.path, overwrite)
        self._folder = self._context.__enter__()
        # tokens.npy is written in place: its header (128 bytes for any 1-d shape) goes
        # into the space reserved here once the token count is known.
        self._tokens = open(self._folder / TOKENS, "wb")
        self._tokens.write(b"\0" * _HEADER_BYTES)
        self._lengths = open(self._folder / "lengths.raw", "wb")
        self.num_tokens = 0
        self.num_documents = 0

    def add(self, tokens: Any, lengths: Any) -> None:
        """Appends documents: ``tokens`` back to back, ``lengths`` tokens each."""
        tokens, lengths = np.asarray(tokens), np.asarray(lengths, dtype=np.int64)
        if tokens.size and tokens.dtype != self.dtype:
            info = np.iinfo(self.dtype)
            if tokens.min() < info.min or tokens.max() > info.max:
                raise ValueError(f"tokens: ids in [{tokens.min()}, {tokens.max()}] do not fit {self.dtype}")
        if int(lengths.sum()) != tokens.shape[0]:
            raise ValueError(f"lengths: sum {int(lengths.sum())} != {tokens.shape[0]} tokens")
        self._tokens.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._lengths.write(np.ascontiguousarray(lengths).tobytes())
        self.num_tokens += tokens.shape[0]
        self.num_documents += lengths.shape[0]

    def close(self) -> Path:
        """Finishes the corpus: ``tokens.npy`` and ``offsets.npy``, renamed into place."""
        self._tokens.close()
        self._lengths.close()
        folder = self._folder
        _write_header(folder / TOKENS, self.dtype, self.num_tokens)
        lengths = np.fromfile(folder / "lengths.raw", dtype=np.int64)
        offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        del lengths
        _save(folder / OFFSETS, offsets)
        (folder / "lengths.raw").unlink()
        self._context.__exit__(None, None, None)
        return self.path

    def abort(self, exc: BaseException | None = None) -> None:
        """Removes everything written."""
        self._tokens.close()
        self._lengths.close()
        error = exc or RuntimeError("aborted")
        with contextlib.suppress(BaseException):
            self._context.__exit__(type(error), error, None)

    def __enter__(self) -> XbatchCorpusWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort(value)


_HEADER_BYTES = 128


def _write_header(path: Path, dtype: np.dtype, count: int) -> None:
    """Writes the .npy header of a 1-d ``count``-element array into the reserved space."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": (count,)})
    if len(header.getvalue()) != _HEADER_BYTES:  # never for 1-d shapes; say so if it were
        raise RuntimeError(f"{path}: unexpected .npy header size {len(header.getvalue())}")
    with open(path, "r+b") as out:
        out.write(header.getvalue())
        out.flush()
        os.fsync(out.fileno())


def write_documents(path: str | os.PathLike[str], documents: Iterable[Any], **kwargs: Any) -> Path:
    """Writes a sequence of token arrays as an xbatch corpus directory (small corpora, tests)."""
    corpus = Corpus.from_documents(list(documents))
    return write_xbatch_corpus(path, corpus.tokens, offsets=corpus.offsets, **kwargs)
