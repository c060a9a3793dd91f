"""lit_llm.checkpoint: the one reader and writer of the checkpoint format, and its errors."""

import subprocess
import sys

import pytest
import torch

from lit_llm import checkpoint as ckpt_format
from lit_llm.checkpoint import CheckpointError, CheckpointInfo
from lit_llm.generate import load_checkpoint
from lit_llm.model import ModelConfig, build_model
from lit_llm.tasks import SequenceClassifier
from tests.helpers.checkpoints import write_lm_checkpoint
from tests.helpers.paths import REPO


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return write_lm_checkpoint(tmp_path_factory.mktemp("ck") / "lm.ckpt")


@pytest.fixture(scope="module")
def classifier(lm, tmp_path_factory):
    clf = SequenceClassifier(init_from=str(lm), label_names=["neg", "pos"])
    path = tmp_path_factory.mktemp("clf") / "clf.ckpt"
    ckpt_format.save(path, {f"{k}": v for k, v in clf.state_dict().items()}, clf.checkpoint_info())
    return path


def test_importing_the_format_does_not_import_lightning():
    code = "import sys, lit_llm.checkpoint; print('lightning' in sys.modules, 'torchmetrics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_save_then_load_round_trips_weights_and_info(tmp_path):
    cfg = ModelConfig.from_name("debug", vocab_size=20, block_size=8)
    model = build_model(cfg)
    info = CheckpointInfo(task="language_model", model_config=cfg.to_dict(), tokenizer='{"fake": 1}', tokens_seen=7,
                          rng=ckpt_format.capture_rng())
    path = ckpt_format.save(tmp_path / "m.ckpt", {f"model.{k}": v for k, v in model.state_dict().items()}, info)
    assert [p.name for p in tmp_path.iterdir()] == ["m.ckpt"]  # no temporary file left behind
    got, ckpt = ckpt_format.load(path, expect="language_model")
    assert got.config == cfg and got.tokens_seen == 7 and torch.equal(got.rng["cpu"], info.rng["cpu"])
    state = ckpt_format.network_state(ckpt, got)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_checkpoints_written_before_the_format_had_an_owner_still_read(lm):
    # write_lm_checkpoint writes the old layout: no task, no rng
    info = ckpt_format.read_info(lm)
    assert info.task == "language_model" and info.rng is None
    legacy = CheckpointInfo.from_dict({"model_config": {}, "tokenizer": "t", "torch_rng_state": torch.get_rng_state()})
    assert legacy.rng is not None and legacy.task == "language_model"


