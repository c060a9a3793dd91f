"""A few optimizer steps of a classifier on SST-2, on the CPU."""

import lightning as L

from lit_llm.data.labelled import ClassificationDataModule
from tests.helpers.paths import SST2_TRAIN


def tiny_fit(clf, callbacks, steps, tmp_path):
    dm = ClassificationDataModule(train=str(SST2_TRAIN), max_length=32, batch_size=8)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, callbacks=callbacks, default_root_dir=tmp_path)
    trainer.fit(clf, dm)
    return trainer
