"""Documents -> end-of-document-terminated pieces that fit a row, and pieces -> rows.

Every document gets the end-of-document token (EOD) appended. A document of ``d`` tokens
thus needs ``d + 1`` cells; when that exceeds the row length ``seq_len``:

- ``"split"`` cuts it into consecutive ``seq_len``-token pieces, the last one shorter
  (only the last piece ends with the EOD); each piece is its own segment.
- ``"truncate"`` keeps its first ``seq_len`` tokens, exactly the first piece of
  ``"split"``: the EOD falls among the dropped tokens, so a truncated document shows no
  end. ``d + 1 - seq_len`` tokens (the EOD included) are counted as truncated.
- ``"error"`` raises a ``ValueError`` naming the document and its length.

Token id 0 is a token like any other: lengths always come from the caller's arrays.

Loss masks: every cell of a piece carries a 0/1 mask, 1 where the packed token is a
target trained on. A document's mask comes from the caller (one value per token, or a
prompt length: its first ``n`` tokens are not trained on; none: every token is) and its
EOD gets ``eod_loss`` (1 unless the caller says otherwise). The mask is cut and dropped
with its tokens, so ``"split"`` and ``"truncate"`` keep each token's mask with the token.
In the rows a target not trained on has ``targets_segmentation == 0``; inputs, the
inputs segmentation and positions do not change (see :func:`llm_fields`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .. import kernels
from .._checks import describe, exact_sum

LONG_DOCUMENTS = ("split", "truncate", "error")
# Whole-corpus placement, longest piece first, with the online rule it then applies.
DECREASING = {"first_fit_decreasing": "first_fit", "best_fit_decreasing": "best_fit"}
# Beyond grain's window rule: whole documents cut at row borders, and open bins.
CONCAT = "concat_then_split"
ROLLING = "rolling_best_fit"
STREAM_ALGORITHMS = (*kernels.ALGORITHMS, CONCAT, ROLLING)
BULK_ALGORITHMS = (*STREAM_ALGORITHMS, *DECREASING)
SHIFTS = ("inputs", "targets")
_INT32 = np.iinfo(np.int32)


@dataclasses.dataclass(frozen=True)
class Pieces:
    """EOD-terminated pieces of consecutive documents, in document order.

    Attributes:
      tokens: int32[sum of piece lengths], the pieces' tokens back to back.
      lengths: int64[pieces, 1], tokens per piece (2-d, as ``BinPacker.place`` takes).
      offsets: int64[pieces + 1], where each piece starts in ``tokens``.
      starts_document: bool[pieces], the piece is its document's first.
      starts_split_document: bool[pieces], the piece is the first of several.
      truncated: int64[pieces], tokens ``"truncate"`` dropped from the piece's document.
      num_documents: documents these pieces came from.
      loss_mask: int32[sum of piece lengths], 1 where the token is trained on, 0 where
        not, aligned with ``tokens``; None when every token is trained on.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray
    starts_document: np.ndarray
    starts_split_document: np.ndarray
    truncated: np.ndarray
    num_documents: int
    loss_mask: np.ndarray | None = None

    def __len__(self) -> int:
        return self.lengths.shape[0]


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def check_token_id(name: str, value: Any) -> int:
    """``value`` as an int if it is a token id in ``[0, 2**31)``, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= _INT32.max:
        raise ValueError(f"{name}: expected an integer token id in [0, 2**31), got {value!r}")
    return int(value)


def _raise_bad_token(name: str, array: np.ndarray) -> None:
    bad = int(np.flatnonzero((array < 0) | (array > _INT32.max))[0])
    raise ValueError(f"{name}: token ids must be in [0, 2**31); the token at index {bad} is {array[bad]}")


def as_tokens(name: str, value: Any) -> np.ndarray:
    """``value`` as a 1-d int32 array of token ids in ``[0, 2**31)``, or a TypeError/ValueError
    naming ``name`` (and the index of the first bad token)."""
    if type(value) is np.ndarray and value.dtype == np.int32 and value.ndim == 1:
        # The common case, once per streamed document: one vectorized min (int32 cannot
        # exceed the top of the range).
        if value.size and value.min() < 0:
            _raise_bad_token(name, value)
        return value
    array = np.asarray(value)
    if array.dtype == np.float64 and array.size == 0 and not isinstance(value, np.ndarray):
        array = array.astype(np.int32)  # an empty list has no integer dtype of its own
    if array.dtype.kind not in "iu":  # bools and floats are not token ids
        raise TypeError(f"{name}: expected integer token ids, got {describe(array)}")
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array of token ids, got {describe(array)}")
    if array.size and (array.min() < 0 or array.max() > _INT32.max):
        _raise_bad_token(name, array)
    return array.astype(np.int32, copy=False)


def as_lengths(value: Any, num_tokens: int) -> np.ndarray:
    """Document lengths as int64[n] >= 0 summing to ``num_tokens``, or a clear error."""
    array = np.asarray(value)
    if array.dtype == np.float64 and array.size == 0 and not isinstance(value, np.ndarray):
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected integer document lengths, got {describe(array)}")
    if array.ndim != 1:
        raise ValueError(f"lengths: expected a 1-d array of document lengths, got {describe(array)}")
    array = array.astype(np.int64, copy=False)
    if array.size and array.min() < 0:
        first = int(np.flatnonzero(array < 0)[0])
        raise ValueError(f"lengths: expected lengths >= 0, got {array[first]} for document {first}")
    if array.size and array.max() > num_tokens:  # also keeps the sum below from wrapping around
        first = int(np.argmax(array > num_tokens))
        raise ValueError(
            f"lengths: document {first} has length {array[first]}, more than the {num_tokens} tokens given"
        )
    total = exact_sum(array, num_tokens)
    if total != num_tokens:
        raise ValueError(f"lengths: expected lengths summing to the {num_tokens} tokens given, got a sum of {total}")
    return array


def as_loss_mask(name: str, value: Any, num_tokens: int) -> np.ndarray:
    """A per-token loss mask as int32[num_tokens] of 0/1, or a TypeError/ValueError naming ``name``.

    Takes bools or integers 0 and 1 (1: the token is trained on).
    """
    if type(value) is np.ndarray and value.dtype == np.int32 and value.shape == (num_tokens,):
        # The common case, once per streamed document: one check, no copy. Seen as
        # unsigned, a negative value is huge, so 0/1 is exactly max <= 1.
        if not num_tokens or value.view(np.uint32).max() <= 1:
            return value
    array = np.asarray(value)
    if array.dtype == np.float64 and array.size == 0 and not isinstance(value, np.ndarray):
        array = array.astype(np.int32)
    if array.dtype != bool and array.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected a mask of bools or 0/1 integers, got {describe(array)}")
    if array.shape != (num_tokens,):
        raise ValueError(f"{name}: expected one value per token, shape ({num_tokens},), got {describe(array)}")
    if array.dtype == bool or not array.size:
        return array.astype(np.int32)
    if array.view(array.dtype.str.replace("i", "u")).max() > 1:  # as above
        bad = int(np.flatnonzero((array < 0) | (array > 1))[0])
        raise ValueError(f"{name}: expected 0 or 1 per token, got {array[bad]} at token {bad}")
    return array.astype(np.int32, copy=False)


def as_prompt_lengths(name: str, value: Any, lengths: np.ndarray) -> np.ndarray:
    """Prompt tokens per document as int64[documents], ``0 <= value[i] <= lengths[i]``, or a
    TypeError/ValueError naming ``name``."""
    array = np.asarray(value)
    if array.dtype == np.float64 and array.size == 0 and not isinstance(value, np.ndarray):
        array = array.astype(np.int64)
    if array.dtype == bool or array.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer prompt lengths, got {describe(array)}")
    if array.shape != lengths.shape:
        raise ValueError(
            f"{name}: expected one prompt length per document, shape {lengths.shape}, got {describe(array)}"
        )
    array = array.astype(np.int64, copy=False)
    bad = (array < 0) | (array > lengths)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}: expected 0 <= prompt length <= document length, got {array[first]} for "
            f"document {first} of {lengths[first]} tokens"
        )
    return array


def cell_loss_mask(lengths: np.ndarray, loss_mask: Any = None, prompt_lengths: Any = None, *, eod_loss: int,
                   mask_name: str = "loss_mask", prompt_name: str = "prompt_lengths") -> np.ndarray | None:
    """The 0/1 mask of documents given back to back, each followed by its EOD cell.

    Args:
      lengths: int64[documents] >= 0, tokens per document.
      loss_mask: 0/1 or bool [sum(lengths)], one per token; or None.
      prompt_lengths: int[documents], each document's first tokens not trained on; or None.
        At most one of the two; without either every token is trained on.
      eod_loss: the mask of every EOD cell.
      mask_name, prompt_name: name the arguments in errors.

    Returns:
      int32[sum(lengths) + documents], aligned with the EOD-terminated documents (see
      :func:`document_pieces`), or None when every cell is trained on.
    """
    if loss_mask is not None and prompt_lengths is not None:
        raise ValueError(f"{mask_name}, {prompt_name}: expected at most one of them, got both")
    if loss_mask is not None:
        if not (type(loss_mask) is np.ndarray and loss_mask.dtype == np.int32 and loss_mask.ndim == 1):
            loss_mask = as_loss_mask(mask_name, loss_mask, int(lengths.sum()))
        # Checked (0/1, one per token) and written with the EOD cells in one pass.
        return kernels.eod_cell_mask(loss_mask, lengths, eod_loss=eod_loss, name=mask_name)
    if prompt_lengths is None and eod_loss:
        return None
    prompts = np.zeros_like(lengths) if prompt_lengths is None else as_prompt_lengths(prompt_name, prompt_lengths, lengths)
    # Runs of 0 (prompt), 1 (the rest) and the EOD's mask, document after document: one
    # write per cell.
    runs = np.empty((lengths.shape[0], 3), np.int64)
    runs[:, 0] = prompts
    runs[:, 1] = lengths - prompts
    runs[:, 2] = 1
    values = np.tile(np.array([0, 1, eod_loss], np.int32), lengths.shape[0])
    return np.repeat(values, runs.reshape(-1))


def document_with_mask(element: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(int32 tokens, int32 0/1 loss mask or None) of a document element: a token array or
    list, ``{"tokens", "loss_mask"}`` or ``{"tokens", "prompt_length"}``."""
    if not isinstance(element, Mapping):
        return as_tokens("document", element), None
    if "tokens" not in element:
        raise ValueError(
            "parent element: expected a document (token array, or a dict with 'tokens' and optionally "
            f"'loss_mask' or 'prompt_length') or a ragged chunk ('tokens', 'lengths'), got keys {sorted(element)}"
        )
    tokens = as_tokens("tokens", element["tokens"])
    prompt_length, loss_mask = element.get("prompt_length"), element.get("loss_mask")
    if prompt_length is None and loss_mask is not None:
        return tokens, as_loss_mask("loss_mask", loss_mask, tokens.shape[0])
    if prompt_length is None:
        return tokens, None
    if loss_mask is not None:
        raise ValueError("loss_mask, prompt_length: expected at most one of them, got both")
    if isinstance(prompt_length, bool) or not isinstance(prompt_length, (int, np.integer)):
        raise TypeError(f"prompt_length: expected an integer, got {prompt_length!r}")
    if not 0 <= prompt_length <= tokens.shape[0]:
        raise ValueError(
            f"prompt_length: expected 0 <= prompt length <= document length, got {prompt_length} for "
            f"document 0 of {tokens.shape[0]} tokens"
        )
    mask = np.ones(tokens.shape[0], np.int32)
    mask[:prompt_length] = 0
    return tokens, mask


