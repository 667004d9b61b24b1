"""Packers built on the kernels: grain drop-ins, the LLM packer and bulk packing."""

from .grain_packers import BestFitPackIterDataset, FirstFitPackIterDataset
from .stats import PackingStats

__all__ = ["BestFitPackIterDataset", "FirstFitPackIterDataset", "PackingStats"]
