"""Tokens per second on the progress bar and in the logger.

Lightning's ``ThroughputMonitor`` writes to the logger only; this callback feeds the same windowed
``lightning.fabric.utilities.Throughput`` meter and logs through ``pl_module.log`` so the figure also
shows on the progress bar.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.fabric.utilities.throughput import Throughput


class TokenThroughput(L.Callback):
    """Log ``tokens_per_sec`` (all processes together, over a sliding window of batches) and the module's
    ``tokens_seen`` counter, every ``trainer.log_every_n_steps`` steps, when the logger writes anyway.

    Args:
        window_size: number of batches the rate is averaged over.
    """

    def __init__(self, window_size: int = 20) -> None:
        self.window_size = window_size

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._meter = Throughput(window_size=self.window_size)
        self._t0, self._batches, self._tokens = time.perf_counter(), 0, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches += 1
        # predicted tokens of a language-model block; padded ids of a classification batch
        self._tokens += batch["input_ids"].numel() if isinstance(batch, dict) else batch[:, 1:].numel()
        self._meter.update(
            time=time.perf_counter() - self._t0, batches=self._batches, samples=self._batches, lengths=self._tokens
        )
        if trainer.global_step % trainer.log_every_n_steps:
            return  # each self.log costs Lightning ~0.5 ms; log only when the logger writes
        # device/items_per_sec is this process's rate; absent until the window holds two points
        rate = self._meter.compute().get(f"device{self._meter.separator}items_per_sec")
        if rate is not None:
            pl_module.log("tokens_per_sec", rate * trainer.world_size, prog_bar=True, on_step=True, on_epoch=False)
        if hasattr(pl_module, "tokens_seen"):
            pl_module.log("tokens_seen", float(pl_module.tokens_seen), on_step=True, on_epoch=False)
