"""Non-finite losses and gradients, loss spikes and exploding weights: skip or stop, never save bad weights.

One NaN in a loss or a gradient, clipped with ``error_if_nonfinite=False`` (Lightning's default), turns every
weight into NaN, and the next checkpoint saves them. Here the gradient norm is checked before each optimizer
step, after the gradients are reduced over processes (and summed over pipeline stages, so every stage makes
the same decision). A non-finite norm drops every gradient, so AdamW leaves the weights and its moments
untouched for that step (the step is still counted and the LR schedule advances, as with AMP's gradient
scaler). A loss far above the running median of the recent steps' losses is skipped the same way (a
spike: bad data, or the first sign of divergence). ``max_consecutive`` skipped steps in a row stop the run
with an error naming the step.

Finite gradients can still wreck the weights: with a learning rate of 1e38 the first update takes them to
1e37. So after every update the weights' total norm is compared with the last sound one, and a jump of more
than ``max_weight_growth`` times in one step (or a non-finite norm) stops the run at once, before any
checkpoint of that step is written; a checkpoint is never written with such weights or a non-finite one.
The error's advice (resume from the newest checkpoint with a lower learning rate) works: a resumed fit
applies a changed learning rate (``TransformerModule.on_train_start``), and the streak of skipped steps is
not carried into it.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lit_llm.parallel.pipeline import grad_norm, total_norm

SPIKE_MIN_HISTORY = 10  # steps of loss history before a spike can be called
SPIKE_MIN_NATS = 2.0  # and a spike is also at least this far above the median (small fine-tuning losses)


class NonFiniteError(RuntimeError):
    """Training produced non-finite or exploding values that skipping steps did not get past."""


class NonFiniteGuard(L.Callback):
    """Skip optimizer steps whose gradients are not finite or whose loss spikes, stop when the weights explode,
    and refuse to checkpoint non-finite or exploded weights.

    Args:
        max_consecutive: stop after this many skipped steps in a row (0: never skip, stop at the first).
        enabled: turn the checks off (they cost one pass over the gradients and one over the weights per step).
        loss_spike_factor: skip a step whose loss is more than this many times the median of the last
            ``loss_window`` steps' losses (and at least 2 nats above it); 0 turns the check off. Not under
            pipeline parallelism, whose schedule computes the loss inside the stages.
        loss_window: how many recent steps' losses the median is taken over.
        max_weight_growth: stop when the weights' total L2 norm grows more than this many times in one step;
            0 turns the check off (non-finite weights always stop the run).
    """

    def __init__(self, max_consecutive: int = 3, enabled: bool = True, loss_spike_factor: float = 10.0,
                 loss_window: int = 100, max_weight_growth: float = 10.0) -> None:
        if max_consecutive < 0 or loss_window < 1:
            raise ValueError(f"nonfinite.max_consecutive must be >= 0 and nonfinite.loss_window >= 1, got"
                             f" {max_consecutive} and {loss_window}")
        if loss_spike_factor != 0 and loss_spike_factor <= 1 or max_weight_growth != 0 and max_weight_growth <= 1:
            raise ValueError(f"nonfinite.loss_spike_factor and nonfinite.max_weight_growth must be > 1 (or 0 to turn"
                             f" the check off), got {loss_spike_factor} and {max_weight_growth}")
        self.max_consecutive, self.enabled = max_consecutive, enabled
        self.loss_spike_factor, self.max_weight_growth = loss_spike_factor, max_weight_growth
        self.losses: deque[float] = deque(maxlen=loss_window)  # recent steps' losses (saved in checkpoints)
        self.skipped = 0  # over the whole run (saved in checkpoints)
        self.consecutive = 0
        self._step_loss: Optional[torch.Tensor] = None  # this step's loss, summed over accumulated micro-batches
        self._weight_norm: Optional[float] = None  # the last sound total norm of the weights

    # ------------------------------------------------------------------ before the update
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if self.enabled and self.loss_spike_factor:
            loss = loss.detach().float()
            self._step_loss = loss if self._step_loss is None else self._step_loss + loss

    def _spike(self, trainer: L.Trainer) -> Optional[float]:
        """This step's loss (the mean over processes) if it is a spike, else None (and it joins the history)."""
        loss, self._step_loss = self._step_loss, None
        if loss is None:
            return None
        if trainer.world_size > 1:  # every process decides on the same number
            loss = trainer.strategy.reduce(loss, reduce_op="mean")
        value = loss.item()
        if not torch.isfinite(loss):
            return None  # the gradient check sees it
        if len(self.losses) >= SPIKE_MIN_HISTORY:
            median = statistics.median(self.losses)
            if value > self.loss_spike_factor * median and value > median + SPIKE_MIN_NATS:
                return value
        self.losses.append(value)
        return None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if not self.enabled:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        pipeline = getattr(pl_module, "pipeline", None)  # stages combine their norms: every stage decides alike
        norm = grad_norm(params, pipeline.group if pipeline is not None else None)
        spike = self._spike(trainer)
        if torch.isfinite(norm) and spike is None:
            self.consecutive = 0
            return
        step = trainer.global_step
        what = (f"non-finite gradient norm ({norm.item()})" if spike is None else
                f"loss spike ({spike:.4g}, over {self.loss_spike_factor:g} x the median"
                f" {statistics.median(self.losses):.4g} of the last {len(self.losses)} steps)")
        self.consecutive += 1
        if self.consecutive > self.max_consecutive:
            raise NonFiniteError(
                f"{what.capitalize()} at step {step} ({self.consecutive} bad step(s) in a row, more than"
                f" nonfinite.max_consecutive={self.max_consecutive}); the run stopped before updating the weights."
                " Resume from the last checkpoint (--ckpt_path newest), which holds sound weights, with a lower"
                " --model.optimizer.learning_rate or gradient clipping, or look for bad data near this step."
            )
        for p in params:  # AdamW skips parameters without a gradient: no update, no weight decay, no moment change
            p.grad = None
        self.skipped += 1
        rank_zero_warn(f"step {step}: {what}; the step was skipped ({self.skipped} skipped so far,"
                       f" {self.consecutive} in a row)")
        pl_module.log("nonfinite_skipped_steps", float(self.skipped), on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ after the update
    def _check_weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stop if the weights are not finite or their norm jumped; else remember it as the last sound one."""
        pipeline = getattr(pl_module, "pipeline", None)
        norm = total_norm(list(pl_module.parameters()), pipeline.group if pipeline is not None else None).item()
        previous = self._weight_norm
        exploded = self.max_weight_growth and previous and norm > self.max_weight_growth * previous
        if not torch.isfinite(torch.tensor(norm)) or exploded:
            raise NonFiniteError(
                f"The weights' norm went from {previous:.4g} to {norm:.4g} at step {trainer.global_step} (more than"
                f" nonfinite.max_weight_growth={self.max_weight_growth:g} times in one step, or not finite): the"
                " update exploded them, usually from a learning rate far too high. The run stopped before saving"
                " them. Resume from the last checkpoint (--ckpt_path newest), which holds sound weights, with a"
                " lower --model.optimizer.learning_rate."
                if previous else
                f"The weights are not finite at step {trainer.global_step}; the run stopped before saving them."
            )
        self._weight_norm = norm

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:  # the weights before the first update (a resumed run's: the checkpoint's)
            self._weight_norm = None
            self._check_weights(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # runs before ModelCheckpoint's own on_train_batch_end (Lightning puts checkpoint callbacks last)
        if self.enabled:
            self._check_weights(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self.enabled:
            return
        bad = None
        for name, value in checkpoint.get("state_dict", {}).items():
            local = value.to_local() if hasattr(value, "to_local") else value
            if torch.is_tensor(local) and local.is_floating_point() and not torch.isfinite(local).all():
                bad = name
                break
        flag = torch.tensor(float(bad is not None), device=pl_module.device)
        if trainer.world_size > 1:  # shards and stages differ: every rank must stop, or the others wait forever
            flag = trainer.strategy.reduce(flag, reduce_op="max")
        if flag.item():
            raise NonFiniteError(f"Weight {bad or '(on another rank)'} is not finite at step {trainer.global_step};"
                                 " not writing a checkpoint that would overwrite finite ones")
        if trainer.training:  # a save from inside a step (pre-emption) may come before the batch-end check
            self._check_weights(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "losses": list(self.losses)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # the streak is not restored: a resumed run (say, with a lower learning rate) starts a new one
        self.skipped = state_dict.get("skipped", 0)
        self.losses.extend(state_dict.get("losses", []))
