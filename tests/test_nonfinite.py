"""Non-finite values injected into a gradient or the loss: the step is skipped and counted, a bad stretch
stops the run naming the step, and no checkpoint ever holds a non-finite weight."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_llm.callbacks import NonFiniteGuard
from lit_llm.callbacks.nonfinite import NonFiniteError
from lit_llm.checkpoint import newest_checkpoint
from lit_llm.data import PretrainDataModule
from lit_llm.tasks import LanguageModel


class InjectNaN(L.Callback):
    """Poison one gradient (after backward, before the optimizer) at the given steps, and record the weights
    after every step."""

    def __init__(self, steps, where="grad"):
        self.steps, self.where, self.weights = set(steps), where, []

    def on_after_backward(self, trainer, pl_module):
        if self.where == "grad" and trainer.global_step in self.steps:
            p = next(p for p in pl_module.parameters() if p.grad is not None)
            p.grad.view(-1)[0] = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append(torch.cat([p.detach().flatten().clone() for p in pl_module.parameters()]))


class SpikeLossModel(LanguageModel):
    """Its loss (and so its gradients) 1000 times larger at the given steps: finite, but far off."""
    spike_steps: set = set()

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * 1000.0 if self.global_step in self.spike_steps else loss


class NaNLossModel(LanguageModel):
    nan_steps: set = set()

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step in self.nan_steps else loss


def _fit(corpus, tmp_path, steps, inject, guard, module_cls=LanguageModel, **kw):
    L.seed_everything(1337)
    dm = PretrainDataModule(corpus=str(corpus), block_size=32, batch_size=4, val_fraction=0.1)
    model = module_cls("debug", vocab_size=dm.vocab_size, block_size=32, optimizer={"warmup_steps": 1,
                       "lr_decay_steps": 20, "learning_rate": 3e-3})
    # the last 3 step checkpoints are kept, to roll back a bad stretch
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=2, save_last=True, filename="step{step}",
                           auto_insert_metric_name=False, monitor="step", mode="max", save_top_k=3)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, gradient_clip_val=1.0,
                        callbacks=[guard, inject, ckpt], **kw)
    trainer.fit(model, dm)
    return trainer, model


def test_a_nan_gradient_skips_that_step_only(small_corpus, tmp_path):
    inject, guard = InjectNaN({3}), NonFiniteGuard(max_consecutive=2)
    trainer, model = _fit(small_corpus, tmp_path, 8, inject, guard)
    w = inject.weights  # w[i]: the weights after step i (0-based)
    assert torch.equal(w[3], w[2])  # step 3 changed nothing
    assert all(not torch.equal(w[i], w[i - 1]) for i in range(1, 8) if i != 3)  # the others trained
    assert guard.skipped == 1 and trainer.global_step == 8
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert trainer.callback_metrics["nonfinite_skipped_steps"] == 1


def test_a_nan_loss_is_skipped_too(small_corpus, tmp_path):
    NaNLossModel.nan_steps = {2, 5}
    inject, guard = InjectNaN(set()), NonFiniteGuard(max_consecutive=1)
    _, model = _fit(small_corpus, tmp_path, 7, inject, guard, module_cls=NaNLossModel)
    assert guard.skipped == 2 and torch.equal(inject.weights[2], inject.weights[1])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_bad_stretch_stops_the_run_and_the_checkpoints_stay_finite(small_corpus, tmp_path):
    inject, guard = InjectNaN({5, 6, 7, 8}), NonFiniteGuard(max_consecutive=2)
    with pytest.raises(NonFiniteError, match=r"Non-finite gradient norm \(nan\) at step 7 .*--ckpt_path newest"):
        _fit(small_corpus, tmp_path, 12, inject, guard)
    saved = sorted(p.name for p in (tmp_path / "ckpts").iterdir())
    assert saved == ["last.ckpt", "step2.ckpt", "step4.ckpt", "step6.ckpt"]  # the last 3 kept, and last
    for name in saved:
        state = torch.load(tmp_path / "ckpts" / name, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert newest_checkpoint(tmp_path / "ckpts").name in ("step6.ckpt", "last.ckpt")


def test_a_loss_spike_is_skipped_like_a_non_finite_step(small_corpus, tmp_path):
    SpikeLossModel.spike_steps = {12}
    inject, guard = InjectNaN(set()), NonFiniteGuard()
    _, model = _fit(small_corpus, tmp_path, 14, inject, guard, module_cls=SpikeLossModel)
    assert guard.skipped == 1 and torch.equal(inject.weights[12], inject.weights[11])
    assert not torch.equal(inject.weights[13], inject.weights[12])  # the next step trains again


def test_non_finite_weights_are_never_written(small_corpus, tmp_path):
    inject, guard = InjectNaN(set()), NonFiniteGuard()
    trainer, model = _fit(small_corpus, tmp_path, 2, inject, guard)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = math.inf
    with pytest.raises(NonFiniteError, match="is not finite at step 2; not writing"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()


@pytest.mark.slow
def test_under_pipeline_parallelism_every_stage_skips_the_same_step(tmp_path, small_corpus):
    """A NaN in one stage's gradient: both stages skip that step (their norms are summed over the stages)."""
    import os
    import subprocess
    import sys

    from tests.helpers.paths import REPO, cli_env

    env = dict(cli_env(tmp_path), PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "lit_llm", "fit", "--config", "configs/debug.yaml", "--config",
           "configs/model/debug-llama.yaml", "--config", "configs/strategy/pp.yaml", "--trainer.devices", "2",
           "--data.corpus", str(small_corpus), "--trainer.max_steps", "6", "--trainer.logger", "false",
           "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "1",
           "--trainer.default_root_dir", str(tmp_path / "run"),
           "--trainer.callbacks+=tests.helpers.nan_injection.PoisonOneRank", "--trainer.callbacks.rank=1",
           "--trainer.callbacks.step=3"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    for rank in (0, 1):
        assert f"rank {rank} skipped=1" in out, out[-3000:]
        assert f"rank {rank} step 3 unchanged=True" in out, out[-3000:]


@pytest.mark.slow
def test_exploded_weights_stop_the_run_unsaved_and_the_errors_advice_works(tmp_path, small_corpus, capsys, caplog):
    """A resume at learning rate 1e38 explodes the weights in one update (the gradients are finite): the run stops
    before any checkpoint holds them. Following the error's advice (--ckpt_path newest, a lower learning rate)
    then ends with the weights of an uninterrupted run."""
    from tests.helpers.cli import call

    def fit(out, *extra):
        return call(["fit", "--config", "configs/debug.yaml", "--data.corpus", str(small_corpus), "--trainer.logger",
                     "false", "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(out),
                     "--trainer.limit_val_batches", "1", "--model.optimizer.warmup_steps", "1", "--model.optimizer.lr_decay_steps", "8",
                     "--checkpoint.every_n_train_steps", "2", *extra], capsys)

    out = tmp_path / "run"
    assert fit(out, "--trainer.max_steps", "4")[0] == 0
    with pytest.raises(NonFiniteError, match=r"The weights' norm went from .* at step 5 .*--ckpt_path newest.*lower"
                                             r" --model.optimizer.learning_rate"):
        fit(out, "--trainer.max_steps", "8", "--ckpt_path", "newest", "--model.optimizer.learning_rate", "1e38")
    for path in (out / "checkpoints").iterdir():  # nothing after step 4, nothing exploded
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["global_step"] <= 4, path
        assert max(v.abs().max().item() for v in ckpt["state_dict"].values() if v.is_floating_point()) < 100
    code, _, err = fit(out, "--trainer.max_steps", "8", "--ckpt_path", "newest")  # the advice
    assert code == 0, err
    assert fit(tmp_path / "straight", "--trainer.max_steps", "8")[0] == 0
    resumed = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == straight["global_step"] == 8
    assert all(torch.equal(resumed["state_dict"][k], v) for k, v in straight["state_dict"].items())
