"""A lit_llm language-model checkpoint with random weights, for the fine-tuning, serving and export tests."""

from pathlib import Path

import torch

from lit_llm.data.tokenizer import TokenizerSpec, train_tokenizer
from lit_llm.model import ModelConfig, build_model
from tests.helpers.paths import SST2_TRAIN


def sst2_texts(n: int) -> list[str]:
    return [line.split(" ", 1)[1] for line in SST2_TRAIN.read_text().splitlines()[:n]]


def write_lm_checkpoint(path: Path, family: str = "debug", vocab: int = 300, seed: int = 0, **overrides) -> Path:
    """A lit_llm language-model checkpoint (random weights, a BPE tokenizer trained on SST-2 text) in the
    format that ``fit`` writes: what fine-tuning reads from it."""
    tok = train_tokenizer(TokenizerSpec(kind="bpe", vocab_size=vocab), sst2_texts(3000))
    cfg = ModelConfig.from_name(family, vocab_size=tok.get_vocab_size(), block_size=64, **overrides)
    torch.manual_seed(seed)
    model = build_model(cfg)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "lit_llm": {"model_config": cfg.to_dict(), "tokenizer": tok.to_str()}}, path)
    return path
