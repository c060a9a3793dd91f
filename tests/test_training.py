"""Training behaviour: overfitting one batch, the golden-loss sequence, and exact resume."""

import json
import math
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_llm.data import PretrainDataModule
from lit_llm.model.loss import lm_loss
from lit_llm.tasks import LanguageModel
from lit_llm.tasks.base import cosine_with_warmup

GOLDEN = Path(__file__).parent / "golden" / "debug_losses.json"


class RecordLosses(L.Callback):
    def __init__(self):
        self.losses, self.first_tokens = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())
        self.first_tokens.append(batch[:, :4].tolist())


def _fit(corpus, max_steps, ckpt_path=None, ckpt_dir=None, every_n=5, dropout=0.0, module_kw=None, data_kw=None,
         optimizer=None, **trainer_kw):
    L.seed_everything(1337)
    dm = PretrainDataModule(corpus=str(corpus), block_size=32, batch_size=4, val_fraction=0.1, **(data_kw or {}))
    model = LanguageModel(
        "debug", {"dropout": dropout}, vocab_size=dm.vocab_size, block_size=32,
        optimizer={"warmup_steps": 2, "lr_decay_steps": 20, "learning_rate": 3e-3, **(optimizer or {})},
        **(module_kw or {}),
    )
    callbacks = [rec := RecordLosses()]
    if ckpt_dir:  # the CLI's checkpointing: every few steps and when training stops
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=every_n, save_last=True))
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=bool(ckpt_dir),
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, gradient_clip_val=1.0,
        callbacks=callbacks, **trainer_kw,
    )
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return rec, trainer


def test_cosine_schedule_shape():
    def f(s):
        return cosine_with_warmup(s, warmup_steps=10, decay_steps=110, min_ratio=0.1)

    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)


