"""Non-finite losses and gradients: skip the step, count it, stop after a bad stretch, never save NaN weights.

One NaN in a loss or a gradient, clipped with ``error_if_nonfinite=False`` (Lightning's default), turns every
weight into NaN, and the next checkpoint saves them. Here the gradient norm is checked before each optimizer
step, after the gradients are reduced over processes (and summed over pipeline stages, so every stage makes
the same decision). A non-finite norm drops every gradient, so AdamW leaves the weights and its moments
untouched for that step (the step is still counted and the LR schedule advances, as with AMP's gradient
scaler); ``max_consecutive`` such steps in a row stop the run with an error naming the step. A checkpoint is never written with a non-finite weight.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lit_llm.parallel.pipeline import grad_norm


class NonFiniteError(RuntimeError):
    """Training produced non-finite values that skipping steps did not get past."""


class NonFiniteGuard(L.Callback):
    """Skip optimizer steps whose gradients are not finite, and refuse to checkpoint non-finite weights.

    Args:
        max_consecutive: stop after this many skipped steps in a row (0: never skip, stop at the first).
        enabled: turn the check off (it costs one pass over the gradients per step).
    """

    def __init__(self, max_consecutive: int = 3, enabled: bool = True) -> None:
        if max_consecutive < 0:
            raise ValueError(f"nonfinite.max_consecutive must be >= 0, got {max_consecutive}")
        self.max_consecutive, self.enabled = max_consecutive, enabled
        self.skipped = 0  # over the whole run (saved in checkpoints)
        self.consecutive = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if not self.enabled:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        pipeline = getattr(pl_module, "pipeline", None)  # stages combine their norms: every stage decides alike
        norm = grad_norm(params, pipeline.group if pipeline is not None else None)
        if torch.isfinite(norm):
            self.consecutive = 0
            return
        step = trainer.global_step
        self.consecutive += 1
        if self.consecutive > self.max_consecutive:
            raise NonFiniteError(
                f"The gradients were not finite at step {step} ({self.consecutive} step(s) in a row, more than"
                f" nonfinite.max_consecutive={self.max_consecutive}); the run stopped before updating the weights."
                " Resume from the last checkpoint (--ckpt_path newest), which holds finite weights, with a lower"
                " learning rate or gradient clipping, or look for bad data near this step."
            )
        for p in params:  # AdamW skips parameters without a gradient: no update, no weight decay, no moment change
            p.grad = None
        self.skipped += 1
        rank_zero_warn(f"step {step}: non-finite gradient norm ({norm.item()}); the step was skipped"
                       f" ({self.skipped} skipped so far, {self.consecutive} in a row)")
        pl_module.log("nonfinite_skipped_steps", float(self.skipped), on_step=True, on_epoch=False)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self.enabled:
            return
        for name, value in checkpoint.get("state_dict", {}).items():
            local = value.to_local() if hasattr(value, "to_local") else value
            if torch.is_tensor(local) and local.is_floating_point() and not torch.isfinite(local).all():
                raise NonFiniteError(f"Weight {name} is not finite at step {trainer.global_step}; not writing a"
                                     " checkpoint that would overwrite finite ones")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = state_dict.get("skipped", 0)
        self.consecutive = state_dict.get("consecutive", 0)
