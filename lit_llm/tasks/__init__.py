"""LightningModules: the shared ``TransformerModule`` and one small module per task."""

from lit_llm.model.lora import LoraSpec
from lit_llm.tasks.base import ParallelConfig, TransformerModule
from lit_llm.tasks.classifier import SequenceClassifier
from lit_llm.tasks.language_model import LanguageModel

__all__ = ["LanguageModel", "LoraSpec", "ParallelConfig", "SequenceClassifier", "TransformerModule"]
