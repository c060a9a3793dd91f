"""lit_llm: train, fine-tune, evaluate and serve a from-scratch transformer with PyTorch Lightning."""

__version__ = "0.1.0"
