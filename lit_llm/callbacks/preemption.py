"""Pre-emption on SLURM: checkpoint at a step boundary on the warning signal, then requeue the job.

SLURM sends ``--signal=USR1@90`` (the job scripts in ``slurm/`` ask for it) some time before the time limit,
and ``scancel --signal=USR1`` sends it on demand. Lightning's own SLURM auto-requeue saves its checkpoint
inside the signal handler, at whatever point the step has reached (between an optimizer update and the
step counter, say), and under DDP the ranks enter that collective save from different places. Here the
handler only records the signal. At the end of the step the ranks agree (one all-reduce of a flag), save
``hpc_ckpt_N.ckpt`` in ``default_root_dir``, written under a temporary name and renamed, and rank 0 calls
``scontrol requeue``. The requeued job runs the same command, and Lightning resumes from the newest
``hpc_ckpt_*.ckpt`` on SLURM. The data position, LR schedule and RNG continue exactly as in an uninterrupted
run, and the CLI gives the W&B run the SLURM job id as its id, so the requeued job continues the same run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_llm.checkpoint import TMP_PREFIX, temp_path

OTHER_HOST_GRACE_S = 3600  # a temporary file another node writes is left alone until it is this old
_WRITER = re.compile(re.escape(TMP_PREFIX) + r"(\d+)@([^+/]+)\+")


def _writer_may_be_alive(path: Path) -> bool:
    """Whether the process that writes the temporary ``path`` (named by ``temp_path``) may still be running: its
    PID is alive on this host, or, written on another host, the file changed within ``OTHER_HOST_GRACE_S``. An
    older lit_llm's name, which says no writer, counts as dead."""
    match = _WRITER.match(path.name)
    if match is None:
        return False
    pid, host = int(match.group(1)), match.group(2)
    if host != socket.gethostname():  # no way to ask another node: only an old file is stale
        try:
            return time.time() - path.stat().st_mtime < OTHER_HOST_GRACE_S
        except OSError:  # renamed into place (or swept) meanwhile
            return True
    if pid == os.getpid():  # this process is starting its run: it is writing nothing yet
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def sweep_stale_temps(*folders: str | Path) -> list[Path]:
    """Delete what a killed save left behind in ``folders``: temporary checkpoint files and folders whose writer
    is dead (a run writing into the same folder keeps its own), and the ``.hpc_ckpt_N.ckpt.partial`` names of
    earlier versions (which block Lightning's SLURM resume). Run once before the run starts."""
    removed = []
    for folder in {Path(f) for f in folders if f}:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            stale = p.name.startswith(TMP_PREFIX) and not _writer_may_be_alive(p)
            if stale or re.fullmatch(r"\.hpc_ckpt_\d+\.ckpt\.partial", p.name):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def slurm_job_id() -> str | None:
    """The id that ``scontrol requeue`` takes: ``ARRAYJOB_TASK`` for array jobs, else the job id."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue(job: Optional[str]) -> bool:
    """``scontrol requeue JOB``; a failure (no job id, scontrol missing or refusing) is a warning, never an error:
    the checkpoint is saved already, and resubmitting the job resumes from it."""
    try:
        result = subprocess.call(["scontrol", "requeue", job]) if job else "no SLURM job id"
    except OSError as e:  # scontrol is not on this node's PATH
        result = f"{type(e).__name__}: {e}"
    if result == 0:
        rank_zero_info(f"Pre-emption: requeued SLURM job {job}")
        return True
    rank_zero_warn(f"Pre-emption: `scontrol requeue {job}` failed ({result}); the checkpoint is saved: resubmit the"
                   " job to resume from it")
    return False


class Preemption(L.Callback):
    """Checkpoint and requeue on SLURM's warning signal (active only when Lightning detects SLURM).

    Args:
        signal_name: the warning signal, as in ``#SBATCH --signal=USR1@90``.
        requeue: requeue the job after the checkpoint (``scontrol requeue``); False only saves and stops.
    """

    def __init__(self, signal_name: str = "USR1", requeue: bool = True) -> None:
        self.signum = getattr(signal, f"SIG{signal_name.upper().removeprefix('SIG')}", None)
        if self.signum is None:
            raise ValueError(f"Unknown signal {signal_name!r}; use e.g. USR1 or USR2")
        self.requeue = requeue
        self.active = False
        self._signalled = False
        self._previous: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        env = trainer._accelerator_connector.cluster_environment
        self.active = stage == "fit" and isinstance(env, SLURMEnvironment)
        if self.active:
            env.auto_requeue = False  # Lightning's handler would save from inside the signal handler

    def _handler(self, signum: int, frame: Any) -> None:
        self._signalled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active:
            self._signalled = False
            self._previous = signal.signal(self.signum, self._handler)
            rank_zero_info(f"Pre-emption: on SIG{signal.Signals(self.signum).name.removeprefix('SIG')}, checkpoint at"
                           " the end of the step and requeue")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.active:
            return
        flag = torch.tensor(float(self._signalled), device=pl_module.device)
        if trainer.world_size > 1:  # every rank stops at the same step, whichever got the signal first
            flag = trainer.strategy.reduce(flag, reduce_op="max")
        if flag.item() == 0:
            return
        root = Path(trainer.default_root_dir)
        versions = [int(m.group(1)) for p in root.glob("hpc_ckpt_*.ckpt") if (m := re.match(r"hpc_ckpt_(\d+)\.ckpt$", p.name))]
        final = root / f"hpc_ckpt_{max(versions, default=0) + 1}.ckpt"
        # the temporary name must not contain "hpc_ckpt_": Lightning resumes from the highest number in any name
        # that does, and a killed save would otherwise point every later requeue at a file that does not exist
        # one name on every rank (a sharded save is one folder that all of them write): rank 0's
        tmp = Path(trainer.strategy.broadcast(str(temp_path(root / f"preemption-{final.stem.rsplit('_', 1)[-1]}.ckpt"))))
        trainer.save_checkpoint(tmp)  # collective; a killed save leaves only the temporary name, swept at start
        if trainer.is_global_zero:
            if final.exists():
                shutil.rmtree(final) if final.is_dir() else final.unlink()
            os.replace(tmp, final)
        trainer.strategy.barrier("preemption-checkpoint")
        rank_zero_info(f"Pre-emption: saved {final} at step {trainer.global_step}")
        trainer.should_stop = True
        if self.requeue and trainer.is_global_zero:
            requeue(slurm_job_id())

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.active and self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None
