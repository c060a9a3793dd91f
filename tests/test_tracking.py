"""What runs record: throughput and MFU, code version, sample generations that leave training untouched."""

import csv
import subprocess

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lit_llm.callbacks import SampleGenerations, TokenThroughput
from lit_llm.data import PretrainDataModule
from lit_llm.model.costs import estimate
from lit_llm.tasks import LanguageModel
from lit_llm.tracking import code_version
from tests.helpers.paths import REPO


def _fit(corpus, tmp_path, callbacks, dropout=0.1, **trainer_kw):
    L.seed_everything(1337)
    dm = PretrainDataModule(corpus=str(corpus), block_size=32, batch_size=4, val_fraction=0.1)
    model = LanguageModel("debug", {"dropout": dropout}, vocab_size=dm.vocab_size, block_size=32, optimizer={"warmup_steps": 2,
                          "lr_decay_steps": 12})
    trainer = L.Trainer(max_steps=12, accelerator="cpu", enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, val_check_interval=4, limit_val_batches=2, callbacks=callbacks,
                        default_root_dir=tmp_path, **{"logger": False, **trainer_kw})
    trainer.fit(model, dm)
    return model, trainer


def test_mfu_is_tokens_per_second_times_flops_per_token_over_the_peak(small_corpus, tmp_path, monkeypatch):
    peak = 1e12  # CPUs have no entry in Lightning's table of peaks; give one to check the arithmetic
    monkeypatch.setattr("lit_llm.callbacks.throughput.get_available_flops", lambda device, dtype: peak)
    model, _ = _fit(small_corpus, tmp_path, [TokenThroughput(window_size=3)],
                    logger=CSVLogger(tmp_path), log_every_n_steps=2)
    rows = [r for r in csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))) if r.get("mfu")]
    assert rows
    fpt = estimate(model.config, world_size=1)["train_flops_per_token"]
    for r in rows:
        assert float(r["mfu"]) == pytest.approx(float(r["tokens_per_sec"]) * fpt / peak, rel=1e-5)


def test_samples_leave_training_unchanged(small_corpus, tmp_path):
    plain, _ = _fit(small_corpus, tmp_path / "a", [])
    sampling = SampleGenerations(prompts=["ROMEO:", ""], max_new_tokens=8)
    with_samples, _ = _fit(small_corpus, tmp_path / "b", [sampling])
    for (name, a), b in zip(plain.state_dict().items(), with_samples.state_dict().values()):
        assert torch.equal(a, b), name  # dropout and data order did not see the sampler's draws
    assert [r[0] for r in sampling.rows] == [4, 4, 8, 8, 12, 12] and all(len(r[2]) > 0 for r in sampling.rows)
    assert (tmp_path / "b" / "eval" / "samples_step12.json").is_file()


def test_code_version_reads_this_checkout():
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
    assert code_version() == {"git_sha": sha, "git_dirty": dirty}
    assert code_version(REPO.parent) == {"git_sha": None, "git_dirty": None} or (REPO.parent / ".git").exists()
