"""Fine-tuning and evaluation: classifier, splits, staged unfreezing, LoRA, metrics, reports, refusals."""

import json
import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from lit_llm.callbacks import StagedFinetuning
from lit_llm.commands.crossval import summarize
from lit_llm.data.labelled import ClassificationDataModule, kfold_indices, read_labelled, split_indices
from lit_llm.errors import UsageError
from lit_llm.tasks import LoraSpec, SequenceClassifier
from tests.helpers.checkpoints import write_lm_checkpoint
from tests.helpers.cli import run_cli
from tests.helpers.paths import REPO, SENTIMENT, SST2_TRAIN, cli_env
from tests.helpers.training import tiny_fit


@pytest.fixture(scope="module")
def lm_ckpt(tmp_path_factory) -> Path:
    return write_lm_checkpoint(tmp_path_factory.mktemp("lm") / "lm.ckpt")


# ---------------------------------------------------------------------------------------------- metrics
def test_metrics_match_hand_computed_values(lm_ckpt):
    clf = SequenceClassifier(init_from=str(lm_ckpt))
    labels = torch.tensor([0, 0, 1, 1, 1])
    preds = torch.tensor([0, 1, 1, 1, 0])
    clf.val_metrics.update(preds, labels)
    clf.val_confusion.update(preds, labels)
    m = {k: v.item() for k, v in clf.val_metrics.compute().items()}
    # class 1: tp 2, fp 1, fn 1 -> P = R = F1 = 2/3; class 0: tp 1, fp 1, fn 1 -> 1/2; macro 7/12
    assert m["val_acc"] == pytest.approx(3 / 5)
    assert m["val_f1"] == pytest.approx(2 / 3)
    assert m["val_f1_macro"] == pytest.approx(7 / 12)
    assert m["val_precision"] == pytest.approx(7 / 12) and m["val_recall"] == pytest.approx(7 / 12)
    assert clf.val_confusion.compute().tolist() == [[1, 1], [1, 2]]  # rows true, columns predicted


def test_crossval_summary_mean_and_sample_std():
    s = summarize([{"fold": 0, "checkpoint": "a", "test_acc": 0.8}, {"fold": 1, "checkpoint": "b", "test_acc": 0.6}])
    assert s["metrics"]["test_acc"]["mean"] == pytest.approx(0.7)
    assert s["metrics"]["test_acc"]["std"] == pytest.approx(math.sqrt(0.02))  # sample std of (0.8, 0.6)


# ---------------------------------------------------------------------------------------------- data
def test_kfold_splits_are_disjoint_and_cover_the_data():
    folds = kfold_indices(103, 10, seed=3)
    joined = np.concatenate(folds)
    assert len(joined) == 103 and set(joined.tolist()) == set(range(103))
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    tests = []
    for k in range(10):
        s = split_indices(103, "kfold", seed=3, val_fraction=0.1, num_folds=10, fold=k)
        parts = [set(s[n].tolist()) for n in ("train", "val", "test")]
        assert sum(map(len, parts)) == 103 and set().union(*parts) == set(range(103))
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        tests.append(parts[2])
    assert set().union(*tests) == set(range(103)) and sum(map(len, tests)) == 103
    assert split_indices(103, "kfold", seed=3, num_folds=10, fold=4)["test"].tolist() == folds[4].tolist()
    with pytest.raises(ValueError, match="fold must be in 0..9"):
        split_indices(103, "kfold", seed=3, num_folds=10, fold=10)


def test_stratified_folds_keep_the_class_balance_of_imbalanced_cr():
    """CR is 64% positive: stratified folds (the default) hold that share in every fold and every validation
    carve, to one example; plain folds drift by several points."""
    _, labels = read_labelled(str(SENTIMENT / "cr" / "custrev.all"))
    y = np.asarray(labels)
    folds = kfold_indices(len(y), 10, seed=1337, labels=labels)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(y)))
    for f in folds:
        assert abs(y[f].sum() - len(f) * y.mean()) <= 1
    plain = kfold_indices(len(y), 10, seed=1337)
    assert max(abs(y[f].mean() - y.mean()) for f in plain) > 0.02  # what stratification fixes
    for k in range(10):
        s = split_indices(len(y), "kfold", seed=1337, val_fraction=0.1, num_folds=10, fold=k, labels=labels)
        assert s["test"].tolist() == folds[k].tolist()
        assert abs(y[s["val"]].sum() - len(s["val"]) * y[np.concatenate([s["train"], s["val"]])].mean()) <= 1
        assert not set(s["train"].tolist()) & set(s["val"].tolist())
    with pytest.raises(ValueError, match="labels has 3 entries for 4 examples"):
        split_indices(4, "random", seed=0, labels=[0, 1, 0])


