"""Packers built on the kernels: grain drop-ins, the LLM packer and bulk packing, and the
attention metadata of packed batches.

Names load on first use, so ``xbatch.packing.pieces`` (NumPy only) needs neither grain
nor JAX, and bulk packing needs no grain.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "BestFitPackIterDataset": "grain_packers",
    "ConcatThenSplitIterDataset": "concat_then_split",
    "FirstFitPackIterDataset": "grain_packers",
    "LLMPackIterDataset": "llm",
    "PackingStats": "stats",
    "add_varlen_metadata": "attention",
    "attention_metadata": "attention",
    "pack_documents": "bulk",
    "varlen_metadata": "attention",
    "window_documents": "bulk",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'xbatch.packing' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