def chunk_source(chunk: Mapping[str, Any], num_documents: int) -> tuple[str, np.ndarray | None]:
    """(source, document_ids) naming a ragged chunk's documents in error messages.

    A chunk with a ``"documents"`` key (the corpus indices ``xbatch.sources`` chunks carry)
    names each document by its index in the whole corpus; otherwise by its position in
    the chunk.
    """
    documents = chunk.get("documents")
    if documents is not None:
        documents = np.asarray(documents)
        if documents.shape == (num_documents,) and documents.dtype.kind in "iu":
            return "the corpus", documents
    return "the ragged chunk", None


def document_pieces(tokens: np.ndarray, lengths: np.ndarray, *, seq_len: int, eod_token_id: int,
                    long_documents: str, source: str = "lengths", cell_mask: np.ndarray | None = None,
                    document_ids: np.ndarray | None = None) -> Pieces:
    """Cuts documents given back to back into EOD-terminated pieces of at most ``seq_len``.

    Args:
      tokens: int32[sum(lengths)], the documents' tokens back to back (see :func:`as_tokens`).
      lengths: int64[documents] >= 0, tokens per document (see :func:`as_lengths`).
      seq_len: cells per row (>= 1).
      eod_token_id: appended to every document.
      long_documents: ``"split"``, ``"truncate"`` or ``"error"`` (see the module docstring).
      source: names where the documents come from in the ``"error"`` message.
      document_ids: the documents' indices in ``source`` for that message (e.g. corpus
        indices, see :func:`chunk_source`); by default their positions in ``lengths``.
      cell_mask: int32[sum(lengths) + documents] of 0/1, each document's mask followed by
        its EOD's (see :func:`cell_loss_mask`), or None: every cell is trained on.

    Returns:
      The pieces, in document order; vectorized over documents (no Python loop per
      document). Their ``loss_mask`` is None when every cell is trained on.
    """
    cells = lengths + 1  # each document plus its EOD
    ends = np.cumsum(lengths)
    stream = np.insert(tokens, ends, np.int32(eod_token_id))
    mask = cell_mask
    num_documents = lengths.shape[0]
    too_long = cells > seq_len
    if not too_long.any():
        return _pieces(stream, cells, np.ones(num_documents, bool), np.zeros(num_documents, bool),
                       np.zeros(num_documents, np.int64), num_documents, mask)
    if long_documents == "error":
        first = int(np.flatnonzero(too_long)[0])
        name = first if document_ids is None else int(document_ids[first])
        raise ValueError(
            f"long_documents='error': document {name} of {source} has {lengths[first]} tokens, which with its "
            f"EOD exceed seq_len={seq_len}; use long_documents='split' or 'truncate'"
        )
    if long_documents == "truncate":
        kept = np.minimum(cells, seq_len)
        # Drop each long document's cells [seq_len, d + 1): -1 where a dropped run starts,
        # +1 where it ends; runs never touch, so the running sum is 0 exactly on kept cells.
        document_starts = np.cumsum(cells) - cells
        edges = np.zeros(stream.shape[0] + 1, dtype=np.int8)
        edges[(document_starts + seq_len)[too_long]] = -1
        edges[(document_starts + cells)[too_long]] = 1
        keep = np.cumsum(edges[:-1], dtype=np.int8) == 0
        return _pieces(stream[keep], kept, np.ones(num_documents, bool), np.zeros(num_documents, bool),
                       cells - kept, num_documents, None if mask is None else mask[keep])
    per_document = (cells + seq_len - 1) // seq_len
    first_piece = np.cumsum(per_document) - per_document
    piece_lengths = np.full(int(per_document.sum()), seq_len, dtype=np.int64)
    piece_lengths[first_piece + per_document - 1] = cells - (per_document - 1) * seq_len
    starts_document = np.zeros(piece_lengths.shape[0], bool)
    starts_document[first_piece] = True
    starts_split = np.zeros(piece_lengths.shape[0], bool)
    starts_split[first_piece[per_document > 1]] = True
    return _pieces(stream, piece_lengths, starts_document, starts_split,
                   np.zeros(piece_lengths.shape[0], np.int64), num_documents, mask)


