"""Preference tuning with DPO (Rafailov et al. 2023): the policy learns to prefer the chosen answer of each pair
to the rejected one, measured against a frozen reference, with no reward model and no sampling.

For a pair, with ``logp`` the summed log-probability of an answer's tokens under the policy and ``ref`` under
the reference, ``delta = (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)`` and the loss is

- ``sigmoid`` (DPO): ``-log sigmoid(beta * delta)``;
- ``robust`` (label-smoothed DPO, Chowdhury et al. 2024, for noisy preferences): ``((1 - e) * -log sigmoid(beta
  * delta) + e * log sigmoid(-beta * delta)) / (1 - 2e)`` with ``e = label_smoothing``;
- ``ipo`` (Azar et al. 2023): ``(delta' - 1 / (2 beta))^2``, where ``delta'`` uses log-probabilities averaged
  over each answer's tokens.

These are the formulas of TRL's ``DPOTrainer`` (``tests/test_instruct.py`` checks them against it). The rewards
``beta * (logp - ref)`` of chosen and rejected answers, their margin and how often the chosen one wins
(accuracy) are logged for training and validation.

The reference is the model the tuning starts from (``init_from``): with LoRA, the same network with its adapters
switched off (no second copy); without, a frozen copy held outside the module's state (not checkpointed, since
``init_from`` rebuilds it, and whole on every rank).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from lit_llm.model import build_model
from lit_llm.model.lora import LoraSpec
from lit_llm.model.loss import IGNORE_INDEX
from lit_llm.tasks.base import ParallelConfig
from lit_llm.tasks.instruction import InstructionModel
from lit_llm.tasks.optim import APPLIED_ON_RESUME, OptimizerConfig

LossType = Literal["sigmoid", "robust", "ipo"]


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float, loss_type: LossType = "sigmoid", label_smoothing: float = 0.0,
             chosen_tokens: Optional[torch.Tensor] = None,
             rejected_tokens: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards) from summed answer log-probabilities (B,) of the policy
    and the reference. ``ipo`` needs the answers' token counts."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "robust":
        e = label_smoothing
        losses = (-(1 - e) * F.logsigmoid(beta * delta) + e * F.logsigmoid(-beta * delta)) / (1 - 2 * e)
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss averages over each answer's tokens: pass chosen_tokens and rejected_tokens")
        avg = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (avg - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be sigmoid, robust or ipo, got {loss_type!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def answer_logps(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each row's labelled tokens, their count), both (B,)."""
    logits = model(input_ids).float()
    token_logps = -F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return token_logps.sum(dim=1), (labels != IGNORE_INDEX).sum(dim=1)


