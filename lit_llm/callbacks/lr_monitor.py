"""The learning-rate curves: Lightning's ``LearningRateMonitor``, quiet without a logger, with named groups.

Lightning names each parameter group's curve (``lr-AdamW/NAME``) by the group's ``name`` key, which a task's
``param_groups`` sets (e.g. ``decay``, ``no_decay``, ``head``), and ``pgN`` for a group without one.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import LearningRateMonitor
from torch.optim import Optimizer


def name_param_groups(optimizer: Optimizer) -> None:
    """Under ``MuonWithAdamW`` (``--model.optimizer.name muon``) each task group is split between the two inner
    optimizers: their copies are named ``muon/NAME`` and ``adamw/NAME`` (``NAME``: the group's ``name``, else
    ``pgN`` within that optimizer), which says which optimizer a curve is and keeps the names distinct (Lightning
    refuses two groups of one optimizer with the same name). Other optimizers keep their groups' names."""
    from lit_llm.tasks.optim import MuonWithAdamW

    if not isinstance(optimizer, MuonWithAdamW):
        return
    for prefix, inner in (("muon", optimizer.muon), ("adamw", optimizer.adamw)):
        for i, group in enumerate(inner.param_groups if inner is not None else []):
            name = str(group.get("name") or f"pg{i + 1}")
            if not name.startswith(f"{prefix}/"):  # a resumed optimizer's groups carry their names already
                group["name"] = f"{prefix}/{name}"


class LRMonitor(LearningRateMonitor):
    """Lightning's ``LearningRateMonitor`` that stays quiet instead of failing when the run has no logger
    (``--trainer.logger false``), so the CLI can always add it; parameter groups named as above."""

    def on_train_start(self, trainer, *args: Any, **kwargs: Any) -> None:
        self._disabled = not trainer.loggers
        if not self._disabled:
            for optimizer in trainer.optimizers:
                name_param_groups(optimizer)
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer, *args, **kwargs) -> None:
        if not self._disabled:
            for optimizer in trainer.optimizers:  # again: a resumed module's on_train_start (after this callback's)
                name_param_groups(optimizer)  # may set its groups' settings, names included, back to the task's
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer, *args, **kwargs) -> None:
        if not self._disabled:
            super().on_train_epoch_start(trainer, *args, **kwargs)
