"""ONNX export of language models and classifiers, checked against onnxruntime on shapes other than the traced one."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lit_llm.export import export
from lit_llm.generate import load_checkpoint
from lit_llm.tasks import LoraSpec, SequenceClassifier
from tests.helpers.checkpoints import write_lm_checkpoint
from tests.helpers.training import tiny_fit


@pytest.mark.parametrize("family", ["debug", "debug-llama"])
def test_language_model_onnx_matches_pytorch(tmp_path, family):
    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt", family)
    out = export(str(ckpt), str(tmp_path / "onnx"), format="onnx")
    meta = json.loads((out / "lit_llm.json").read_text())
    assert meta["task"] == "language_model" and meta["onnxruntime_max_abs_diff"] < 1e-4
    model, _ = load_checkpoint(ckpt)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for b, t in ((1, 5), (4, 64)):  # batch and length vary, up to block_size
        ids = torch.randint(0, 250, (b, t))
        got = session.run(None, {"input_ids": ids.numpy()})[0]
        np.testing.assert_allclose(got, model(ids).detach().numpy(), atol=1e-4, rtol=1e-4)
    assert not list(tmp_path.glob("onnx.tmp*"))  # written under a temporary name, then renamed


@pytest.mark.parametrize("family,lora", [("debug", None), ("debug-bert", LoraSpec(rank=4, targets=["wq", "wv"]))])
def test_classifier_onnx_matches_pytorch(tmp_path, family, lora):
    lm = write_lm_checkpoint(tmp_path / "lm.ckpt", family)
    clf = SequenceClassifier(init_from=str(lm), label_names=["neg", "pos"], lora=lora, optimizer={"learning_rate": 1e-2})
    trainer = tiny_fit(clf, [], 2, tmp_path)
    trainer.save_checkpoint(tmp_path / "clf.ckpt")
    out = export(str(tmp_path / "clf.ckpt"), str(tmp_path / "onnx"), format="onnx")
    meta = json.loads((out / "lit_llm.json").read_text())
    assert meta["task"] == "classification" and meta["label_names"] == ["neg", "pos"]
    assert meta["inputs"] == ["input_ids", "attention_mask"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = torch.randint(5, 250, (5, 20))
    mask = torch.arange(20)[None, :] < torch.tensor([[20], [3], [11], [1], [17]])  # right padding
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    reference = SequenceClassifier.restore(tmp_path / "clf.ckpt")  # unmerged LoRA: the merge is exact
    with torch.no_grad():
        np.testing.assert_allclose(got, reference(ids, mask).numpy(), atol=1e-4, rtol=1e-4)


def test_onnx_export_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export(str(tmp_path / "missing.ckpt"), str(tmp_path / "o"), format="onnx")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")  # a non-empty --out: refused before the checkpoint is read
    with pytest.raises(FileExistsError, match="not empty; pass another --out, or --overwrite true"):
        export(str(tmp_path / "missing.ckpt"), str(tmp_path / "o"), format="onnx")
    with pytest.raises(FileNotFoundError, match="does not exist"):  # --overwrite reaches the ONNX export
        export(str(tmp_path / "missing.ckpt"), str(tmp_path / "o"), format="onnx", overwrite=True)
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="supported: hf, onnx"):
        export(str(tmp_path / "missing.ckpt"), str(tmp_path / "o"), format="tflite")
