"""Where things are: the repository, the shared data sets beside it, and the environment of a CLI subprocess."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
SENTIMENT = REPO.parent / "shared" / "data" / "sentiment"
SST2_TRAIN = SENTIMENT / "sst2" / "stsa.binary.train"


def cli_env(tmp_path: Path) -> dict:
    # no SLURM variables (Lightning would switch into SLURM mode), and no WANDB_SERVICE: an in-process W&B run of
    # an earlier test leaves its service's socket there, which a subprocess would try to reach
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "WANDB_SERVICE"}
    env.update(LIT_LLM_CACHE_DIR=str(tmp_path / "cache"), WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    return env
