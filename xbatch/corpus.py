"""Tokenized corpora for the ``xbatch`` command: the built-in synthetic corpus and readers.

Formats: ``.npz`` (arrays ``tokens`` and ``lengths``), ``.npy`` tokens with a ``.npy`` of
lengths beside, JSONL (one token list per line, or a named field; gzip allowed) and
Parquet (a list-of-int column, via pyarrow). Every reader returns a :class:`Corpus`:
documents back to back, no Python object per document.

Fine-tuning corpora say which tokens are trained on: a prompt (a JSONL key or Parquet
column of token lists read before the document's own tokens and not trained on), a 0/1
mask (a JSONL key or Parquet column of lists aligned with the tokens), or in an ``.npz``
the arrays ``loss_mask`` (flat) or ``prompt_lengths`` (one per document).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# The built-in corpus: a 32,000-token vocabulary with the end-of-document token 1 and
# padding 0; lognormal lengths like web text after tokenization: log-mean 5.9 gives a
# median of ~365 tokens, a mean of ~600 and ~4 % of documents longer than a 2,048-token
# row. The benchmark adds short documents (log-mean 4.0: mean ~90 tokens), where the
# per-document cost dominates.
SYNTHETIC_VOCAB_SIZE = 32_000
SYNTHETIC_EOD = 1
SYNTHETIC_LOG_SIGMA = 1.0
LONG_LOG_MEAN = 5.9
SHORT_LOG_MEAN = 4.0
# Input formats by file suffix.
NPZ_SUFFIXES = (".npz",)
NPY_SUFFIXES = (".npy",)
JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


class CorpusError(ValueError):
    """A corpus file that cannot be read, or whose arrays do not describe documents."""


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Tokenized documents back to back.

    Attributes:
      tokens: int32[sum(lengths)], every document's token ids (in ``[0, 2**31)``), one
        after the other.
      lengths: int64[documents], tokens per document.
      name: where the documents came from, for messages.
      lines: int64[documents], each document's line in a text file (1-based), or None.
      loss_mask: int[sum(lengths)] of 0/1 aligned with ``tokens`` (1: trained on), or None.
      prompt_lengths: int64[documents], each document's first tokens not trained on, or
        None. At most one of the two (the packers check their values).
    """

    tokens: np.ndarray
    lengths: np.ndarray
    name: str
    lines: np.ndarray | None = None
    loss_mask: np.ndarray | None = None
    prompt_lengths: np.ndarray | None = None

    def where(self, document: int) -> str:
        """``"<name>: document <index>"``, with its line where the file has lines."""
        line = "" if self.lines is None else f" (line {int(self.lines[document])})"
        return f"{self.name}: document {document}{line}"

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_documents(self) -> int:
        return int(self.lengths.shape[0])


