"""Tokens per second on the progress bar and in the logger, and model FLOPs utilization on known GPUs.

Lightning's ``ThroughputMonitor`` writes to the logger only; this callback feeds the same windowed
``lightning.fabric.utilities.Throughput`` meter and logs through ``pl_module.log`` so the figure also
shows on the progress bar.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops

from lit_llm.model.costs import estimate


class TokenThroughput(L.Callback):
    """Log ``tokens_per_sec`` (all processes together, over a sliding window of batches) and the module's
    ``tokens_seen`` counter, every ``trainer.log_every_n_steps`` steps, when the logger writes anyway.

    Args:
        window_size: number of batches the rate is averaged over.
    """

    def __init__(self, window_size: int = 20) -> None:
        self.window_size = window_size

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # model FLOPs utilization where the accelerator's peak is known (Lightning's table of GPUs; not CPUs)
        self._flops_per_token = None
        config = getattr(pl_module, "config", None)
        available = None
        if config is not None and hasattr(pl_module, "tokens_seen"):  # language models: lit_llm size's formula
            self._flops_per_token = estimate(config, world_size=1)["train_flops_per_token"]
            dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float16 if "16" in str(trainer.precision) else torch.float32
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                available = get_available_flops(pl_module.device, dtype)
        self._meter = Throughput(available_flops=available, world_size=trainer.world_size, window_size=self.window_size)
        self._t0, self._batches, self._tokens = time.perf_counter(), 0, 0
        # tensor-parallel ranks and pipeline stages share a batch: the job sees dp batches a step, and each
        # process computes dp / world of the job's FLOPs
        self._dp = getattr(pl_module, "data_parallel_size", trainer.world_size)
        self._share = self._dp / trainer.world_size

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches += 1
        # predicted tokens of a language-model block; padded ids of a classification batch
        tokens = batch["input_ids"].numel() if isinstance(batch, dict) else batch[:, 1:].numel()
        self._tokens += tokens
        # this process's FLOPs of the step, as Throughput wants
        flops = tokens * self._flops_per_token * self._share if self._flops_per_token else None
        self._meter.update(
            time=time.perf_counter() - self._t0, batches=self._batches, samples=self._batches, lengths=self._tokens,
            flops=flops,
        )
        if trainer.global_step % trainer.log_every_n_steps:
            return  # each self.log costs Lightning ~0.5 ms; log only when the logger writes
        # device/items_per_sec is this process's rate; absent until the window holds two points
        metrics = self._meter.compute()
        rate = metrics.get(f"device{self._meter.separator}items_per_sec")
        if rate is not None:
            pl_module.log("tokens_per_sec", rate * self._dp, prog_bar=True, on_step=True, on_epoch=False)
        mfu = metrics.get(f"device{self._meter.separator}mfu")
        if mfu is not None:
            pl_module.log("mfu", mfu, on_step=True, on_epoch=False)
        if hasattr(pl_module, "tokens_seen"):
            pl_module.log("tokens_seen", float(pl_module.tokens_seen), on_step=True, on_epoch=False)
