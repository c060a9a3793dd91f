from torch import nn

from lit_llm.model.bert import Bert
from lit_llm.model.config import PRESETS, ModelConfig
from lit_llm.model.transformer import GPT


def build_model(config: ModelConfig) -> nn.Module:
    """The module for ``config.family``: ``GPT`` for causal decoders, ``Bert`` for the encoder."""
    return GPT(config) if config.causal else Bert(config)


__all__ = ["GPT", "Bert", "ModelConfig", "PRESETS", "build_model"]
