"""Resuming after a crash: the newest complete checkpoint is found, a killed save blocks nothing, and a bad
checkpoint is one clear error before any work."""

from pathlib import Path

import pytest
import torch

from lit_llm.callbacks.preemption import TMP_PREFIX, sweep_stale_temps
from lit_llm.checkpoint import KEY, newest_checkpoint

from test_cli import call, error_line


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
from lit_llm.config import LitLLMCLI
import lit_llm.atomic_io as atomic_io

root, corpus = sys.argv[1], sys.argv[2]
cli = LitLLMCLI(args=["--config", "configs/debug.yaml", "--data.corpus", corpus, "--trainer.logger", "false",
                      "--trainer.default_root_dir", root, "--trainer.max_steps", "2", "--model.warmup_steps", "1",
                      "--trainer.enable_progress_bar", "false"], run=False)
assert isinstance(cli.trainer.strategy.checkpoint_io, atomic_io.AtomicCheckpointIO)
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

    from conftest import REPO, cli_env
    from lit_llm.checkpoint import read_info

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
