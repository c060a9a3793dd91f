from lit_llm.model.config import ModelConfig
from lit_llm.model.transformer import GPT

__all__ = ["GPT", "ModelConfig"]