class PreferenceModel(InstructionModel):
    """DPO on preference pairs (``lit_llm.data.instructions.PreferenceDataModule``: pair files or a feedback store).

    Args:
        init_from: the lit_llm language-model checkpoint to start from, usually an instruction-tuned one; it is
            also the reference.
        beta: strength of the pull toward the reference (DPO's beta; IPO's tau).
        loss_type: ``sigmoid`` (DPO), ``robust`` (label-smoothed DPO) or ``ipo``.
        label_smoothing: with ``robust``: the assumed share of pairs whose preference is flipped, in [0, 0.5).
        lora: train LoRA adapters (peft) instead of every weight; the reference is then the adapters switched off.
        dropout: dropout during tuning; None keeps the checkpoint's. DPO usually runs without (0).
        optimizer: the optimizer and its warm-up + cosine schedule (``OptimizerConfig``), with DPO's defaults
            (AdamW at 5e-6, no weight decay, betas 0.9/0.95).
        parallel: activation checkpointing, compile and FSDP dtype (see ``ParallelConfig``); not pipeline stages.
    """

    supports_pipeline = False
    applied_on_resume = frozenset({"beta", "loss_type", "label_smoothing", "parallel"}) | APPLIED_ON_RESUME

    def __init__(
        self,
        init_from: str,
        beta: float = 0.1,
        loss_type: LossType = "sigmoid",
        label_smoothing: float = 0.0,
        lora: Optional[LoraSpec] = None,
        dropout: Optional[float] = 0.0,
        optimizer: OptimizerConfig = OptimizerConfig(learning_rate=5e-6, min_lr=5e-7, warmup_steps=10,
                                                     weight_decay=0.0, betas=(0.9, 0.95)),
        parallel: Optional[ParallelConfig] = None,
    ) -> None:
        if beta <= 0:
            raise ValueError(f"model.beta must be > 0, got {beta}")
        if loss_type not in ("sigmoid", "robust", "ipo"):
            raise ValueError(f"model.loss_type must be sigmoid, robust or ipo, got {loss_type!r}")
        if not 0 <= label_smoothing < 0.5 or (label_smoothing and loss_type != "robust"):
            raise ValueError(f"model.label_smoothing {label_smoothing}: it is the flipped share of the robust loss, in"
                             " [0, 0.5), with --model.loss_type robust only")
        super().__init__(init_from, lora=lora, dropout=dropout, optimizer=optimizer, parallel=parallel)
        self.hparams.update(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
        self._reference: list[nn.Module] = []  # a list: not a submodule, so neither trained, sharded nor saved
        self.eval_metrics = nn.ModuleDict({k: MeanMetric() for k in ("loss", "margin", "accuracy", "chosen", "rejected")})

    def build_network(self) -> None:
        if self.model is not None:
            return
        super().build_network()
        if self.lora is None:
            reference = build_model(self.config)
            reference.load_state_dict(self.network.state_dict())
            self._reference = [reference.requires_grad_(False).eval()]

    def _reference_logps(self, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            if self.lora is not None:  # the starting model: the network with its adapters switched off
                self.model.disable_adapter_layers()
                try:
                    return answer_logps(self.model, input_ids, labels)
                finally:
                    self.model.enable_adapter_layers()
            reference = self._reference[0]
            if next(reference.parameters()).device != input_ids.device:
                reference.to(input_ids.device)
            return answer_logps(reference, input_ids, labels)

    def _pair_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss and reward statistics of a batch of pairs (rows: B chosen, then B rejected)."""
        x, y = batch["input_ids"], batch["labels"]
        logps, tokens = answer_logps(self.model, x, y)
        ref, _ = self._reference_logps(x, y)
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = ref.chunk(2)
        n_chosen, n_rejected = tokens.chunk(2)
        hp = self.hparams
        losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, hp.beta,
                                                            hp.loss_type, hp.label_smoothing, n_chosen, n_rejected)
        return {"loss": losses.mean(), "margin": (chosen_rewards - rejected_rewards).mean(),
                "accuracy": (chosen_rewards > rejected_rewards).float().mean(),
                "chosen": chosen_rewards.mean(), "rejected": rejected_rewards.mean(), "pairs": chosen.numel(),
                "tokens": y.numel()}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self._pair_loss(batch)
        self.tokens_seen += out["tokens"] * self.data_parallel_size
        sync = self.trainer.world_size > 1
        self.log("train_loss", out["loss"], prog_bar=True, on_step=True, on_epoch=False, sync_dist=sync)
        self.log_dict({f"train_reward_{k}": out[k] for k in ("margin", "accuracy", "chosen", "rejected")},
                      on_step=True, on_epoch=False, sync_dist=sync)
        return out["loss"]

    def _eval_step(self, batch: dict[str, torch.Tensor], prefix: str, batch_idx: int) -> None:
        out = self._pair_loss(batch)
        for k, metric in self.eval_metrics.items():
            metric.update(out[k], weight=out["pairs"])
        names = {"loss": f"{prefix}_loss", "margin": f"{prefix}_reward_margin", "accuracy": f"{prefix}_reward_accuracy",
                 "chosen": f"{prefix}_reward_chosen", "rejected": f"{prefix}_reward_rejected"}
        for k, metric in self.eval_metrics.items():
            self.log(names[k], metric, prog_bar=k in ("loss", "accuracy"), on_step=False, on_epoch=True)

    def _eval_epoch_end(self, prefix: str) -> None:
        metrics = {f"{prefix}_{'loss' if k == 'loss' else 'reward_' + k}": m.compute().item()
                   for k, m in self.eval_metrics.items()}
        self.last_report = {"stage": prefix, "step": self.global_step, "tokens_seen": self.tokens_seen, "metrics": metrics}

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        """Per pair: the chosen and rejected rewards."""
        out_logps, _ = answer_logps(self.model, batch["input_ids"], batch["labels"])
        ref, _ = self._reference_logps(batch["input_ids"], batch["labels"])
        rewards = self.hparams.beta * (out_logps - ref)
        chosen, rejected = rewards.chunk(2)
        return {"chosen_reward": chosen, "rejected_reward": rejected}
