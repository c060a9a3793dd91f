"""Resuming after a crash: the newest complete checkpoint is found, a killed save blocks nothing, and a bad
checkpoint is one clear error before any work."""

from pathlib import Path

import pytest
import torch

from lit_llm.callbacks.preemption import TMP_PREFIX, sweep_stale_temps
from lit_llm.checkpoint import KEY, newest_checkpoint
from tests.helpers.cli import call, error_line


def _fake_checkpoint(path: Path, step: int) -> Path:
    torch.save({"global_step": step, "state_dict": {"w": torch.zeros(2)}, KEY: {"model_config": {}, "tokenizer": "t"}},
               path)
    return path


def test_newest_checkpoint_takes_the_highest_complete_step(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    _fake_checkpoint(ckpts / "step10.ckpt", 10)
    _fake_checkpoint(tmp_path / "hpc_ckpt_1.ckpt", 15)  # a pre-emption save, newer than the step checkpoint
    assert newest_checkpoint(tmp_path, ckpts) == tmp_path / "hpc_ckpt_1.ckpt"
    # a save killed half-way through is passed over, whatever its name
    last = _fake_checkpoint(ckpts / "last.ckpt", 20)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    _fake_checkpoint(ckpts / "step20.ckpt", 20)
    torch.save({"global_step": 99}, ckpts / "foreign.ckpt")  # not lit_llm's
    assert newest_checkpoint(tmp_path, ckpts) == ckpts / "step20.ckpt"
    assert newest_checkpoint(tmp_path / "empty") is None


def test_a_killed_preemption_save_leaves_nothing_that_blocks_a_requeue(tmp_path):
    """Lightning resumes a SLURM job from the highest N in any name containing 'hpc_ckpt_'. The temporary
    name of a pre-emption save does not contain it, and the leftovers of older versions are swept."""
    assert "hpc_ckpt_" not in f"{TMP_PREFIX}preemption-2.ckpt"
    _fake_checkpoint(tmp_path / "hpc_ckpt_1.ckpt", 10)
    (tmp_path / ".hpc_ckpt_2.ckpt.partial").write_bytes(b"half")  # what the old callback left when killed
    (tmp_path / f"{TMP_PREFIX}preemption-2.ckpt").write_bytes(b"half")
    (tmp_path / f"{TMP_PREFIX}preemption-3.ckpt").mkdir()  # a sharded save is a folder
    removed = sweep_stale_temps(tmp_path)
    assert len(removed) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hpc_ckpt_1.ckpt"]


@pytest.mark.slow
def test_ckpt_path_newest_resumes_past_a_truncated_last_checkpoint(tmp_path, small_corpus, capsys, caplog):
    out = tmp_path / "run"
    common = ["fit", "--config", "configs/debug.yaml", "--data.corpus", str(small_corpus), "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(out),
              "--trainer.limit_val_batches", "1"]
    code, _, err = call(common + ["--trainer.max_steps", "10", "--ckpt_path", "newest"], capsys)
    assert code == 0, err
    ckpts = out / "checkpoints"
    assert {p.name for p in ckpts.iterdir()} == {"step10.ckpt", "last.ckpt"}
    last = ckpts / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # killed mid-write
    (out / f"{TMP_PREFIX}preemption-1.ckpt").write_bytes(b"")  # and a stale temporary file
    # a truncated checkpoint given by path: one error line naming it, before any work
    code, _, err = call(common + ["--trainer.max_steps", "20", "--ckpt_path", str(last)], capsys)
    assert "last.ckpt is truncated or corrupted" in error_line(code, err)
    # newest: the complete step10.ckpt, passing over the truncated last.ckpt; the stale temp is swept
    code, _, err = call(common + ["--trainer.max_steps", "20", "--ckpt_path", "newest"], capsys)
    assert code == 0, err
    assert f"resuming from the newest complete checkpoint, {ckpts / 'step10.ckpt'}" in caplog.text
    assert "left by an interrupted checkpoint save" in caplog.text
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 20
    assert not list(out.glob(f"{TMP_PREFIX}*"))


def test_a_missing_or_foreign_ckpt_path_is_one_error_line(tmp_path, small_corpus, capsys):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    for path, message in ((tmp_path / "missing.ckpt", "does not exist"), (foreign, "is not a lit_llm checkpoint")):
        code, _, err = call(["fit", "--config", "configs/debug.yaml", "--data.corpus", str(small_corpus),
                             "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
                             "--ckpt_path", str(path)], capsys)
        assert message in error_line(code, err)


KILL_DURING_SAVE = r'''
import os, signal, sys
import torch
from lit_llm.lightning_cli import LitLLMCLI
import lit_llm.checkpoint_io as checkpoint_io

root, corpus = sys.argv[1], sys.argv[2]
cli = LitLLMCLI(args=["--config", "configs/debug.yaml", "--data.corpus", corpus, "--trainer.logger", "false",
                      "--trainer.default_root_dir", root, "--trainer.max_steps", "2", "--model.optimizer.warmup_steps", "1",
                      "--trainer.enable_progress_bar", "false"], run=False)
assert isinstance(cli.trainer.strategy.checkpoint_io, checkpoint_io.AtomicCheckpointIO)
cli.trainer.fit(cli.model, cli.datamodule)
real_save = torch.save

def save_then_die(obj, f, *a, **k):  # half of the bytes reach the disk, then SIGKILL
    real_save(obj, f, *a, **k)
    f.flush()
    f.truncate(f.tell() // 2)
    os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = save_then_die  # what torch_save_atomic calls
cli.trainer.save_checkpoint(os.path.join(root, "checkpoints", "last.ckpt"))
'''


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_whole(tmp_path, small_corpus):
    import subprocess
    import sys

    from lit_llm.checkpoint import read_info
    from tests.helpers.paths import REPO, cli_env

    script = tmp_path / "kill.py"
    script.write_text(KILL_DURING_SAVE)
    root = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(script), str(root), str(small_corpus)], cwd=REPO, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]  # killed inside the write
    last = root / "checkpoints" / "last.ckpt"
    assert read_info(last).task == "language_model"  # the step-2 checkpoint is whole
    assert torch.load(last, weights_only=True)["global_step"] == 2
    leftovers = list((root / "checkpoints").glob(f"{TMP_PREFIX}*"))
    assert len(leftovers) == 1  # the half-written file never had the final name
    assert sweep_stale_temps(root / "checkpoints") == leftovers