def test_sweep_intervals_and_paired_test_match_the_textbook_formulas():
    from lit_llm.commands.sweep import compare, interval, paired

    s = interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) * sd / sqrt(n)
    assert s["mean"] == 3.0 and s["ci95"] == pytest.approx([3 - half, 3 + half])
    a, b = [0.80, 0.82, 0.81, 0.83, 0.79], [0.78, 0.80, 0.80, 0.80, 0.78]  # diffs .02 .02 .01 .03 .01
    c = paired(a, b)
    sd = math.sqrt(sum((d - 0.018) ** 2 for d in (0.02, 0.02, 0.01, 0.03, 0.01)) / 4)
    assert c["mean_diff"] == pytest.approx(0.018) and c["ci95"][0] == pytest.approx(0.018 - 2.7764451 * sd / math.sqrt(5))
    assert c["p_value"] == pytest.approx(0.00859, abs=2e-4)  # t = 4.811 on 4 degrees of freedom
    sweep_a = {"per_seed": [{"seed": i, "folds": [0, 1], "test_acc": x} for i, x in enumerate(a)]}
    sweep_b = {"per_seed": [{"seed": i, "folds": [0, 1], "test_acc": x} for i, x in enumerate(b)]}
    assert compare(sweep_a, sweep_b)["p_value"] == pytest.approx(c["p_value"])
    with pytest.raises(UsageError, match="share 1 seed"):
        compare(sweep_a, {"per_seed": sweep_b["per_seed"][:1]})
    with pytest.raises(UsageError, match="ran folds"):
        compare(sweep_a, {"per_seed": [dict(r, folds=[0]) for r in sweep_b["per_seed"]]})


def test_reading_labelled_formats_and_bad_labels(tmp_path):
    texts, labels = read_labelled(str(SENTIMENT / "cr" / "custrev.all"))
    assert len(texts) == 3771 and sum(labels) == 2405  # 4 CR lines hold a label and no text
    (tmp_path / "r.jsonl").write_text('{"review": "great", "stars": "pos"}\n{"review": "awful", "stars": "neg"}\n')
    t, y = read_labelled(str(tmp_path / "r.jsonl"), text_field="review", label_field="stars", label_names=["neg", "pos"])
    assert t == ["great", "awful"] and y == [1, 0]
    (tmp_path / "r.csv").write_text("text,label\nfine,1\nbad,0\n")
    assert read_labelled(str(tmp_path / "r.csv")) == (["fine", "bad"], [1, 0])
    with pytest.raises(ValueError, match="has fields"):
        read_labelled(str(tmp_path / "r.jsonl"))
    (tmp_path / "bad.txt").write_text("2 three classes?\n")
    with pytest.raises(ValueError, match="outside 0..1; set num_classes"):
        read_labelled(str(tmp_path / "bad.txt"))
    (tmp_path / "latin1.txt").write_bytes("1 caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8 at byte 5"):
        read_labelled(str(tmp_path / "latin1.txt"))
    with pytest.raises(FileNotFoundError):
        ClassificationDataModule(train="sentiment/nope.txt")


# ---------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("family", ["debug", "debug-llama", "debug-bert"])
def test_classifier_loads_any_family_and_pools_ignoring_padding(tmp_path, family):
    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt", family)
    clf = SequenceClassifier(init_from=str(ckpt), head_dropout=0.0).eval()
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    for name, p in clf.backbone.state_dict().items():  # the pretrained weights arrive unchanged
        assert torch.equal(p, saved[f"model.{name}"])
    assert clf.pooling == ("cls" if family == "debug-bert" else "last")
    ids = torch.randint(5, 200, (1, 9))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.arange(13)[None] < 9
    torch.testing.assert_close(clf(padded, mask), clf(ids), atol=1e-5, rtol=1e-5)


