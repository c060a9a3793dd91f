"""Instruction (chat) tuning of a causal language model: the loss on the assistant's tokens only.

The network is the language model of a lit_llm checkpoint (``init_from``: a pretrained run, or one that
``import-hf`` wrote), tuned whole or through LoRA adapters (peft); batches come from
``lit_llm.data.instructions.InstructionDataModule``, whose labels are ``IGNORE_INDEX`` everywhere but on the
assistant's turns. Everything else is the language model's (``LanguageModel``): the loss options, the
metrics, pipeline stages, every strategy, and the checkpoint, which stays a language-model checkpoint that
``generate``, ``serve``, ``chat``, ``export`` and a later ``init_from`` read as any other (LoRA adapters are
merged when it is loaded).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

import torch
from tokenizers import Tokenizer
from torch import nn

from lit_llm import checkpoint as ckpt_format
from lit_llm.data.tokenizer import declare_special_tokens
from lit_llm.model.lora import LoraSpec, add_lora
from lit_llm.model.loss import IGNORE_INDEX
from lit_llm.parallel import ParallelDims
from lit_llm.tasks.base import ParallelConfig
from lit_llm.tasks.language_model import LanguageModel
from lit_llm.tasks.optim import APPLIED_ON_RESUME, OptimizerConfig


class InstructionModel(LanguageModel):
    """Fine-tune a causal language model on conversations, with the loss on the assistant's answers only.

    Args:
        init_from: the lit_llm language-model checkpoint to start from (its config and tokenizer are used).
        lora: train LoRA adapters (peft) on these projections instead of every weight; None: full fine-tuning.
        dropout: dropout during tuning; None keeps the checkpoint's.
        optimizer: the optimizer and its warm-up + cosine schedule (``OptimizerConfig``), with fine-tuning's
            defaults (AdamW at 1e-4, no weight decay, betas 0.9/0.95).
        label_smoothing: cross-entropy label smoothing on the answer tokens.
        z_loss: coefficient of the z-loss (0 turns it off).
        loss_chunk_size: compute the loss this many tokens at a time (None: in one go).
        parallel: activation checkpointing, compile, FSDP dtype and pipeline schedule (see ``ParallelConfig``).
    """

    applied_on_resume = frozenset({"label_smoothing", "z_loss", "loss_chunk_size", "parallel"}) | APPLIED_ON_RESUME

    def __init__(
        self,
        init_from: str,
        lora: Optional[LoraSpec] = None,
        dropout: Optional[float] = None,
        optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-4, min_lr=1e-5, warmup_steps=10,
                                                     weight_decay=0.0, betas=(0.9, 0.95)),
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        loss_chunk_size: Optional[int] = None,
        parallel: Optional[ParallelConfig] = None,
    ) -> None:
        if isinstance(lora, dict):  # from a checkpoint's hyperparameters
            lora = LoraSpec(**lora)
        super().__init__(model_args=None if dropout is None else {"dropout": dropout}, optimizer=optimizer,
                         label_smoothing=label_smoothing,
                         z_loss=z_loss, loss_chunk_size=loss_chunk_size, parallel=parallel, init_from=init_from)
        self.hparams["lora"] = None if lora is None else asdict(lora)  # plain data: weights-only loading
        if not self.config.causal:
            raise ValueError(f"{init_from} is a {self.config.family} (masked-LM) model; instruction tuning needs a"
                             " causal one (gpt2 or llama family)")
        self.lora = lora
        # the data module encodes with it, and ends each answer with its end-of-text token
        self.tokenizer = declare_special_tokens(Tokenizer.from_str(self.init_tokenizer), self.special_tokens)

    @property
    def network(self) -> nn.Module:
        """The transformer (inside peft's wrapper when LoRA is on)."""
        return self.model.model if self.lora is not None else self.model

    def build_network(self) -> None:
        if self.model is not None:
            return
        super().build_network()
        if self.lora is not None:
            self.model = add_lora(self.model, self.lora)

    def check_parallel(self, dims: ParallelDims) -> None:
        if self.lora is not None:
            raise ValueError("LoRA adapters are not sharded here: tune with LoRA on one device or under"
                             " configs/strategy/ddp.yaml, or drop model.lora to use FSDP, tensor or pipeline parallelism")

    # ------------------------------------------------------------------ steps: labels come with the batch
    def _inputs_targets(self, batch: dict[str, torch.Tensor], generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["input_ids"], batch["labels"]

    def _eval_inputs_targets(self, batch: dict[str, torch.Tensor], batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["input_ids"], batch["labels"]

    def _target_count(self, targets: torch.Tensor) -> Optional[torch.Tensor]:
        """Answers differ in length, so processes hold different numbers of trained tokens: divide by the mean
        count over all processes (tensor-parallel and pipeline ranks repeat their group's count, which the mean
        cancels), so that the averaged gradients are the global batch's token mean, as on one process."""
        if self.trainer.world_size == 1:
            return None
        local = (targets != IGNORE_INDEX).sum().float()
        return self.trainer.strategy.reduce(local, reduce_op="mean").clamp(min=1)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.lora is not None:
            checkpoint[ckpt_format.KEY]["lora"] = asdict(self.lora)
