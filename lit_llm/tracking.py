"""What a tracked run records besides its config: the code version, the hardware, the data's hashes; and the
trackers' own start-up noise, silenced where it says nothing about the run.

``run_metadata`` is logged with the resolved config as the ``run`` hyperparameters (W&B config, CSV
hparams.yaml), so every run says which commit, which machine and which prepared data produced it.

``WandbLogger`` is the default W&B logger of ``fit``: Lightning's, without the warning W&B prints for an argument
Lightning always passes. Importing this module (the CLI does) drops one line from Lightning's log: its suggestion to
install its own cloud logger, printed by every Trainer whose loggers do not include it.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger

PACKAGE_DIR = Path(__file__).resolve().parent


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger``, quiet at start-up. Lightning hands ``anonymous=None`` to ``wandb.init`` unless
    told otherwise, and W&B since 0.23 warns "The anonymous setting has no effect and will be removed" for any
    value, None included (wandb/wandb#10909, which names Lightning's logger). The argument is left out when it is
    None; ``anonymous=True`` is still passed on (and warned about)."""

    @property
    def experiment(self) -> Any:
        if self._experiment is None and self._wandb_init.get("anonymous", False) is None:
            del self._wandb_init["anonymous"]
        return super().experiment


class _WithoutLitLoggerTip(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger" line (``Trainer.__init__`` logs it when no logger is
    Lightning's LitLogger): lit_llm's runs log to W&B and CSV. Every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("litlogger" in message and message.lstrip().startswith("💡 Tip"))


def drop_litlogger_tip() -> None:
    """Install ``_WithoutLitLoggerTip`` (once) on the logger that Lightning's ``rank_zero_info`` writes to: the one
    ``lightning.pytorch`` sets on import (a filter of a logger applies to the records that logger creates)."""
    import lightning_utilities.core.rank_zero as rank_zero

    for log in {rank_zero.log, logging.getLogger("lightning.pytorch.utilities.rank_zero")}:
        if not any(isinstance(f, _WithoutLitLoggerTip) for f in log.filters):
            log.addFilter(_WithoutLitLoggerTip())


drop_litlogger_tip()


def code_version(path: Path = PACKAGE_DIR) -> dict[str, Any]:
    """Git SHA and dirty flag of the checkout holding ``path`` (None when it is not a git checkout)."""
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"git_sha": sha, "git_dirty": bool(status) if sha else None}


def hardware(trainer: L.Trainer) -> dict[str, Any]:
    info: dict[str, Any] = {
        "accelerator": type(trainer.accelerator).__name__, "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes, "devices_per_node": trainer.num_devices, "precision": str(trainer.precision),
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "lightning": L.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    if os.environ.get("SLURM_JOB_ID"):
        info["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
        info["slurm_nodelist"] = os.environ.get("SLURM_JOB_NODELIST")
        info["slurm_restart_count"] = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    return info


def data_hashes(datamodule: Any) -> dict[str, Any]:
    """The prepared data's identity: the manifest's cache key, tokenizer hash and source fingerprints."""
    token_dir = getattr(datamodule, "_token_dir", None)
    if token_dir is None:
        return {}
    from lit_llm.data.sources import fingerprint_hash
    from lit_llm.data.tokens import read_manifest

    manifest = read_manifest(Path(token_dir)) or {}
    return {
        "cache_key": Path(token_dir).name,  # a hash of sources, cleaning, tokenizer and split settings
        "sources_hash": fingerprint_hash(manifest.get("sources")),  # file names, sizes and mtimes
        "tokenizer_hash": manifest.get("tokenizer_hash"), "num_tokens": manifest.get("num_tokens"),
    }


def run_metadata(trainer: L.Trainer, datamodule: Any = None) -> dict[str, Any]:
    return {"code": code_version(), "hardware": hardware(trainer), "data": data_hashes(datamodule)}
