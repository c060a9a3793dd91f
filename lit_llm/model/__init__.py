from torch import nn

from lit_llm.model.bert import Bert
from lit_llm.model.config import PRESETS, ModelConfig
from lit_llm.model.transformer import Decoder


def build_model(config: ModelConfig) -> nn.Module:
    """The module for ``config.family``: ``Decoder`` for causal decoders, ``Bert`` for the encoder."""
    return Decoder(config) if config.causal else Bert(config)


__all__ = ["Decoder", "Bert", "ModelConfig", "PRESETS", "build_model"]
