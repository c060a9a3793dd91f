"""Parallelism applied from outside the model (docs/architecture.md): degrees, device mesh, TP/SP, FSDP2, AC, compile."""

from lit_llm.parallel.dims import ParallelDims
from lit_llm.parallel.parallelize import apply_ac, apply_compile, apply_fsdp, apply_tp
from lit_llm.parallel.strategy import ModelParallel

__all__ = ["ModelParallel", "ParallelDims", "apply_ac", "apply_compile", "apply_fsdp", "apply_tp"]