def test_missing_truncated_and_foreign_files_get_one_clear_error(lm, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass the .ckpt file that `lit_llm fit` wrote"):
        ckpt_format.read_info(tmp_path / "nope.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(lm.read_bytes()[: lm.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt is truncated or corrupted .*use an earlier checkpoint"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        ckpt_format.read_info(garbage)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="is not a lit_llm checkpoint .*lit_llm import-hf"):
        load_checkpoint(foreign)
    folder = tmp_path / "sharded.ckpt"
    folder.mkdir()
    (folder / ".metadata").write_bytes(b"")
    with pytest.raises(CheckpointError, match="sharded checkpoint folder; merge it .* lit_llm consolidate"):
        load_checkpoint(folder)


def test_a_classifier_where_a_language_model_is_needed_says_what_to_pass(classifier, tmp_path):
    with pytest.raises(CheckpointError, match="classification checkpoint, but generation needs a language model"
                                              ".*it was fine-tuned from"):
        load_checkpoint(classifier)
    from lit_llm.export import export

    with pytest.raises(CheckpointError, match="but export --format hf needs a language model"):
        export(str(classifier), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()
    # and the other way round
    restored = SequenceClassifier.restore(classifier)
    assert restored.hparams.label_names == ["neg", "pos"]


def test_a_language_model_is_refused_where_a_classifier_is_needed(lm):
    with pytest.raises(CheckpointError, match="language model checkpoint, but restoring a classifier needs a classification"):
        SequenceClassifier.restore(lm)


def test_sharded_metadata_is_loaded_weights_only(lm, tmp_path):
    """consolidate reads meta.pt of a folder that may come from someone else: no pickled code may run."""
    folder = _sharded_folder(lm, tmp_path / "last.ckpt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"lit_llm": {"model_config": {}, "tokenizer": "t"}, "evil": Evil()}, folder / "meta.pt")
    with pytest.raises(CheckpointError, match="weights-only load refuses"):
        ckpt_format.load_sharded_meta(folder)


def _sharded_folder(lm, folder):
    """A sharded checkpoint folder as torch.distributed.checkpoint writes it (.metadata + a .distcp shard), with
    Lightning's meta.pt beside it, made from the single-file checkpoint ``lm``."""
    from torch.distributed.checkpoint.format_utils import torch_save_to_dcp

    whole = torch.load(lm, weights_only=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tensors = folder.parent / "tensors.pt"
    torch.save({"state_dict": whole.pop("state_dict")}, tensors)
    torch_save_to_dcp(tensors, folder)
    torch.save(whole, folder / "meta.pt")
    return folder


class _RunsShell:
    """A pickle that runs a shell command when it is loaded."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def _plant_hostile_index(folder, marker):
    import pickle

    (folder / ".metadata").write_bytes(pickle.dumps(_RunsShell(f"touch {marker}")))


def test_a_genuine_sharded_folder_passes_the_allow_list_and_consolidates(lm, tmp_path):
    from lit_llm.parallel.consolidate import consolidate

    folder = _sharded_folder(lm, tmp_path / "last.ckpt")
    ckpt_format.read_sharded_index(folder)
    merged = consolidate(str(folder), str(tmp_path / "merged.ckpt"))
    a, b = torch.load(lm, weights_only=True)["state_dict"], torch.load(merged, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_hostile_sharded_index_is_refused_on_every_path_and_runs_nothing(lm, tmp_path, capsys):
    """A .metadata pickle that calls os.system: consolidate (function and command), fit --ckpt_path FOLDER,
    --ckpt_path last and newest all refuse it with one line, and the command never runs."""
    from lit_llm.parallel.consolidate import consolidate
    from tests.helpers.cli import call, error_line

    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    folder = _sharded_folder(lm, run / "checkpoints" / "last.ckpt")
    _plant_hostile_index(folder, marker)
    with pytest.raises(CheckpointError, match=r"\.metadata is not a checkpoint index that torch wrote: it names"
                                              r" (posix|os)\.system.*refused without running it"):
        consolidate(str(folder), str(tmp_path / "merged.ckpt"))
    code, _, err = call(["consolidate", "--checkpoint", str(folder), "--out", str(tmp_path / "m.ckpt")], capsys)
    assert "not a checkpoint index that torch wrote" in error_line(code, err)
    fit = ["fit", "--config", "configs/debug.yaml", "--trainer.logger", "false", "--trainer.default_root_dir", str(run)]
    for ckpt_path in (str(folder), "last"):
        code, _, err = call(fit + ["--ckpt_path", ckpt_path], capsys)
        assert "not a checkpoint index that torch wrote" in error_line(code, err)
    assert ckpt_format.newest_checkpoint(run, run / "checkpoints") is None  # not a candidate
    assert not marker.exists()
    assert not (tmp_path / "merged.ckpt").exists() and not (tmp_path / "m.ckpt").exists()


def test_consolidate_calls_a_truncated_file_truncated(lm, tmp_path):
    from lit_llm.parallel.consolidate import consolidate

    truncated = tmp_path / "t.ckpt"
    truncated.write_bytes(lm.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        consolidate(str(truncated), str(tmp_path / "out.ckpt"))


def test_a_checkpoint_that_loads_but_is_wrong_inside_is_one_clear_error(lm, classifier, tmp_path, capsys):
    """Missing weights, a weight of the wrong shape, an extra weight, broken tokenizer JSON or a model config
    that does not build: generate, export and the classifier's restore say which, instead of a traceback."""
    from tests.helpers.cli import call, error_line
    from tests.helpers.server_process import free_port

    whole = torch.load(lm, weights_only=True)

    def variant(name, change):
        ckpt = {k: (dict(v) if isinstance(v, dict) else v) for k, v in whole.items()}
        change(ckpt)
        torch.save(ckpt, tmp_path / name)
        return tmp_path / name

    first = next(iter(whole["state_dict"]))
    cases = {
        variant("missing.ckpt", lambda c: c["state_dict"].pop(first)): "1 weights missing",
        variant("shape.ckpt", lambda c: c["state_dict"].update({first: torch.zeros(3, 3)})): "of the wrong shape",
        variant("extra.ckpt", lambda c: c["state_dict"].update({"model.stray": torch.zeros(1)})): "1 unexpected",
        variant("tokenizer.ckpt", lambda c: c["lit_llm"].update(tokenizer="{not json")): "tokenizer that does not load",
        variant("config.ckpt", lambda c: c["lit_llm"].update(model_config={"n_layer": "many", "nope": 1})):
            "model config that does not build",
    }
    for path, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path)
        for command in (["generate", "--checkpoint", str(path), "--prompt", "a", "--max_new_tokens", "2"],
                        ["export", "--checkpoint", str(path), "--out", str(tmp_path / "hf")],
                        ["serve", "--checkpoint", str(path), "--port", str(free_port())]):
            code, out, err = call(command, capsys)
            assert message in error_line(code, err), (command, err)
            assert "serving" not in out  # refused before the server says it is serving
    broken = torch.load(classifier, weights_only=True)
    broken["state_dict"].pop(next(iter(broken["state_dict"])))
    torch.save(broken, tmp_path / "clf.ckpt")
    with pytest.raises(CheckpointError, match="does not match its own model config"):
        SequenceClassifier.restore(tmp_path / "clf.ckpt")


def test_classifier_checkpoints_from_before_lora_spec_moved_still_load(monkeypatch):
    """LoraSpec moved from lit_llm.checkpoint to lit_llm.model.lora; hyperparameters pickled under the old name
    still load weights-only."""
    import io

    from lit_llm.model.lora import LoraSpec

    buf = io.BytesIO()
    monkeypatch.setattr(LoraSpec, "__module__", "lit_llm.checkpoint")
    torch.save({"hyper_parameters": {"lora": LoraSpec(rank=4)}}, buf)
    monkeypatch.undo()
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["hyper_parameters"]["lora"] == LoraSpec(rank=4)


def test_a_hostile_pickled_item_in_a_shard_is_refused_before_torch_loads_it(lm, tmp_path, capsys):
    """torch loads a shard's non-tensor items with weights_only=False: a genuine index that points at a pickle
    calling os.system must be refused before consolidate or a resume hands the folder to torch."""
    import torch.distributed.checkpoint as dcp

    from lit_llm.parallel.consolidate import consolidate
    from tests.helpers.cli import call, error_line

    marker = tmp_path / "pwned"
    folder = tmp_path / "run" / "checkpoints" / "last.ckpt"
    whole = torch.load(lm, weights_only=True)
    state = {"state_dict": whole.pop("state_dict"), "optimizer": {"param_groups": [{"lr": 1e-3, "betas": (0.9, 0.99)}]}}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(folder), no_dist=True)  # a genuine folder with byte items
    torch.save(whole, folder / "meta.pt")
    ckpt_format.read_sharded_index(folder)  # genuine items (an optimizer's param_groups) load weights-only
    state["optimizer"]["param_groups"] = [_RunsShell(f"touch {marker}")]
    dcp.save(state, storage_writer=dcp.FileSystemWriter(folder, overwrite=True), no_dist=True)
    with pytest.raises(CheckpointError, match=r"holds an item that a weights-only load refuses .*refused without"):
        consolidate(str(folder), str(tmp_path / "merged.ckpt"))
    code, _, err = call(["fit", "--config", "configs/debug.yaml", "--trainer.logger", "false",
                         "--trainer.default_root_dir", str(tmp_path / "run"), "--ckpt_path", str(folder)], capsys)
    assert "holds an item that a weights-only load refuses" in error_line(code, err)
    assert ckpt_format.newest_checkpoint(tmp_path / "run" / "checkpoints") is None
    assert not marker.exists() and not (tmp_path / "merged.ckpt").exists()


def test_the_index_unpickler_refuses_to_set_attributes_on_a_class(tmp_path):
    """An allowed class is no licence to change it: a BUILD on the class itself is refused."""
    from torch.distributed.checkpoint.metadata import Metadata

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / ".metadata").write_bytes(_build_on_class_pickle())
    with pytest.raises(CheckpointError, match="sets attributes on 'Metadata'"):
        ckpt_format.read_sharded_index(folder)
    assert not hasattr(Metadata, "tampered")


def _build_on_class_pickle() -> bytes:
    """GLOBAL torch.distributed.checkpoint.metadata Metadata, then BUILD with (None, {"tampered": True})."""
    import pickle

    return (b"\x80\x04" + pickle.GLOBAL + b"torch.distributed.checkpoint.metadata\nMetadata\n" + pickle.NONE
            + pickle.EMPTY_DICT + pickle.SHORT_BINUNICODE + bytes([8]) + b"tampered" + pickle.NEWTRUE
            + pickle.SETITEM + pickle.TUPLE2 + pickle.BUILD + pickle.STOP)