def synthetic_corpus(num_documents: int, *, seed: int = 0, log_mean: float = LONG_LOG_MEAN) -> Corpus:
    """A deterministic corpus of ``num_documents`` documents with lognormal lengths
    (tokens; ``log_mean`` and ``SYNTHETIC_LOG_SIGMA`` of the underlying normal).

    Token ids are uniform in ``[2, SYNTHETIC_VOCAB_SIZE)``, so neither the padding id 0
    nor the end-of-document id 1 occurs inside a document. Same seed, same corpus.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(log_mean, SYNTHETIC_LOG_SIGMA, size=num_documents)
    lengths = np.maximum(lengths, 1).astype(np.int64)
    tokens = rng.integers(2, SYNTHETIC_VOCAB_SIZE, size=int(lengths.sum()), dtype=np.int32)
    mean = f"mean {lengths.mean():.0f} tokens" if num_documents else "empty"
    return Corpus(tokens, lengths, f"the built-in synthetic corpus (seed {seed}, {mean})")


def _checked_corpus(tokens: Any, lengths: Any, name: str, lines: np.ndarray | None = None, *,
                    loss_mask: Any = None, prompt_lengths: Any = None) -> Corpus:
    """A Corpus of 1-d integer arrays whose lengths cover the tokens exactly, with every
    token id in ``[0, 2**31)`` (the one rule of :func:`xbatch.packing.pieces.as_tokens`)."""
    for what, array in (("tokens", tokens), ("lengths", lengths)):
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise CorpusError(
                f"{name}: {what!r} must be a 1-d integer array, got shape {array.shape} dtype {array.dtype}"
            )
    lengths = lengths.astype(np.int64, copy=False)
    if lengths.size and lengths.min() < 0:
        raise CorpusError(f"{name}: 'lengths' must be >= 0, got {lengths.min()}")
    if int(lengths.sum()) != tokens.shape[0]:
        raise CorpusError(
            f"{name}: 'lengths' sum to {int(lengths.sum())} tokens but 'tokens' holds {tokens.shape[0]}"
        )
    corpus = Corpus(tokens, lengths, name, lines, loss_mask, prompt_lengths)
    if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(np.int32).max):
        bad = int(np.flatnonzero((tokens < 0) | (tokens > np.iinfo(np.int32).max))[0])
        document = int(np.searchsorted(np.cumsum(lengths), bad, side="right"))
        start = int(lengths[:document].sum())
        raise CorpusError(
            f"{corpus.where(document)}: token ids must be in [0, 2**31); its token {bad - start} is {tokens[bad]}"
        )
    return dataclasses.replace(corpus, tokens=tokens.astype(np.int32, copy=False))


def _load_error(path: Path, what: str, exc: Exception) -> CorpusError:
    """The error for a .npy/.npz NumPy cannot load; never NumPy's advice to allow pickles."""
    if "pickle" in str(exc).lower():
        reason = "it holds Python objects (pickled data), which xbatch never loads; save integer arrays"
    else:
        reason = str(exc)
    return CorpusError(f"{path}: cannot read the {what} ({reason})")


def _load_npy(path: Path, what: str) -> np.ndarray:
    _check_file(path)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise _load_error(path, f"{what} as a .npy array", exc) from None


