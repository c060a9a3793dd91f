from lightning.pytorch.callbacks import LearningRateMonitor


class LRMonitor(LearningRateMonitor):
    """Lightning's ``LearningRateMonitor`` that stays quiet instead of failing when the run has no logger
    (``--trainer.logger false``), so the CLI can always add it."""

    def on_train_start(self, trainer, *args, **kwargs) -> None:
        self._disabled = not trainer.loggers
        if not self._disabled:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer, *args, **kwargs) -> None:
        if not self._disabled:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer, *args, **kwargs) -> None:
        if not self._disabled:
            super().on_train_epoch_start(trainer, *args, **kwargs)
