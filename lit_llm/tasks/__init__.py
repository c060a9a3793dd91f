"""LightningModules: the shared ``TransformerModule`` and one small module per task."""

from lit_llm.model.lora import LoraSpec
from lit_llm.tasks.base import ParallelConfig, TransformerModule
from lit_llm.tasks.classifier import SequenceClassifier
from lit_llm.tasks.instruction import InstructionModel
from lit_llm.tasks.language_model import LanguageModel
from lit_llm.tasks.optim import OptimizerConfig
from lit_llm.tasks.preference import PreferenceModel

__all__ = ["InstructionModel", "LanguageModel", "LoraSpec", "OptimizerConfig", "ParallelConfig", "PreferenceModel", "SequenceClassifier",
           "TransformerModule"]
