"""lit_llm: train, fine-tune, evaluate and serve a from-scratch transformer with PyTorch Lightning."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def __getattr__(name: str) -> Any:  # ``from lit_llm import load`` without importing torch for ``import lit_llm``
    if name == "load":
        from lit_llm.api import load

        return load
    raise AttributeError(f"module 'lit_llm' has no attribute {name!r}")