def read_npz(path: Path) -> Corpus:
    """An ``.npz`` with the arrays ``tokens`` (1-d) and ``lengths`` (1-d, summing to it),
    and optionally ``loss_mask`` (aligned with ``tokens``) or ``prompt_lengths``."""
    if not zipfile.is_zipfile(path):
        raise CorpusError(
            f"{path}: cannot read it as an .npz archive (not a zip file; an .npz is what numpy.savez writes)"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("tokens", "lengths") if key not in archive.files]
            if missing:
                raise CorpusError(
                    f"{path}: expected arrays 'tokens' and 'lengths', found {sorted(archive.files)}"
                )
            tokens, lengths = archive["tokens"], archive["lengths"]
            masks = {key: archive[key] for key in ("loss_mask", "prompt_lengths") if key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise _load_error(path, "it as an .npz archive", exc) from None
    return _checked_corpus(tokens, lengths, str(path), **masks)


def read_npy(path: Path, lengths_path: Path | None) -> Corpus:
    """A ``.npy`` of tokens (1-d) with the per-document lengths in a second ``.npy``."""
    if lengths_path is None:
        raise CorpusError(
            f"{path}: a .npy file holds only the tokens; give the document lengths with "
            "--lengths LENGTHS.npy, or pack an .npz with arrays 'tokens' and 'lengths'"
        )
    return _checked_corpus(_load_npy(path, "tokens"), _load_npy(lengths_path, "lengths"), str(path))


def _token_list(value: Any, field: str | None, where: str, what: str = "token") -> list:
    if isinstance(value, dict):
        if field is None:
            raise CorpusError(
                f"{where}: a JSON object; name its token-list field with --field (keys: {sorted(value)[:8]})"
            )
        if field not in value:
            raise CorpusError(f"{where}: no field {field!r} (keys: {sorted(value)[:8]})")
        value = value[field]
    if not isinstance(value, list) or not all(
        isinstance(token, int) and not isinstance(token, bool) for token in value
    ):
        raise CorpusError(f"{where}: expected a list of integer {what} ids, got {str(value)[:60]}")
    return value


def _check_mask_options(field: str | None, prompt_field: str | None, mask_field: str | None) -> None:
    if prompt_field is not None and mask_field is not None:
        raise CorpusError("--prompt-field, --mask-field: expected at most one of them, got both")
    if (prompt_field is not None or mask_field is not None) and field is None:
        option = "--prompt-field" if prompt_field is not None else "--mask-field"
        raise CorpusError(f"{option}: needs --field, the key or column of the tokens trained on")


def read_jsonl(path: Path, field: str | None, progress: Callable[..., Any], *, prompt_field: str | None = None,
               mask_field: str | None = None) -> Corpus:
    """JSON lines: one document per line, a list of token ids or an object with ``field``.

    With ``prompt_field`` each object also holds the prompt's token list: the document is
    the prompt followed by ``field``'s tokens, and the prompt is not trained on. With
    ``mask_field`` it holds a 0/1 list aligned with ``field``'s tokens. Blank lines are
    skipped; ``.gz`` files are decompressed on the fly.
    """
    _check_mask_options(field, prompt_field, mask_field)
    token_chunks, lengths, line_numbers, prompt_lengths, mask = [], [], [], [], []
    pending: list[int] = []
    try:
        with open(path, "rb") as raw, progress(
            total=path.stat().st_size, unit="B", unit_scale=True, desc="reading"
        ) as bar:
            lines = gzip.open(raw) if path.suffix == ".gz" else raw
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    value = json.loads(line)
                except ValueError as exc:
                    raise CorpusError(f"{where}: not valid JSON ({exc})") from None
                document = _token_list(value, field, where)
                prompt = [] if prompt_field is None else _token_list(value, prompt_field, where)
                if mask_field is not None:
                    values = _token_list(value, mask_field, where, "mask (0/1)")
                    if len(values) != len(document) or not all(v in (0, 1) for v in values):
                        raise CorpusError(
                            f"{where}: {mask_field!r} must hold 0 or 1 for each of the {len(document)} tokens of "
                            f"{field!r}, got {str(values)[:60]}"
                        )
                    mask.extend(values)
                pending.extend(prompt)
                pending.extend(document)
                prompt_lengths.append(len(prompt))
                lengths.append(len(prompt) + len(document))
                line_numbers.append(number)
                if len(pending) >= 1 << 20:  # bound the Python ints held at once
                    token_chunks.append(_int64_tokens(pending, path, lengths, line_numbers))
                    pending = []
                    bar.update(raw.tell() - bar.n)
    except (OSError, EOFError) as exc:
        raise CorpusError(f"{path}: cannot read it ({exc})") from None
    token_chunks.append(_int64_tokens(pending, path, lengths, line_numbers))
    tokens = np.concatenate(token_chunks)
    return _checked_corpus(
        tokens, np.array(lengths, dtype=np.int64), str(path), np.array(line_numbers, dtype=np.int64),
        loss_mask=np.array(mask, dtype=np.int8) if mask_field is not None else None,
        prompt_lengths=np.array(prompt_lengths, dtype=np.int64) if prompt_field is not None else None,
    )


def _int64_tokens(pending: list[int], path: Path, lengths: list[int], line_numbers: list[int]) -> np.ndarray:
    """The pending token ids as int64; ids beyond int64 are an error naming their line."""
    try:
        return np.array(pending, dtype=np.int64)
    except OverflowError:
        bad = next(i for i, token in enumerate(pending) if not -(2**63) <= token < 2**63)
        ends = np.cumsum(lengths[::-1])  # the pending tokens belong to the last documents
        back = int(np.searchsorted(ends, len(pending) - bad, side="left"))
        raise CorpusError(
            f"{path}: line {line_numbers[-1 - back]}: token ids must be in [0, 2**31), got {pending[bad]}"
        ) from None


def read_parquet(path: Path, field: str | None, progress: Callable[..., Any], *, prompt_field: str | None = None,
                 mask_field: str | None = None) -> Corpus:
    """A Parquet column of integer lists (one document per row), read with pyarrow.

    ``field`` names the column; by default the file's only list-of-integers column.
    ``prompt_field`` names a column of prompts read before ``field``'s tokens and not
    trained on; ``mask_field`` a column of 0/1 lists aligned with ``field``'s lists.
    """
    _check_mask_options(field, prompt_field, mask_field)
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise CorpusError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(f"{path}: cannot read it as Parquet ({exc})") from None
    schema = file.schema_arrow

    def is_token_list(data_type) -> bool:
        return (pa.types.is_list(data_type) or pa.types.is_large_list(data_type)) and pa.types.is_integer(
            data_type.value_type
        )

    candidates = [column.name for column in schema if is_token_list(column.type)]
    if field is None:
        if len(candidates) != 1:
            raise CorpusError(
                f"{path}: name the token-list column with --field "
                f"(list-of-integer columns: {candidates}, all columns: {schema.names})"
            )
        field = candidates[0]
    columns = [name for name in (field, prompt_field, mask_field) if name is not None]
    for name in columns:
        if name not in schema.names:
            raise CorpusError(f"{path}: no column {name!r} (columns: {schema.names})")
        if name not in candidates:
            raise CorpusError(f"{path}: column {name!r} is {schema.field(name).type}, expected a list of integers")
    chunks: dict[str, tuple[list, list]] = {name: ([], []) for name in columns}  # (values, lengths) per column
    rows_read = 0
    try:
        with progress(total=file.metadata.num_rows, unit="doc", unit_scale=True, desc="reading") as bar:
            for batch in file.iter_batches(columns=columns, batch_size=65_536):
                for index, name in enumerate(columns):
                    column = batch.column(index)
                    if column.null_count:
                        raise CorpusError(f"{path}: column {name!r} has {column.null_count} null rows")
                    flat = column.flatten()
                    if flat.null_count:
                        first = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0])
                        offsets = column.offsets.to_numpy()
                        row = rows_read + int(np.searchsorted(offsets - offsets[0], first, side="right")) - 1
                        raise CorpusError(f"{path}: row {row} of column {name!r} holds a null token id")
                    chunks[name][1].append(pc.list_value_length(column).to_numpy().astype(np.int64))
                    chunks[name][0].append(flat.to_numpy())
                rows_read += batch.num_rows
                bar.update(batch.num_rows)
    except (OSError, pa.ArrowException) as exc:
        raise CorpusError(f"{path}: cannot read columns {columns} ({exc})") from None

    def joined(name: str) -> tuple[np.ndarray, np.ndarray]:
        values, lengths = chunks[name]
        return (np.concatenate(values) if values else np.zeros(0, np.int64),
                np.concatenate(lengths) if lengths else np.zeros(0, np.int64))

    tokens, lengths = joined(field)
    if mask_field is not None:
        mask, mask_lengths = joined(mask_field)
        if not np.array_equal(mask_lengths, lengths):
            row = int(np.flatnonzero(mask_lengths != lengths)[0])
            raise CorpusError(
                f"{path}: row {row}: {mask_field!r} has {mask_lengths[row]} values for the {lengths[row]} tokens "
                f"of {field!r}"
            )
        return _checked_corpus(tokens, lengths, str(path), loss_mask=mask)
    if prompt_field is not None:
        prompts, prompt_lengths = joined(prompt_field)
        tokens, lengths = _prompt_then_tokens(prompts, prompt_lengths, tokens, lengths)
        return _checked_corpus(tokens, lengths, str(path), prompt_lengths=prompt_lengths)
    return _checked_corpus(tokens, lengths, str(path))


