"""Packers built on the kernels: grain drop-ins, the LLM packer and bulk packing."""

from .bulk import pack_documents, window_documents
from .grain_packers import BestFitPackIterDataset, FirstFitPackIterDataset
from .llm import LLMPackIterDataset
from .stats import PackingStats

__all__ = [
    "BestFitPackIterDataset",
    "FirstFitPackIterDataset",
    "LLMPackIterDataset",
    "PackingStats",
    "pack_documents",
    "window_documents",
]
