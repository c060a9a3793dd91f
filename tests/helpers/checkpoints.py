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


def gpt2_style_tokenizer():
    """A byte-level BPE (vocabulary 300, SST-2 text) with GPT-2's conventions: ``<|endoftext|>`` ends and starts a
    text, ``<|pad|>`` pads, and there is no ``[EOS]``: the tokenizer of a model to import from transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(sst2_texts(2000), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|pad|>", "<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok
