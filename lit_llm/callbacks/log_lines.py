"""Progress as plain lines, for a log file: a SLURM job's output is a file, where a progress bar's carriage
returns pile up into one unreadable line. And the progress bar's title for runs of ``max_steps``."""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_info


class _UnboundedEpochsRichProgressBar(RichProgressBar):
    """Lightning's RichProgressBar, whose title for a run without an epoch limit (``max_steps`` given, so
    ``max_epochs`` is -1) reads "Epoch 0" instead of "Epoch 0/-2" (Lightning-AI/pytorch-lightning#21925, fixed
    upstream by #21924 after Lightning 2.6). Drop this once the pinned Lightning has that fix."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"  # padded as Lightning's


def fix_unbounded_epochs_title(trainer: L.Trainer) -> None:
    """Give the trainer's progress bar the title above, when it is Lightning's own RichProgressBar (the default when
    ``rich`` is installed); a user's own progress bar class is left as it is."""
    bar = trainer.progress_bar_callback
    if type(bar) is RichProgressBar:
        bar.__class__ = _UnboundedEpochsRichProgressBar


class LogLines(L.Callback):
    """Every ``every_n_steps`` optimizer steps, one line: the step (of max_steps), the logged training
    metrics (loss, learning rate, tokens/s), and the elapsed time. ``submit`` turns it on, with the progress bar
    off, in the jobs it writes.

    Args:
        every_n_steps: how often to print a line; 0 prints none.
    """

    def __init__(self, every_n_steps: int = 0) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._started = time.monotonic()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        fix_unbounded_epochs_title(trainer)  # the CLI always adds this callback: its progress bar reads right

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step == 0 or step % self.every_n_steps or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if (k.startswith(("train_", "lr", "tokens_per_sec", "val_"))) and getattr(v, "numel", lambda: 1)() == 1}
        shown = " ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        rank_zero_info(f"step {step}{total}: {shown} ({time.monotonic() - self._started:.0f} s)")
