"""Many documents of a corpus, back to back as int32: one kernel call per shard touched."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .. import kernels
from .corpus import CorpusError, _document_indices

if TYPE_CHECKING:
    from .corpus import Corpus


def gather_documents(corpus: Corpus, indices: Any) -> tuple[np.ndarray, np.ndarray]:
    """Documents ``indices`` (global, any order, repeats allowed) back to back.

    Returns (int32[total] tokens, int64[len(indices)] lengths), in the order given. Each
    shard's documents are copied by one :func:`xbatch.kernels.gather_ranges` call.
    """
    indices = _document_indices(indices, len(corpus))
    shards = corpus.shards
    if len(shards) == 1:
        return _gather_shard(shards[0], indices)
    shard_of = np.searchsorted(corpus.shard_starts, indices, side="right") - 1
    if shard_of.size and shard_of[0] == shard_of[-1] and (shard_of == shard_of[0]).all():
        s = int(shard_of[0])
        return _gather_shard(shards[s], indices - corpus.shard_starts[s])
    # Gather shard by shard, then put the documents back into the order asked for.
    order = np.argsort(shard_of, kind="stable")
    sorted_shards = shard_of[order]
    bounds = np.flatnonzero(np.diff(sorted_shards)) + 1
    lengths = np.empty(indices.shape[0], dtype=np.int64)
    parts = []
    for group in np.split(order, bounds):
        if not group.size:
            continue
        s = int(shard_of[group[0]])
        part_tokens, part_lengths = _gather_shard(shards[s], indices[group] - corpus.shard_starts[s])
        lengths[group] = part_lengths
        parts.append((group, part_tokens, part_lengths))
    # Where each document lands in the output, in the requested order.
    out_offsets = np.zeros(indices.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=out_offsets[1:])
    tokens = np.empty(int(out_offsets[-1]), dtype=np.int32)
    starts = np.empty(indices.shape[0], dtype=np.int64)
    ends = np.empty(indices.shape[0], dtype=np.int64)
    for group, part_tokens, part_lengths in parts:
        # The part's documents are back to back; scatter them with the same kernel.
        part_offsets = np.zeros(group.shape[0] + 1, dtype=np.int64)
        np.cumsum(part_lengths, out=part_offsets[1:])
        starts[group] = part_offsets[:-1]
        ends[group] = part_offsets[1:]
    # One more gather, from a concatenation of the parts, in the requested order.
    base = 0
    for group, part_tokens, _ in parts:
        starts[group] += base
        ends[group] += base
        base += part_tokens.shape[0]
    joined = np.concatenate([part[1] for part in parts]) if parts else np.zeros(0, np.int32)
    kernels.gather_ranges(joined, starts, ends, out=tokens)
    return tokens, lengths


def _gather_shard(shard, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = shard.starts[local]
    ends = shard.ends[local]
    try:
        return kernels.gather_ranges(shard.tokens, starts, ends)
    except ValueError as exc:
        raise CorpusError(f"{shard.name}: {exc}") from None
