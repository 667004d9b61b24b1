"""Corpus sources: tokenized corpora on disk -> shuffled, sharded ragged chunks for the packers.

- :func:`open_corpus` opens xbatch's own format, Arrow/Parquet list columns, Megatron-LM
  ``.bin``/``.idx`` and ArrayRecord files as one :class:`Corpus` (memory-mapped where the
  format allows); :meth:`Corpus.from_arrays` / :meth:`Corpus.from_documents` wrap arrays.
- :class:`DocumentChunkIterDataset` yields ragged chunks ``{"tokens", "lengths",
  "documents"}`` in grain's own shuffled document order, sharded like grain.
- :func:`llm_batches` is the one-call pipeline: corpus -> chunks -> LLM packer -> batches.

Names load on first use, so reading a corpus needs neither grain nor JAX.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "Corpus": "corpus",
    "CorpusError": "corpus",
    "CorpusShard": "corpus",
    "DocumentChunkIterDataset": "chunks",
    "XbatchCorpusWriter": "format_xbatch",
    "document_order": "shuffle",
    "gather_documents": "gather",
    "llm_batches": "pipeline",
    "mix_llm_batches": "pipeline",
    "packed_rows": "pipeline",
    "open_corpus": "open",
    "write_xbatch_corpus": "format_xbatch",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'xbatch.sources' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