def _pieces(tokens, lengths, starts_document, starts_split, truncated, num_documents, mask) -> Pieces:
    offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Pieces(tokens, lengths.reshape(-1, 1), offsets, starts_document, starts_split, truncated,
                  num_documents, mask)


def lay_out_rows(tokens: np.ndarray, lengths: np.ndarray, bins: np.ndarray, *, num_rows: int,
                 seq_len: int, eod_token_id: int, pad_token_id: int, shift: str,
                 loss_mask: np.ndarray | None = None,
                 empty: Callable[..., np.ndarray] = np.empty,
                 out_loss_tokens: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The six LLM fields, int32 [num_rows, seq_len], of placed pieces (see :func:`llm_fields`).

    Args:
      tokens: int32[sum(lengths)], the pieces' tokens back to back in placement order.
      lengths: int64[n], tokens per piece.
      bins: int64[n], each piece's row.
      loss_mask: int32[sum(lengths)] of 0/1 aligned with ``tokens``, or None (all 1).
      empty: ``empty(shape, dtype)`` gives each field's array, e.g. a
        :class:`~xbatch.packing.buffers.BufferPool`'s; every cell is written.
      out_loss_tokens: int64[num_rows] or None; if given, gets each row's targets trained
        on (cells with ``targets_segmentation != 0``; every row holds a piece).
    """
    shape = (num_rows, seq_len)
    packed, segmentation, positions = (empty(shape, np.int32) for _ in range(3))
    pack_pieces(tokens, lengths, bins, packed, segmentation, positions, pad_token_id=pad_token_id)
    trained = None
    if loss_mask is not None:
        # The mask packs exactly like its tokens; times the segment ids it is the
        # segmentation of the targets trained on (a 0/1 mask keeps or zeroes each id).
        # One pass writes it (shifted for shift="targets") and counts it per row.
        trained = empty(shape, np.int32)
        counts = kernels.trained_segmentation(loss_mask, lengths, bins, trained, shift=int(shift == "targets"))
        if out_loss_tokens is not None:
            out_loss_tokens[...] = counts
    elif out_loss_tokens is not None:
        out_loss_tokens[...] = loss_tokens_per_row(lengths, bins, num_rows, None, shift)
    return llm_fields(packed, segmentation, positions, eod_token_id=eod_token_id,
                      pad_token_id=pad_token_id, shift=shift, trained_segmentation=trained, empty=empty)


def pack_pieces(tokens, lengths, bins, packed, segmentation, positions, *, pad_token_id: int) -> None:
    """Writes placed pieces into every cell of ``packed``, ``segmentation`` and ``positions``.

    Pieces are laid out in the given order, each at its row's next free cell; they get
    1-based segment ids and positions restarting at 0 per piece; the rest of each row is
    ``pad_token_id`` with segment id and position 0.
    """
    kernels.scatter_rows(tokens, lengths, bins, packed, padding=pad_token_id)
    kernels.pack_rows(lengths, bins, segmentation, positions)


def llm_fields(packed: np.ndarray, segmentation: np.ndarray, positions: np.ndarray, *, eod_token_id: int,
               pad_token_id: int, shift: str, trained_segmentation: np.ndarray | None = None,
               empty: Callable[..., np.ndarray] = np.empty) -> dict[str, np.ndarray]:
    """The six LLM fields of packed rows; takes ownership of the arrays given.

    With ``shift="inputs"``, targets are the packed tokens and inputs the packed tokens
    shifted right with ``eod_token_id`` first; both share segmentations and positions (as
    copies). With ``shift="targets"``, inputs are the packed tokens with their
    segmentations and positions, and every targets field is its inputs field shifted left
    by one: column ``i`` describes packed token ``i + 1``, the target of ``inputs[:, i]``;
    the last column is ``pad_token_id``, segmentation 0 and position 0 (no target). A
    piece's last token thus predicts the next piece's first token under the next piece's
    segment id; keep ``targets_segmentation == inputs_segmentation`` to train only on
    predictions inside a document. The new arrays come from ``empty(shape, dtype)``.

    ``trained_segmentation``, if given, is the targets segmentation (already shifted for
    ``shift="targets"``): the segment id of each target, 0 where a target is not trained
    on; without it the targets segmentation is the (shifted) segmentation.
    """

    def new() -> np.ndarray:
        return empty(packed.shape, np.int32)

    if shift == "inputs":
        return {
            "inputs": kernels.shift_right(packed, eod_token_id, out=new()),
            "targets": packed,
            "inputs_position": positions,
            "inputs_segmentation": segmentation,
            "targets_position": _copy(positions, new()),
            "targets_segmentation": (
                _copy(segmentation, new()) if trained_segmentation is None else trained_segmentation
            ),
        }
    return {
        "inputs": packed,
        "targets": kernels.shift_left(packed, pad_token_id, out=new()),
        "inputs_position": positions,
        "inputs_segmentation": segmentation,
        "targets_position": kernels.shift_left(positions, 0, out=new()),
        "targets_segmentation": (
            kernels.shift_left(segmentation, 0, out=new()) if trained_segmentation is None else trained_segmentation
        ),
    }


def _copy(source: np.ndarray, out: np.ndarray) -> np.ndarray:
    np.copyto(out, source)
    return out


def loss_tokens_per_row(lengths: np.ndarray, bins: np.ndarray, num_rows: int, loss_mask: np.ndarray | None,
                        shift: str) -> np.ndarray:
    """int64[num_rows]: targets trained on per row (cells with ``targets_segmentation != 0``).

    Args:
      lengths, bins, loss_mask: the placed pieces, as for :func:`lay_out_rows`; every
        row holds at least one piece.
      shift: with ``"targets"`` a row's first cell is no target (column 0 of the inputs).
    """
    if lengths.shape[0] == 0:
        return np.zeros(num_rows, np.int64)
    starts = np.cumsum(lengths) - lengths
    per_piece = lengths if loss_mask is None else np.add.reduceat(loss_mask, starts)
    per_row = np.bincount(bins, weights=per_piece, minlength=num_rows).astype(np.int64)
    if shift == "targets":
        # Pieces go to their row's next free cell in this order: a row's first piece
        # (first occurrence of its bin) starts at its column 0.
        rows, first_piece = np.unique(bins, return_index=True)
        per_row[rows] -= 1 if loss_mask is None else loss_mask[starts[first_piece]]
    return per_row


def place_until_full(packer, lengths: np.ndarray, out_bins: np.ndarray, start: int) -> tuple[int, bool]:
    """Places pieces ``start, start + 1, ...`` until one fits no bin.

    Returns:
      (index of the first piece not placed, whether the window is full: a piece fits no bin).
    """
    stop = start + packer.place(lengths[start:], out_bins[start:])
    return stop, stop < lengths.shape[0]
