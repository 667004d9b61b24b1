"""Packers built on the kernels: grain drop-ins, the LLM packer and bulk packing."""

from .stats import PackingStats

__all__ = ["PackingStats"]
