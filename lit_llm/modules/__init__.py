from lit_llm.modules.classifier import LoraSpec, SequenceClassifier
from lit_llm.modules.language_model import LanguageModel

__all__ = ["LanguageModel", "LoraSpec", "SequenceClassifier"]
