"""Evaluation reports: after every validation during fit, and after ``validate`` / ``test``, write the
module's metrics as JSON and log a classifier's confusion matrix as an image.

During fit the validation loop runs every ``trainer.val_check_interval`` steps; each run writes
``<default_root_dir>/eval/val_step{N}.json`` and overwrites ``val.json``. ``validate`` and ``test`` write
``val.json`` / ``test.json``. Files are written to a temporary name and renamed, so a report is whole or absent.

A report's ``step`` is the training step of the weights evaluated: during fit, the current step; for ``validate``
and ``test``, the step of the checkpoint loaded (``--ckpt_path``), or null when the weights come from no fit
checkpoint (e.g. a classifier evaluated straight from ``init_from``), where a step would say nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from lit_llm.io import write_text_atomic


class EvaluationReport(L.Callback):
    """Write ``pl_module.last_report`` (set at the end of each evaluation) to JSON, and the confusion matrix,
    where there is one, as a PNG beside it and as an image in the tracker.

    Args:
        dirpath: folder of the reports (default: ``<default_root_dir>/eval``).
        confusion_image: draw and log the confusion matrix of classifiers.
    """

    def __init__(self, dirpath: Optional[str] = None, confusion_image: bool = True) -> None:
        self.dirpath, self.confusion_image = dirpath, confusion_image
        self.written: list[Path] = []
        self._loaded_step: Optional[int] = None  # the global step of the checkpoint this run loaded

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._loaded_step = None  # before any checkpoint is restored (which follows setup)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        step = checkpoint.get("global_step")
        self._loaded_step = int(step) if isinstance(step, int) else None

    def _step(self, trainer: L.Trainer, report: dict) -> Optional[int]:
        """The training step of the weights evaluated. validate / test do not restore the loops, so the module's
        global_step is 0 there: the loaded checkpoint's step instead, or the step of a fit that ran before in this
        process, or None (weights from no fit checkpoint)."""
        if trainer.state.fn == "fit":
            return report.get("step")
        if self._loaded_step is not None:
            return self._loaded_step
        return trainer.global_step or None

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        report = dict(getattr(pl_module, "last_report", None) or {})
        if trainer.sanity_checking or not report or not trainer.is_global_zero:
            return
        out = Path(self.dirpath or Path(trainer.default_root_dir) / "eval")
        out.mkdir(parents=True, exist_ok=True)
        stage = report["stage"]
        ckpt = getattr(trainer, "ckpt_path", None)
        report["checkpoint"] = str(ckpt) if ckpt else None
        report["step"] = self._step(trainer, report)
        names = [f"{stage}_step{report['step']}", stage] if trainer.state.fn == "fit" else [stage]
        for name in names:
            write_text_atomic(out / f"{name}.json", json.dumps(report, indent=2) + "\n")
            self.written.append(out / f"{name}.json")
        if self.confusion_image and "confusion_matrix" in report:
            self._log_confusion(trainer, report, out / f"{names[0]}_confusion.png")

    def _log_confusion(self, trainer: L.Trainer, report: dict, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from torchmetrics.utilities.plot import plot_confusion_matrix

        fig, ax = plot_confusion_matrix(torch.tensor(report["confusion_matrix"]), labels=report["label_names"])
        ax.set_title(confusion_title(report))
        fig.savefig(path, dpi=100, bbox_inches="tight")
        key = f"{report['stage']}_confusion_matrix"
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[str(path)], step=report["step"])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(key, fig, global_step=report["step"])
        plt.close(fig)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module)


def confusion_title(report: dict) -> str:
    """``test confusion matrix, best.ckpt (step 40)``: what was evaluated; no step where the report has none."""
    where = [Path(report["checkpoint"]).name] if report.get("checkpoint") else []
    if report.get("step") is not None:
        where.append(f"(step {report['step']})" if where else f"step {report['step']}")
    return f"{report['stage']} confusion matrix{', ' + ' '.join(where) if where else ''} (rows: true, columns: predicted)"
