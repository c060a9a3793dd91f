"""Draw a run's training curves at the end of ``fit``, from its CSV log (``python -m lit_llm plot``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger


class PlotCurves(L.Callback):
    """At the end of ``fit``, draw the loss, validation perplexity, learning rate and tokens/s of this run as
    PNG files in ``<default_root_dir>/plots`` (``lit_llm.curves``), when the run logs to CSV (the
    default loggers do). A drawing that fails warns; it never fails the run.

    Args:
        enabled: draw the curves (false: do not).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        csv_loggers = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]
        if not self.enabled or not csv_loggers or not trainer.is_global_zero:
            return
        from lit_llm.curves import plot

        for lg in csv_loggers:
            lg.save()  # the rows not yet flushed
        root = Path(trainer.default_root_dir)
        try:
            plot([str(root)], out=str(root / "plots"))
        except Exception as e:  # noqa: BLE001 - pictures are a convenience: the run itself succeeded
            warnings.warn(f"Could not draw the training curves of {root}: {e}", stacklevel=1)