def test_a_resume_that_changes_a_hyperparameter_it_cannot_apply_is_refused_naming_it(tmp_path, small_corpus, capsys):
    """LightningCLI used to replace the command line's model arguments with the checkpoint's, silently; now a
    change the task cannot apply (the network's shape) is one error line naming the key and both values."""
    ckpt = tmp_path / "trained.ckpt"
    torch.save({"global_step": 10, "state_dict": {}, KEY: {"model_config": {}, "tokenizer": "t"},
                "hyper_parameters": {"preset": "debug", "model_args": None,
                                     "optimizer": {"name": "adamw", "learning_rate": 3e-3}}}, ckpt)
    code, _, err = call(["fit", "--config", "configs/debug.yaml", "--data.corpus", str(small_corpus),
                         "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
                         "--model.model_args", "{n_layer: 3}", "--model.optimizer.learning_rate", "1e-4",
                         "--ckpt_path", str(ckpt)], capsys)
    line = error_line(code, err)
    assert "was trained with model.model_args=None (this run: {'n_layer': 3}); a resumed run cannot change it" in line
    assert "learning_rate" not in line  # applied on resume, not refused
    # the optimizer's kind is compared field by field too, and refused
    code, _, err = call(["fit", "--config", "configs/debug.yaml", "--data.corpus", str(small_corpus),
                         "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
                         "--model.optimizer.name", "muon", "--ckpt_path", str(ckpt)], capsys)
    line = error_line(code, err)
    assert "was trained with model.optimizer.name='adamw' (this run: 'muon'); a resumed run cannot change it" in line


def _slurm_env(monkeypatch, job):
    for key, value in dict(SLURM_JOB_ID=job, SLURM_NTASKS="1", SLURM_JOB_NAME="lit_llm", SLURM_PROCID="0",
                           SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_NTASKS_PER_NODE="1").items():
        monkeypatch.setenv(key, value)


