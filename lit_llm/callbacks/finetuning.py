"""Staged fine-tuning of a ``SequenceClassifier``: head-only warm-up, then the top blocks, then everything.

The stage is a function of the global step alone, so a resumed run is in the same stage as an
uninterrupted one. Freezing uses Lightning's ``BaseFinetuning.freeze`` / ``make_trainable``. Lightning's
``BaseFinetuning`` callback itself adds parameter groups to the optimizer as it unfreezes; here every
parameter is in the optimizer from the start, with its layer-wise learning rate
(``SequenceClassifier.layer_decay``), and a frozen parameter simply has no gradient, so AdamW skips it
(no update, no weight decay) and the LR schedule covers every group.

Under DDP, unfreezing changes which parameters get gradients: use ``strategy: ddp_find_unused_parameters_true``.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info


class StagedFinetuning(L.Callback):
    """Train the head alone for ``head_only_steps``, then also the top ``top_blocks`` blocks (and the final
    norm) for ``top_blocks_steps``, then the whole backbone.

    A stage length below 1 is a fraction of the run (``trainer.estimated_stepping_batches``), so that one
    config stages a short run (CR's 384 steps) and a long one alike; 1 or more is a number of steps.

    Args:
        head_only_steps: optimizer steps with the backbone frozen, or a fraction of the run.
        top_blocks: blocks unfrozen in the second stage (0 skips it).
        top_blocks_steps: length of the second stage in optimizer steps, or a fraction of the run.
    """

    def __init__(self, head_only_steps: float = 100, top_blocks: int = 2, top_blocks_steps: float = 100) -> None:
        if min(head_only_steps, top_blocks, top_blocks_steps) < 0:
            raise ValueError("head_only_steps, top_blocks and top_blocks_steps must be >= 0")
        for name, v in (("head_only_steps", head_only_steps), ("top_blocks_steps", top_blocks_steps)):
            if v >= 1 and v != int(v):
                raise ValueError(f"{name} is a number of steps (>= 1, whole) or a fraction of the run (< 1), got {v}")
        self.lengths = (head_only_steps, top_blocks_steps)
        self.top_blocks = top_blocks
        self.head_only_steps, self.top_blocks_steps = (int(v) if v >= 1 else 0 for v in self.lengths)
        self._current: Any = "unset"

    def resolve(self, total_steps: int) -> None:
        """Turn fractional stage lengths into steps of a run of ``total_steps``."""
        self.head_only_steps, self.top_blocks_steps = (
            int(v) if v >= 1 or v == 0 else max(1, round(v * total_steps)) for v in self.lengths)

    def trainable_blocks(self, step: int) -> Optional[int]:
        """How many top blocks train at ``step``: 0 (head only), k, or None (all of the backbone)."""
        if step < self.head_only_steps:
            return 0
        if self.top_blocks and step < self.head_only_steps + self.top_blocks_steps:
            return self.top_blocks
        return None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "blocks") or not hasattr(pl_module, "backbone"):
            raise ValueError("StagedFinetuning needs a SequenceClassifier (a module with a backbone and blocks)")
        if getattr(pl_module.hparams, "lora", None) is not None:
            raise ValueError("StagedFinetuning and LoRA exclude each other: LoRA already freezes the backbone")
        if self.top_blocks > len(pl_module.blocks):
            raise ValueError(f"top_blocks {self.top_blocks} exceeds the model's {len(pl_module.blocks)} blocks")
        if any(0 < v < 1 for v in self.lengths):
            self.resolve(int(trainer.estimated_stepping_batches))
            rank_zero_info(f"StagedFinetuning: head only for {self.head_only_steps} steps, top blocks for"
                           f" {self.top_blocks_steps}, of {int(trainer.estimated_stepping_batches)}")
        self._current = "unset"

    def apply(self, pl_module: L.LightningModule, step: int) -> None:
        k = self.trainable_blocks(step)
        if k == self._current:
            return
        BaseFinetuning.freeze(pl_module.backbone)
        if k is None:
            BaseFinetuning.make_trainable(pl_module.backbone)
            what = "the whole backbone"
        elif k > 0:
            top = pl_module.blocks[-k:]
            norm = getattr(pl_module.core, "norm", None)  # the decoder's final norm sits above the top block
            BaseFinetuning.make_trainable(top + ([norm] if norm is not None else []))
            what = f"the top {k} blocks"
        else:
            what = "the head only"
        rank_zero_info(f"StagedFinetuning: from step {step}, training {what}")
        self._current = k

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.apply(pl_module, trainer.global_step)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.apply(pl_module, trainer.global_step)
