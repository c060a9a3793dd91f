"""What a tracked run records besides its config: the code version, the hardware, the data's hashes.

``run_metadata`` is logged with the resolved config as the ``run`` hyperparameters (W&B config, CSV
hparams.yaml), so every run says which commit, which machine and which prepared data produced it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch

PACKAGE_DIR = Path(__file__).resolve().parent


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
    from lit_llm.data.tokens import read_manifest

    from lit_llm.data.sources import fingerprint_hash

    manifest = read_manifest(Path(token_dir)) or {}
    return {
        "cache_key": Path(token_dir).name,  # a hash of sources, cleaning, tokenizer and split settings
        "sources_hash": fingerprint_hash(manifest.get("sources")),  # file names, sizes and mtimes
        "tokenizer_hash": manifest.get("tokenizer_hash"), "num_tokens": manifest.get("num_tokens"),
    }


def run_metadata(trainer: L.Trainer, datamodule: Any = None) -> dict[str, Any]:
    return {"code": code_version(), "hardware": hardware(trainer), "data": data_hashes(datamodule)}