@pytest.mark.slow
def test_a_slurm_fit_resumes_only_its_own_jobs_or_configs_checkpoints(tmp_path, small_corpus, capsys, caplog,
                                                                       monkeypatch):
    """Without --ckpt_path, a SLURM job continues the checkpoints of its own job or of the same config (the script
    resubmitted), never an earlier, different run in the same folder; a corrupt hpc_ckpt_N.ckpt is passed over."""
    out = tmp_path / "run"

    def fit(job, *extra):
        _slurm_env(monkeypatch, job)
        caplog.clear()
        code, _, err = call(["fit", "--config", "configs/debug.yaml", "--data.corpus", str(small_corpus),
                             "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                             "--trainer.default_root_dir", str(out), "--trainer.limit_val_batches", "1",
                             "--trainer.max_steps", "2", "--model.optimizer.warmup_steps", "1", "--checkpoint.every_n_train_steps", "2",
                             *extra], capsys)
        assert code == 0, err
        return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)

    out.mkdir()
    (out / "hpc_ckpt_5.ckpt").write_bytes(b"torn")  # Lightning's own SLURM resume would fail on it every time
    first = fit("111")
    assert first["lit_llm_run"]["slurm_job"] == "111"
    again = fit("222")  # the same config, resubmitted: continues it (already at max_steps: nothing to do)
    assert "resuming from the newest complete checkpoint" in caplog.text and "(of this run" in caplog.text
    assert again["hyper_parameters"]["optimizer"]["learning_rate"] == 3e-3
    with pytest.warns(UserWarning, match="was saved by another run .* it is not continued. Pass --ckpt_path"):
        other = fit("333", "--model.optimizer.learning_rate", "1e-3")  # another run: starts from step 0
    assert "resuming" not in caplog.text
    assert other["hyper_parameters"]["optimizer"]["learning_rate"] == 1e-3 and other["lit_llm_run"]["slurm_job"] == "333"


def test_the_start_up_sweep_keeps_a_temporary_file_that_a_live_run_is_writing(tmp_path):
    """A second run on the same folder used to delete the first run's checkpoint in flight; now only files of dead
    writers (and of another node's writers after an hour) are swept."""
    import os
    import socket
    import subprocess
    import time

    from lit_llm.checkpoint import temp_path

    host = socket.gethostname()
    alive = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        writing = tmp_path / f"{TMP_PREFIX}{alive.pid}@{host}+last.ckpt"
        killed = tmp_path / f"{TMP_PREFIX}{dead.pid}@{host}+step4.ckpt"
        mine = temp_path(tmp_path / "step2.ckpt")  # this process, at its start: nothing in flight
        far_new = tmp_path / f"{TMP_PREFIX}{alive.pid}@another-node+step6.ckpt"
        far_old = tmp_path / f"{TMP_PREFIX}{alive.pid}@another-node+step8.ckpt"
        for p in (writing, killed, mine, far_new, far_old):
            p.write_bytes(b"half")
        os.utime(far_old, (time.time() - 7200, time.time() - 7200))
        removed = sweep_stale_temps(tmp_path)
        assert sorted(removed) == sorted([killed, mine, far_old])
        assert writing.exists() and far_new.exists()
    finally:
        alive.kill()


def test_a_missing_scontrol_is_a_warning_after_the_save(monkeypatch):
    from lit_llm.callbacks.preemption import requeue

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.warns(UserWarning, match=r"`scontrol requeue 42` failed \(FileNotFoundError.*the checkpoint is saved"):
        assert requeue("42") is False


def test_a_full_disk_at_a_save_is_one_line_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno
    import os

    from lit_llm.checkpoint import torch_save_atomic
    from lit_llm.errors import StorageError

    path = tmp_path / "last.ckpt"
    torch_save_atomic({"w": torch.ones(2)}, path)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match=r"could not write .*last.ckpt: no space left on the device; nothing was"
                                           r" half-written .*--ckpt_path newest"):
        torch_save_atomic({"w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_an_output_folder_that_cannot_be_written_is_refused_before_training(tmp_path, small_corpus, capsys):
    """Found at the first save before: a read-only folder (here /sys, which even root cannot write) or a path
    inside a file is one error line before any data or model is built."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for root, message in (("/sys/lit_llm_run", "is not writable"), (str(blocker / "run"), "is inside a file")):
        code, _, err = call(["fit", "--config", "configs/debug.yaml", "--data.corpus", str(small_corpus),
                             "--trainer.logger", "false", "--trainer.default_root_dir", root], capsys)
        line = error_line(code, err)
        assert f"--trainer.default_root_dir {root}/checkpoints {message}" in line, line
    assert not (tmp_path / "cache").exists()  # refused before the data was prepared