def test_a_few_steps_on_one_batch_drive_the_loss_down(small_corpus):
    dm = PretrainDataModule(corpus=str(small_corpus), block_size=32, batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    module = LanguageModel("debug", vocab_size=dm.vocab_size, block_size=32)
    module.configure_model()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        x, y = module._inputs_targets(batch)
        loss = lm_loss(module.model(x), y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > math.log(dm.vocab_size) - 0.3
    assert losses[-1] < 0.5 * losses[0]


def test_golden_loss_sequence_of_the_debug_config(small_corpus):
    rec, _ = _fit(small_corpus, max_steps=10)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"debug_first_10_steps": rec.losses}, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())["debug_first_10_steps"]
    assert rec.losses == pytest.approx(expected, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize(("every_n", "dropout", "optimizer"), [(5, 0.0, "adamw"), (5, 0.1, "adamw"), (8, 0.0, "adamw"),
                                                             (5, 0.0, "muon")])
def test_resumed_run_matches_an_uninterrupted_one(small_corpus, tmp_path, every_n, dropout, optimizer):
    # 18,000 train tokens / 32 = 562 blocks = 140 batches of 4 per epoch; limit it to 8 to cross epochs.
    # The first run is "killed" after step 13; its last checkpoint is from step 10 (every_n=5, in the middle
    # of epoch 2) or step 8 (every_n=8, the end of epoch 1). Muon's momentum must resume too.
    kw = dict(limit_train_batches=8, dropout=dropout, every_n=every_n, optimizer={"name": optimizer})
    straight, _ = _fit(small_corpus, max_steps=20, **kw)
    first, _ = _fit(small_corpus, max_steps=13, ckpt_dir=tmp_path, **kw)
    assert first.losses == straight.losses[:13]
    second, trainer = _fit(small_corpus, max_steps=20, ckpt_path=tmp_path / "last.ckpt", **kw)
    resumed_at = 10 if every_n == 5 else 8
    assert trainer.global_step == 20 and len(second.losses) == 20 - resumed_at
    assert second.first_tokens == straight.first_tokens[resumed_at:]  # same data order
    assert second.losses == pytest.approx(straight.losses[resumed_at:], rel=1e-5, abs=1e-6)


def test_a_run_on_streaming_shards_resumes_at_the_next_unseen_batch(small_corpus, tmp_path):
    """data.stream: the train split as litdata chunks (16 blocks each, so an epoch crosses chunks); a run killed
    after step 13 resumes from its step-10 checkpoint, which holds the loader's position, and trains on the same
    batches with the same losses as an uninterrupted run, across the epoch boundary at step 8."""
    import lit_llm.data.stream as stream

    pytest.importorskip("litdata", reason="data.stream needs the data extra: pip install -e '.[data]'")
    chunk_blocks = stream.CHUNK_BLOCKS
    stream.CHUNK_BLOCKS = 16
    try:
        kw = dict(limit_train_batches=8, data_kw={"stream": True, "cache_dir": str(tmp_path / "tokens")})
        straight, _ = _fit(small_corpus, max_steps=20, **kw)
        first, _ = _fit(small_corpus, max_steps=13, ckpt_dir=tmp_path / "ckpt", **kw)
        second, trainer = _fit(small_corpus, max_steps=20, ckpt_path=tmp_path / "ckpt" / "last.ckpt", **kw)
    finally:
        stream.CHUNK_BLOCKS = chunk_blocks
    assert first.losses == straight.losses[:13]
    assert trainer.global_step == 20 and len(second.losses) == 10
    assert second.first_tokens == straight.first_tokens[10:]
    assert second.losses == pytest.approx(straight.losses[10:], rel=1e-5, abs=1e-6)
    epochs = [straight.first_tokens[:8], straight.first_tokens[8:16]]
    assert epochs[0] != epochs[1]  # each epoch is shuffled anew
    (folder,) = (tmp_path / "tokens").glob("*/stream33")
    assert len(json.loads((folder / "index.json").read_text())["chunks"]) > 1


def test_loss_options_change_training_as_configured(small_corpus, monkeypatch):
    plain, _ = _fit(small_corpus, max_steps=4)
    chunked, _ = _fit(small_corpus, max_steps=4, module_kw={"loss_chunk_size": 7})
    assert chunked.losses == pytest.approx(plain.losses, rel=1e-5)  # same loss, computed chunk by chunk
    z, _ = _fit(small_corpus, max_steps=1, module_kw={"z_loss": 1.0})
    assert z.losses[0] > plain.losses[0] + 10  # (log Z)^2 ~ 17 at init is added to the same CE
    import lit_llm.tasks.language_model as lm  # label smoothing barely moves a near-uniform model's loss,
    seen = []  # so check that the option reaches the loss (whose maths tests/test_loss.py checks)
    monkeypatch.setattr(lm, "lm_loss", lambda *a, **kw: seen.append(kw) or lm_loss(*a, **kw))
    _fit(small_corpus, max_steps=1, module_kw={"label_smoothing": 0.1})
    assert seen[0]["label_smoothing"] == 0.1


def test_muon_steps_the_blocks_matrices_with_torch_muon_and_the_rest_with_adamw():
    import copy

    module = LanguageModel("debug", vocab_size=65, block_size=32, optimizer={"name": "muon", "muon_lr": 0.05,
                           "learning_rate": 3e-3, "warmup_steps": 0, "weight_decay": 0.1})
    module.configure_model()
    reference = copy.deepcopy(module)
    optimizer, _ = module.build_optimizer(decay_steps=10)
    names = {p: n for n, p in module.named_parameters()}
    muon_params = [p for g in optimizer.muon.param_groups for p in g["params"]]
    assert {names[p] for p in muon_params} == {n for n, p in module.named_parameters() if n.startswith("model.layers.")
                                                and p.dim() == 2}
    # reference: the two torch optimizers, built by hand on a copy
    ref = dict(reference.named_parameters())
    hidden = [ref[names[p]] for p in muon_params]
    rest = [p for n, p in reference.named_parameters() if p not in set(hidden)]
    decay = [p for p in rest if p.dim() >= 2]
    torch_muon = torch.optim.Muon(hidden, lr=0.05, momentum=0.95, weight_decay=0.1)
    torch_adamw = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                     {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                                    lr=3e-3, betas=(0.9, 0.99))
    x = torch.randint(0, 65, (4, 33))
    for _ in range(3):
        for m, opts in ((module, [optimizer]), (reference, [torch_muon, torch_adamw])):
            loss = lm_loss(m.model(x[:, :-1]), x[:, 1:])["loss"]
            loss.backward()
            for o in opts:
                o.step()
                o.zero_grad()
    for n, p in module.named_parameters():
        assert torch.equal(p, ref[n]), n
    # the state round-trips, and an AdamW state is refused with the fix named
    state = optimizer.state_dict()
    optimizer.load_state_dict(state)
    assert optimizer.state_dict()["muon"]["state"].keys() == state["muon"]["state"].keys()
    with pytest.raises(ValueError, match="another --model.optimizer.name"):
        optimizer.load_state_dict(torch_adamw.state_dict())


def test_learning_rate_curves_are_named_by_the_parameter_groups_name(small_corpus, tmp_path):
    """The LR monitor's columns take a group's ``name`` (pgN without one); under Muon + AdamW the two copies of a
    task group are told apart by their optimizer (Lightning refuses two groups of one optimizer with one name)."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    from lit_llm.callbacks import LRMonitor
    from lit_llm.callbacks.lr_monitor import name_param_groups

    plain = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.ones(2))]},
                               {"params": [torch.nn.Parameter(torch.ones(2))], "name": "head"}])
    name_param_groups(plain)
    assert [g.get("name") for g in plain.param_groups] == [None, "head"]  # Lightning: lr-AdamW/pg1, lr-AdamW/head

    dm = PretrainDataModule(corpus=str(small_corpus), block_size=32, batch_size=4, val_fraction=0.1)
    model = LanguageModel("debug", vocab_size=dm.vocab_size, block_size=32, optimizer={"name": "muon", "warmup_steps": 0,
                          "lr_decay_steps": 10})
    L.Trainer(max_steps=2, accelerator="cpu", logger=CSVLogger(tmp_path, name="csv"), enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, log_every_n_steps=1,
              callbacks=[LRMonitor(logging_interval="step")]).fit(model, dm)
    with next(tmp_path.glob("csv/version_*/metrics.csv")).open() as f:
        columns = {c for c in next(csv.reader(f)) if c.startswith("lr")}
    assert columns == {"lr-MuonWithAdamW/muon/decay", "lr-MuonWithAdamW/adamw/decay", "lr-MuonWithAdamW/adamw/no_decay"}
