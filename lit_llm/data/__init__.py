"""Data pipeline. ``PretrainDataModule`` is imported on first use, so that the model code (which only needs
``lit_llm.data.masking``) imports without the ``datasets`` stack."""

from typing import Any

__all__ = ["PretrainDataModule"]


def __getattr__(name: str) -> Any:
    if name == "PretrainDataModule":
        from lit_llm.data.pretrain import PretrainDataModule

        return PretrainDataModule
    raise AttributeError(f"module 'lit_llm.data' has no attribute {name!r}")
