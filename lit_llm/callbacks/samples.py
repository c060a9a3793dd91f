"""Sample generations during training, as a table in the tracker and a JSON file beside the eval reports.

After each validation of a causal ``LanguageModel`` in ``fit``, continue each prompt with the KV-cached
sampler of ``lit_llm.generate``. The sampler draws from its own seeded generator, so sampling leaves the
training RNG (dropout, data order) untouched and a resumed run stays exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from tokenizers import Tokenizer
from torch.distributed.tensor import DTensor

from lit_llm.data.tokenizer import declare_special_tokens, decode, encode, eos_id
from lit_llm.generate import generate_tokens
from lit_llm.io import write_text_atomic


class SampleGenerations(L.Callback):
    """Log continuations of ``prompts`` after every validation in fit (W&B: table ``samples``).

    Args:
        prompts: texts to continue; empty turns sampling off.
        max_new_tokens: tokens generated per prompt.
        temperature: sampling temperature (0 is greedy).
        top_k: sample among the k most likely tokens (None: all).
        seed: seed of the sampler's own generator (the same samples for the same weights).
    """

    def __init__(self, prompts: Optional[list[str]] = None, max_new_tokens: int = 64, temperature: float = 0.8,
                 top_k: Optional[int] = 50, seed: int = 0) -> None:
        self.prompts = ["\n"] if prompts is None else list(prompts)
        self.max_new_tokens, self.temperature, self.top_k, self.seed = max_new_tokens, temperature, top_k, seed
        self.rows: list[list] = []

    def _can_sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        if not (self.prompts and trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.is_global_zero):
            return False
        config = getattr(pl_module, "config", None)
        if config is None or not config.causal or getattr(pl_module, "model", None) is None:
            return False
        if getattr(pl_module, "tokenizer_json", None) is None or getattr(pl_module, "pipeline", None) is not None:
            return False
        # the whole model on this rank: one process or DDP replicas, not FSDP / tensor-parallel shards
        return not any(isinstance(p, DTensor) for p in pl_module.model.parameters())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._can_sample(trainer, pl_module):
            return  # sharded or pipelined weights are not whole on one rank; samples come from `generate` then
        tok = declare_special_tokens(Tokenizer.from_str(pl_module.tokenizer_json), pl_module.special_tokens)
        gen = torch.Generator(pl_module.device).manual_seed(self.seed)
        was_training = pl_module.model.training
        pl_module.model.eval()
        rows = []
        for prompt in self.prompts:
            ids = encode(tok, prompt) or [eos_id(tok) or 0]
            idx = torch.tensor([ids], device=pl_module.device)
            out = generate_tokens(pl_module.model, idx, self.max_new_tokens, self.temperature, self.top_k,
                                  generator=gen)
            rows.append([trainer.global_step, prompt, decode(tok, out[0, len(ids):].tolist())])
        pl_module.model.train(was_training)
        self.rows += rows
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):  # the whole table so far, so the latest version shows every step
                logger.log_text(key="samples", columns=["step", "prompt", "sample"], data=self.rows)
        write_text_atomic(Path(trainer.default_root_dir) / "eval" / f"samples_step{trainer.global_step}.json",
                          json.dumps([dict(zip(["step", "prompt", "sample"], r)) for r in rows], indent=2) + "\n")
