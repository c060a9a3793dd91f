from lit_llm.modules.language_model import LanguageModel

__all__ = ["LanguageModel"]