def _prompt_then_tokens(prompts: np.ndarray, prompt_lengths: np.ndarray, tokens: np.ndarray,
                        lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each document's prompt followed by its tokens, back to back: (tokens, lengths)."""
    total = prompt_lengths + lengths
    starts = np.cumsum(total) - total  # where each document starts in the joined stream
    joined = np.empty(int(total.sum()), dtype=np.result_type(prompts, tokens))

    def place(values: np.ndarray, counts: np.ndarray, offsets: np.ndarray) -> None:
        within = np.arange(values.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts)
        joined[np.repeat(offsets, counts) + within] = values

    place(prompts, prompt_lengths, starts)
    place(tokens, lengths, starts + prompt_lengths)
    return joined, total


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise CorpusError(f"{path}: is a directory; expected a corpus file")
    if not path.exists():
        raise CorpusError(f"{path}: no such file")
    if not path.is_file():
        raise CorpusError(f"{path}: not a regular file")


def read_corpus(path: Path, *, field: str | None, lengths_path: Path | None,
                progress: Callable[..., Any], prompt_field: str | None = None,
                mask_field: str | None = None) -> Corpus:
    """Reads a corpus by its file suffix: .npz, .npy (+ lengths), JSON lines or Parquet;
    xbatch corpus directories, Arrow, Megatron .bin/.idx and ArrayRecord files through
    :func:`xbatch.sources.open_corpus` (memory-mapped where the format allows).

    ``prompt_field`` / ``mask_field`` (JSON lines and Parquet): see :func:`read_jsonl`.
    """
    from .sources.open import is_source_path

    if is_source_path(path):
        if prompt_field is not None or mask_field is not None:
            raise CorpusError(
                f"{path}: --prompt-field and --mask-field read JSON lines or Parquet files, not "
                "xbatch.sources formats yet"
            )
        return read_source_corpus(path, field)
    _check_file(path)
    name = path.name.lower()
    if lengths_path is not None and not name.endswith(NPY_SUFFIXES):
        raise CorpusError(
            f"{path}: --lengths goes only with a .npy of tokens; this file holds its documents' lengths itself"
        )
    if (prompt_field is not None or mask_field is not None) and not name.endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES):
        raise CorpusError(
            f"{path}: --prompt-field and --mask-field read JSON lines or Parquet; an .npz carries the arrays "
            "'loss_mask' or 'prompt_lengths' itself"
        )
    if name.endswith(NPZ_SUFFIXES):
        return read_npz(path)
    if name.endswith(NPY_SUFFIXES):
        return read_npy(path, lengths_path)
    if name.endswith(JSONL_SUFFIXES):
        return read_jsonl(path, field, progress, prompt_field=prompt_field, mask_field=mask_field)
    if name.endswith(PARQUET_SUFFIXES):
        return read_parquet(path, field, progress, prompt_field=prompt_field, mask_field=mask_field)
    suffixes = NPZ_SUFFIXES + NPY_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
    raise CorpusError(f"{path}: unknown corpus format; expected a file ending in one of {suffixes}")


def read_source_corpus(path: Path, field: str | None) -> Corpus:
    """A corpus of any :func:`xbatch.sources.open_corpus` format, as tokens + lengths."""
    from .sources import CorpusError as SourceError
    from .sources import open_corpus
    from .sources.open import tokens_and_lengths

    try:
        source = open_corpus(path, field=field)
        tokens, lengths = tokens_and_lengths(source)
        loss_mask = None
        if source.has_token_column("loss_mask"):  # e.g. written by write_xbatch_corpus(token_columns=...)
            loss_mask = source.gather_column("loss_mask", np.arange(len(source)))
    except SourceError as exc:
        raise CorpusError(str(exc)) from None
    return Corpus(tokens, lengths, str(path), loss_mask=loss_mask)