def test_layerwise_learning_rates(lm_ckpt):
    clf = SequenceClassifier(init_from=str(lm_ckpt), optimizer={"learning_rate": 1e-3}, layer_decay=0.5)
    clf.trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False)  # for the schedule length
    groups = clf.configure_optimizers()["optimizer"].param_groups
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    core = clf.core
    assert lr_of[id(clf.head[1].weight)] == pytest.approx(1e-3)
    assert lr_of[id(core.norm.weight)] == pytest.approx(1e-3)
    assert lr_of[id(core.layers["1"].attention.wq.weight)] == pytest.approx(0.5e-3)  # top block
    assert lr_of[id(core.layers["0"].attention.wq.weight)] == pytest.approx(0.25e-3)
    assert lr_of[id(core.tok_embeddings.weight)] == pytest.approx(0.125e-3)  # n_layer + 1 = 3 below the head
    assert sum(len(g["params"]) for g in groups) == len(list(clf.parameters()))


class _Recorder(L.Callback):
    """Per optimizer step: which parameters changed, and which had a gradient."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        self.grads.append({n for n, p in pl_module.named_parameters() if p.grad is not None})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.changed.append({n for n, p in pl_module.named_parameters() if not torch.equal(p, self.before[n])})

    def on_train_start(self, trainer, pl_module):
        self.changed, self.grads = [], []


@pytest.mark.parametrize("head, top", [(3, 2), (0.43, 0.29)])  # steps, or fractions of the 7-step run
def test_staged_finetuning_freezes_then_unfreezes_at_the_configured_steps(lm_ckpt, tmp_path, head, top):
    torch.manual_seed(0)
    clf = SequenceClassifier(init_from=str(lm_ckpt), optimizer={"learning_rate": 1e-2})
    rec = _Recorder()
    tiny_fit(clf, [StagedFinetuning(head_only_steps=head, top_blocks=1, top_blocks_steps=top), rec], 7, tmp_path)
    names = [n for n, _ in clf.named_parameters()]
    head = {n for n in names if n.startswith("head.")}
    top = head | {n for n in names if n.startswith("backbone.layers.1.") or n.startswith("backbone.norm.")}
    for step in range(3):  # the backbone is frozen: unchanged and without gradients
        assert rec.changed[step] == head and rec.grads[step] == head, step
    for step in (3, 4):  # the top block and the final norm join
        assert rec.changed[step] == top and rec.grads[step] == top, step
    for step in (5, 6):  # everything trains, the embeddings included
        assert rec.changed[step] == set(names) and rec.grads[step] == set(names), step


def test_staged_finetuning_refuses_a_stage_length_that_is_neither_steps_nor_a_fraction():
    with pytest.raises(ValueError, match="head_only_steps is a number of steps"):
        StagedFinetuning(head_only_steps=2.5)


def test_merged_lora_gives_the_same_logits(lm_ckpt, tmp_path):
    torch.manual_seed(0)
    clf = SequenceClassifier(init_from=str(lm_ckpt), lora=LoraSpec(rank=4, alpha=8, targets=["wq", "wv", "w1"]),
                             optimizer={"learning_rate": 1e-2}, head_dropout=0.0)
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    rec = _Recorder()
    tiny_fit(clf, [rec], 3, tmp_path)
    assert all(n in trainable for n in rec.changed[-1]) and any("lora_B" in n for n in rec.changed[-1])
    clf.eval()
    ids = torch.randint(5, 200, (3, 12))
    before = clf(ids)
    clf.merge_lora()
    assert not any("lora_" in n for n, _ in clf.named_parameters())
    torch.testing.assert_close(clf(ids), before, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before, SequenceClassifier(init_from=str(lm_ckpt), head_dropout=0.0).eval()(ids))


def test_a_test_report_names_the_step_of_the_checkpoint_it_evaluated(lm_ckpt, tmp_path):
    """``test`` does not restore the loops, so the module's global_step is 0 there: the report and the confusion
    matrix's title take the loaded checkpoint's step, and leave the step out for weights from no fit checkpoint."""
    from lit_llm.callbacks import EvaluationReport
    from lit_llm.callbacks.evaluation import confusion_title

    path = tmp_path / "clf.ckpt"
    tiny_fit(SequenceClassifier(init_from=str(lm_ckpt)), [], 3, tmp_path).save_checkpoint(path)

    def test(ckpt_path):
        report = EvaluationReport(dirpath=str(tmp_path / "eval"), confusion_image=False)
        dm = ClassificationDataModule(train=str(SST2_TRAIN), test=str(SST2_TRAIN.with_suffix(".test")), max_length=32,
                                      batch_size=8)
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                  limit_test_batches=2, callbacks=[report]).test(SequenceClassifier(init_from=str(lm_ckpt)), dm,
                                                                  ckpt_path=ckpt_path)
        return json.loads((tmp_path / "eval" / "test.json").read_text())

    loaded = test(str(path))
    assert loaded["step"] == 3 and loaded["checkpoint"] == str(path)
    assert confusion_title(loaded).startswith("test confusion matrix, clf.ckpt (step 3) (rows: true")
    fresh = test(None)
    assert fresh["step"] is None and fresh["checkpoint"] is None
    assert confusion_title(fresh) == "test confusion matrix (rows: true, columns: predicted)"


# ---------------------------------------------------------------------------------------------- refusals
def test_mismatched_tokenizers_and_vocabularies_are_refused(lm_ckpt, tmp_path):
    other = write_lm_checkpoint(tmp_path / "other.ckpt", vocab=280)
    # the data module told to use another tokenizer than the model's checkpoint
    clf = SequenceClassifier(init_from=str(lm_ckpt))
    dm = ClassificationDataModule(train=str(SST2_TRAIN), tokenizer_path=str(other))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match="differs from the tokenizer of the model's checkpoint"):
        trainer.fit(clf, dm)
    # a classifier checkpoint loaded into a model built on another pretrained checkpoint
    path = tmp_path / "clf.ckpt"
    tiny_fit(SequenceClassifier(init_from=str(lm_ckpt)), [], 1, tmp_path).save_checkpoint(path)
    with pytest.raises(ValueError, match="tokenizer differs"):
        trainer.validate(SequenceClassifier(init_from=str(other)),
                         ClassificationDataModule(train=str(SST2_TRAIN), max_length=32), ckpt_path=path)
    # a tokenizer larger than the checkpoint's embedding
    ck = torch.load(lm_ckpt, weights_only=True)
    ck["lit_llm"]["tokenizer"] = torch.load(other, weights_only=True)["lit_llm"]["tokenizer"]
    ck["lit_llm"]["model_config"]["vocab_size"] = 100
    torch.save(ck, tmp_path / "small_vocab.ckpt")
    with pytest.raises(ValueError, match="does not match its own model config: 2 weights of the wrong shape"):
        SequenceClassifier(init_from=str(tmp_path / "small_vocab.ckpt"))
    with pytest.raises(ValueError, match="only dropout may be set"):
        SequenceClassifier(init_from=str(lm_ckpt), model_args={"n_layer": 4})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SequenceClassifier(init_from=str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="cls pooling needs the encoder"):
        SequenceClassifier(init_from=str(lm_ckpt), pooling="cls")


# ---------------------------------------------------------------------------------------------- CLI end to end
@pytest.mark.slow
def test_pretrain_dapt_finetune_test_and_crossval_through_the_cli(tmp_path):
    """The whole story at toy size: LM pretraining on SST-2 train text, domain-adaptive continuation,
    a staged fine-tune, validate/test JSON reports, the restored classifier, and 2 folds of CR."""
    pre = {
        "trainer": {"max_steps": 6, "val_check_interval": 3, "check_val_every_n_epoch": None, "limit_val_batches": 2,
                    "default_root_dir": str(tmp_path / "pre"), "logger": False, "enable_progress_bar": False},
        "model": {"preset": "debug", "optimizer": {"warmup_steps": 1}},
        "data": {"corpus": None, "block_size": 32, "batch_size": 4,
                 "sources": [{"path": "sentiment/sst2/stsa.binary.train", "format": "text", "sample_by": "line"}],
                 "cleaning": [{"regex_replace": {"pattern": "^[01] ", "repl": ""}}],
                 "tokenizer": {"kind": "bpe", "vocab_size": 400}},
    }
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump(pre))
    run_cli(["fit", "--config", str(tmp_path / "pre.yaml")], tmp_path, tmp_path)
    lm = tmp_path / "pre" / "checkpoints" / "last.ckpt"
    report = json.loads((tmp_path / "pre" / "eval" / "val.json").read_text())["metrics"]
    assert report["val_bpb"] > 0 and report["val_ppl"] == pytest.approx(math.exp(report["val_loss"]), rel=1e-5)

    # domain-adaptive continuation: the checkpoint's weights and tokenizer, fresh optimizer
    dapt = ["fit", "--config", str(tmp_path / "pre.yaml"), "--model.init_from", str(lm),
            "--trainer.default_root_dir", str(tmp_path / "dapt")]
    bad = subprocess.run([sys.executable, "-m", "lit_llm", *dapt, "--data.tokenizer.vocab_size", "300"], cwd=tmp_path, env=cli_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "set data.tokenizer.path" in bad.stderr  # another tokenizer is refused
    run_cli(dapt + ["--data.tokenizer.path", str(lm)], tmp_path, tmp_path)
    dapt_ckpt = tmp_path / "dapt" / "checkpoints" / "last.ckpt"
    assert torch.load(dapt_ckpt, weights_only=True)["lit_llm"]["tokenizer"] == torch.load(lm, weights_only=True)["lit_llm"]["tokenizer"]

    cls = {
        "trainer": {"max_steps": 8, "val_check_interval": 4, "limit_val_batches": 3, "limit_test_batches": 3,
                    "default_root_dir": str(tmp_path / "cls"), "enable_progress_bar": False,
                    "callbacks": [{"class_path": "lit_llm.callbacks.StagedFinetuning",
                                   "init_args": {"head_only_steps": 2, "top_blocks": 1, "top_blocks_steps": 2}}]},
        "model": {"class_path": "lit_llm.tasks.SequenceClassifier",
                  "init_args": {"init_from": str(dapt_ckpt), "label_names": ["negative", "positive"], "layer_decay": 0.8}},
        "data": {"class_path": "lit_llm.data.labelled.ClassificationDataModule",
                 "init_args": {"train": "sentiment/sst2/stsa.binary.train", "val": "sentiment/sst2/stsa.binary.dev",
                               "test": "sentiment/sst2/stsa.binary.test", "max_length": 32, "batch_size": 8}},
        "checkpoint": {"monitor": "val_acc", "mode": "max", "filename": "best"},
    }
    (tmp_path / "cls.yaml").write_text(yaml.safe_dump(cls))
    proc = run_cli(["fit", "--config", str(tmp_path / "cls.yaml")], tmp_path, tmp_path)
    out = proc.stdout + proc.stderr
    assert "from step 2, training the top 1 blocks" in out and "from step 4, training the whole backbone" in out
    best = tmp_path / "cls" / "checkpoints" / "best.ckpt"
    ev = tmp_path / "cls" / "eval"
    assert {"val_step4.json", "val_step8.json", "val.json", "val_step8_confusion.png"} <= {p.name for p in ev.iterdir()}
    run_cli(["test", "--config", str(tmp_path / "cls.yaml"), "--ckpt_path", str(best)], tmp_path, tmp_path)
    test = json.loads((ev / "test.json").read_text())
    assert test["examples"] == 24 and np.sum(test["confusion_matrix"]) == 24 and test["checkpoint"] == str(best)
    assert set(test["metrics"]) == {"test_acc", "test_f1", "test_f1_macro", "test_precision", "test_recall", "test_loss"}
    assert test["label_names"] == ["negative", "positive"] and (ev / "test_confusion.png").stat().st_size > 1000
    run_cli(["validate", "--config", str(tmp_path / "cls.yaml"), "--ckpt_path", str(best)], tmp_path, tmp_path)
    assert json.loads((ev / "val.json").read_text())["examples"] == 24
    # the W&B run (offline, the default logger) got the confusion matrix as an image
    assert list((tmp_path / "cls" / "wandb").glob("offline-run-*/files/media/images/val_confusion_matrix_*.png"))

    # a classifier checkpoint alone is enough to rebuild the model (serving, export)
    restored = SequenceClassifier.restore(best)
    state = torch.load(best, weights_only=True)["state_dict"]
    assert all(torch.equal(v, state[k]) for k, v in restored.state_dict().items())

    # k-fold cross-validation of CR with domain-adaptive pretraining inside each fold
    cr = dict(cls, trainer=dict(cls["trainer"], callbacks=[], default_root_dir=str(tmp_path / "cr"), logger=False),
              model={"class_path": "lit_llm.tasks.SequenceClassifier", "init_args": {"init_from": str(lm)}},
              data={"class_path": "lit_llm.data.labelled.ClassificationDataModule",
                    "init_args": {"train": "sentiment/cr/custrev.all", "max_length": 32, "batch_size": 8}})
    (tmp_path / "cr.yaml").write_text(yaml.safe_dump(cr))
    run_cli(["crossval", "--config", str(tmp_path / "cr.yaml"), "--num_folds", "10", "--folds", "[0, 1]",
         "--dapt_config", str(tmp_path / "pre.yaml")], tmp_path, tmp_path)
    summary = json.loads((tmp_path / "cr" / "crossval.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [0, 1] and set(summary["metrics"]["test_acc"]) == {"mean", "std", "folds"}
    texts, labels = read_labelled(str(SENTIMENT / "cr" / "custrev.all"))
    fold0 = set(kfold_indices(len(texts), 10, seed=1337, labels=labels)[0].tolist())  # stratified, the default
    training_text = {texts[i] for i in range(len(texts)) if i not in fold0}
    dapt_lines = (tmp_path / "cr" / "fold0" / "dapt_text.txt").read_text().splitlines()
    # the DAPT text of fold 0 is exactly its training folds' sentences: none of the held-out fold's (except
    # sentences that CR repeats across folds)
    assert len(dapt_lines) == len(texts) - len(fold0) and set(dapt_lines) <= training_text


@pytest.mark.slow
def test_sweep_runs_each_seed_reproducibly_and_compares_two_configs_seed_by_seed(lm_ckpt, tmp_path):
    """``sweep --seeds 2`` twice (two learning rates), the second with ``--compare_to`` the first: each seed is
    its own run (seeds give different results), a seed run again gives the same metrics, and the comparison
    is the seed-by-seed difference. A bad --compare_to is one error line before any training."""
    cfg = {
        "trainer": {"max_steps": 6, "limit_val_batches": 2, "limit_test_batches": 3, "enable_progress_bar": False,
                    "logger": False, "enable_model_summary": False},
        "model": {"class_path": "lit_llm.tasks.SequenceClassifier",
                  "init_args": {"init_from": str(lm_ckpt), "optimizer": {"learning_rate": 3e-3}, "model_args": {"dropout": 0.1}}},
        "data": {"class_path": "lit_llm.data.labelled.ClassificationDataModule",
                 "init_args": {"train": "sentiment/sst2/stsa.binary.train", "val": "sentiment/sst2/stsa.binary.dev",
                               "test": "sentiment/sst2/stsa.binary.test", "max_length": 32, "batch_size": 8}},
    }
    (tmp_path / "cls.yaml").write_text(yaml.safe_dump(cfg))
    base = ["sweep", "--config", str(tmp_path / "cls.yaml"), "--seeds", "2"]
    run_cli(base + ["--out", "a"], tmp_path, tmp_path)
    run_cli(base + ["--out", "b", "--model.optimizer.learning_rate", "1e-4", "--compare_to", "a/sweep.json"], tmp_path, tmp_path)
    a, b = (json.loads((tmp_path / x / "sweep.json").read_text()) for x in ("a", "b"))
    assert [r["seed"] for r in a["runs"]] == [0, 1] and a["metrics"]["test_acc"]["n"] == 2
    assert a["runs"][0]["test_loss"] != a["runs"][1]["test_loss"]  # the seed reached the run
    lo, hi = a["metrics"]["test_acc"]["ci95"]
    assert lo <= a["metrics"]["test_acc"]["mean"] <= hi
    c = b["comparison"]
    assert c["seeds"] == [0, 1] and c["diffs"] == pytest.approx(
        [rb["test_acc"] - ra["test_acc"] for ra, rb in zip(a["runs"], b["runs"])])
    run_cli(["sweep", "--config", str(tmp_path / "cls.yaml"), "--seeds", "1", "--first_seed", "1", "--out", "again"],
        tmp_path, tmp_path)
    again = json.loads((tmp_path / "again" / "sweep.json").read_text())["runs"][0]
    assert again["test_loss"] == pytest.approx(a["runs"][1]["test_loss"], abs=1e-6)  # seed 1, run again
    bad = subprocess.run([sys.executable, "-m", "lit_llm", *base, "--compare_to", "missing.json"], cwd=tmp_path,
                         env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --compare_to missing.json")


def test_sweep_and_crossval_print_a_progress_line_before_each_run(tmp_path, monkeypatch, capsys):
    """"seed 2 of 2" before each seed's fit; "fold 1 of 2 (seed 1 of 2)" before each fold's; crossval alone says
    "fold 1 of 2". The runs themselves are stubbed: each fit/test writes the report the loop reads."""
    from lit_llm.commands import crossval, sweep

    order = []

    def fake_run(args: list[str]) -> None:
        root = Path(args[args.index("--trainer.default_root_dir") + 1])
        order.append((args[0], root))
        if args[0] == "test":
            (root / "eval").mkdir(parents=True, exist_ok=True)
            (root / "eval" / "test.json").write_text(json.dumps({"metrics": {"test_acc": 0.5 + 0.01 * len(order)}}))

    monkeypatch.setattr(crossval, "_run", fake_run)
    monkeypatch.setattr(sweep, "_run", fake_run)
    experiment = REPO / "configs" / "experiment"
    args = [a for name in ("classifier", "data/sst2", "init/scratch") for a in ("--config", str(experiment / f"{name}.yaml"))]

    def progress() -> list[str]:
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith(("seed ", "fold "))]

    sweep.sweep(args, seeds=2, first_seed=3, out=str(tmp_path / "s"))
    assert progress() == [f"seed 1 of 2: {tmp_path / 's' / 'seed3'}", f"seed 2 of 2: {tmp_path / 's' / 'seed4'}"]
    assert [a for a, _ in order] == ["fit", "test"] * 2
    sweep.sweep(args, seeds=2, num_folds=3, folds=[0, 2], out=str(tmp_path / "f"))
    assert progress() == [f"fold {i} of 2 (seed {s} of 2): {tmp_path / 'f' / f'seed{s - 1}' / f'fold{k}'}"
                          for s in (1, 2) for i, k in ((1, 0), (2, 2))]
    crossval.crossval(args, num_folds=2, out=str(tmp_path / "c"))
    assert progress() == [f"fold 1 of 2: {tmp_path / 'c' / 'fold0'}", f"fold 2 of 2: {tmp_path / 'c' / 'fold1'}"]


def test_lora_and_pipeline_stages_are_refused_under_sharding_with_the_fix(lm_ckpt):
    from lit_llm.parallel import ParallelDims

    clf = SequenceClassifier(init_from=str(lm_ckpt), lora=LoraSpec(rank=2))
    with pytest.raises(ValueError, match="LoRA adapters are not sharded here: fine-tune with LoRA under configs/strategy/ddp.yaml"):
        clf.check_parallel(ParallelDims(world_size=2, dp_shard=2))
    assert not SequenceClassifier.supports_pipeline  # configure_model refuses pp > 1 for it, naming the YAMLs to use


def test_lora_from_a_config_file_saves_and_restores(lm_ckpt, tmp_path, monkeypatch):
    """LoRA given in a YAML config (as configs/experiment/init/lora.yaml): LightningCLI records it as a dict in
    the hyperparameters, which the checkpoint must still store (this failed at the first save) and restore."""
    from lit_llm.lightning_cli import LitLLMCLI

    monkeypatch.setattr("sys.argv", ["lit_llm"])
    cfg = {"trainer": {"max_steps": 2, "limit_val_batches": 1, "val_check_interval": 2, "logger": False,
                       "enable_progress_bar": False, "default_root_dir": str(tmp_path)},
           "model": {"class_path": "lit_llm.tasks.SequenceClassifier",
                     "init_args": {"init_from": str(lm_ckpt), "lora": {"rank": 4, "alpha": 8, "targets": ["wq", "wv"]}}},
           "data": {"class_path": "lit_llm.data.labelled.ClassificationDataModule",
                    "init_args": {"train": str(SST2_TRAIN), "max_length": 32, "batch_size": 4}}}
    (tmp_path / "lora.yaml").write_text(yaml.safe_dump(cfg))
    LitLLMCLI(args=["fit", "--config", str(tmp_path / "lora.yaml")])
    restored = SequenceClassifier.restore(tmp_path / "checkpoints" / "last.ckpt")
    assert restored.hparams.lora == LoraSpec(rank=4, alpha=8, targets=["wq", "wv"])
    assert any("lora_A" in n for n, _ in restored.named_parameters())
