"""Every YAML in configs/ is parsed and instantiated by the CLI: a config that does not parse fails here, not on a cluster.

Top-level files are complete configs; files in sub-folders are fragments composed onto configs/debug.yaml.
configs/experiment/ holds the stages of the sentiment experiment: each reads the checkpoint an earlier stage
writes, so they are parsed here (and their mechanics run at toy size in tests/test_finetune.py).
"""

import inspect
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from lit_llm.cli import main
from lit_llm.lightning_cli import LitLLMCLI
from tests.helpers.paths import REPO

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"quickstart.yaml", "debug.yaml", "debug-llama.yaml", "debug-bert.yaml"}


def _args(path: Path, tmp_path: Path) -> list[str]:
    base = [] if path.parent.name == "configs" else ["--config", str(REPO / "configs" / "debug.yaml")]
    return [*base, "--config", str(path), "--trainer.default_root_dir", str(tmp_path)]


NEEDS_NETWORK = {"wikipedia.yaml"}  # hub corpora: parsed here, not prepared
EXPERIMENT = REPO / "configs" / "experiment"


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name in NEEDS_NETWORK], ids=lambda p: p.name)
def test_hub_config_parses(path: Path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["lit_llm"])
    with pytest.raises(SystemExit) as exit_:
        LitLLMCLI(args=["fit", *_args(path, tmp_path), "--print_config"], run=True)
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["init_args"]["sources"][0]["hf_name"] == "wikimedia/wikipedia"


GPU_ONLY = {"gpu.yaml"}  # a Trainer on a GPU cannot be built on a CPU machine: parsed and checked here


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name in GPU_ONLY], ids=lambda p: str(p.relative_to(REPO)))
def test_gpu_fragment_parses(path: Path, tmp_path, capsys):
    printed = _printed(_args(path, tmp_path), capsys)
    assert printed["trainer"]["accelerator"] == "gpu" and printed["trainer"]["precision"] == "bf16-mixed"


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name not in NEEDS_NETWORK | GPU_ONLY and EXPERIMENT not in p.parents
                                  and p.parent != EXPERIMENT],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_config_parses_and_instantiates(path: Path, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lit_llm"])
    args = _args(path, tmp_path)
    if "gpt2-124m" in path.name:
        args += ["--data.block_size", "1024"]
    cli = LitLLMCLI(args=args, run=False)
    assert cli.model.config.vocab_size == cli.datamodule.vocab_size  # linked from the data
    assert cli.model.config.block_size == cli.datamodule.block_size
    assert cli.trainer.max_steps > 0


def _printed(args: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *args, "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("data", ["data/sst2.yaml", "data/cr.yaml"])
@pytest.mark.parametrize("init", ["init/scratch.yaml", "init/pretrained.yaml", "init/dapt_sst2.yaml", "init/lora.yaml"])
def test_experiment_classifier_configs_compose(data, init, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["lit_llm"])
    cfg = _printed([a for f in ("classifier.yaml", data, init) for a in ("--config", str(EXPERIMENT / f))], capsys)
    model, dm = cfg["model"]["init_args"], cfg["data"]["init_args"]
    assert cfg["model"]["class_path"] == "lit_llm.tasks.SequenceClassifier"
    # the classifier's own defaults, not a LanguageModel's carried over by jsonargparse
    lora = init == "init/lora.yaml"
    assert model["optimizer"]["learning_rate"] == (2e-3 if lora else 5e-4) and model["optimizer"]["warmup_steps"] == 100
    assert model["optimizer"]["betas"] == [0.9, 0.999] and (model["lora"] is not None) == lora
    assert model["label_names"] == ["negative", "positive"] and model["num_classes"] == 2
    assert "num_classes" not in dm and "label_names" not in dm  # link targets: they come from the model
    assert (dm["split"] == "kfold") == (data == "data/cr.yaml") and cfg["checkpoint"]["monitor"] == "val_acc"
    # the CSV log where plot, PlotCurves and sweep look for it (RUN/csv/version_N), not lightning_logs/
    assert cfg["trainer"]["logger"]["init_args"]["name"] == "csv"
    if init == "init/scratch.yaml":  # random weights, the pretraining run's tokenizer
        assert model["init_from"] is None and model["tokenizer"] == "runs/experiment/pretrain/checkpoints/last.ckpt"
    else:
        stage = "dapt_sst2" if "dapt" in init else "pretrain"
        assert model["init_from"] == f"runs/experiment/{stage}/checkpoints/last.ckpt"
    staged = [c["class_path"] for c in cfg["trainer"]["callbacks"] or []]
    assert staged == ([] if init in ("init/scratch.yaml", "init/lora.yaml") else ["lit_llm.callbacks.StagedFinetuning"])


def test_the_hub_gpt2_config_composes_with_the_gpu_fragment(monkeypatch, capsys):
    """configs/experiment/init/hub_gpt2.yaml cannot run here (no Hub, no GPU): it must at least parse with
    the files it is documented with, and point at the import-hf output it documents."""
    monkeypatch.setattr("sys.argv", ["lit_llm"])
    files = ("classifier.yaml", "data/sst2.yaml", "init/hub_gpt2.yaml")
    cfg = _printed([a for f in files for a in ("--config", str(EXPERIMENT / f))]
                   + ["--config", str(REPO / "configs" / "trainer" / "gpu.yaml")], capsys)
    model = cfg["model"]["init_args"]
    assert model["init_from"] == "checkpoints/gpt2.ckpt" and model["optimizer"]["learning_rate"] == 5e-5
    assert cfg["trainer"]["accelerator"] == "gpu" and cfg["data"]["init_args"]["max_length"] == 128
    assert "import-hf --hf_dir gpt2 --out checkpoints/gpt2.ckpt" in (EXPERIMENT / "init/hub_gpt2.yaml").read_text()


@pytest.mark.parametrize("name", ["pretrain.yaml", "dapt_sst2.yaml", "dapt_cr.yaml"])
def test_experiment_lm_configs_parse(name, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["lit_llm"])
    cfg = _printed(["--config", str(EXPERIMENT / name)], capsys)
    assert cfg["model"]["class_path"] == "lit_llm.tasks.LanguageModel"
    sources = cfg["data"]["init_args"]["sources"]
    # no CR text and no SST-2 dev/test text feeds language-model training before evaluation
    assert all("custrev" not in s["path"] and ".dev" not in s["path"] and ".test" not in s["path"] for s in sources or [])


@pytest.mark.parametrize("fragment, loggers", [
    ("wandb_online.yaml", ["lit_llm.tracking.WandbLogger", "lightning.pytorch.loggers.CSVLogger"]),
    ("csv.yaml", ["lightning.pytorch.loggers.CSVLogger"])])
def test_logger_fragments_replace_the_default_loggers(fragment, loggers, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["lit_llm"])
    default = _printed(["--config", str(REPO / "configs" / "debug.yaml")], capsys)["trainer"]["logger"]
    assert [lg["class_path"] for lg in default] == ["lit_llm.tracking.WandbLogger", "lightning.pytorch.loggers.CSVLogger"]
    assert default[0]["init_args"]["offline"] is True
    cfg = _printed(["--config", str(REPO / "configs" / "debug.yaml"), "--config",
                    str(REPO / "configs" / "logger" / fragment)], capsys)
    assert [lg["class_path"] for lg in cfg["trainer"]["logger"]] == loggers
    if "WandbLogger" in loggers[0]:
        assert cfg["trainer"]["logger"][0]["init_args"]["offline"] is False


# ------------------------------------------------------------------ fragments change only what they name


def test_model_args_compose_key_by_key_across_configs_and_overrides(monkeypatch, capsys):
    """The README's form: a later model_args changes only the keys it names (it used to replace the whole dict,
    so the experiment's 4 x 128 shape silently became the preset's full size); null clears it."""
    monkeypatch.setattr("sys.argv", ["lit_llm"])
    pretrain = ["--config", str(EXPERIMENT / "pretrain.yaml")]
    args = _printed(pretrain + ["--model.model_args", "{dropout: 0.2}"], capsys)["model"]["init_args"]["model_args"]
    assert args == {"n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.2}
    args = _printed(pretrain + ["--model.model_args", "{n_layer: 2}", "--model.model_args={n_head: 2}"],
                    capsys)["model"]["init_args"]["model_args"]
    assert args == {"n_layer": 2, "n_head": 2, "n_embd": 128, "dropout": 0.1}
    assert _printed(pretrain + ["--model.model_args", "null"], capsys)["model"]["init_args"]["model_args"] is None


def test_the_optimizer_config_composes_field_by_field(tmp_path, monkeypatch, capsys):
    """model.optimizer is a typed config (OptimizerConfig): a later file or override changes only the fields it
    names, so lowering the quickstart's learning rate keeps its Muon; a task's own defaults fill the rest."""
    monkeypatch.setattr("sys.argv", ["lit_llm"])
    quickstart = ["--config", str(REPO / "configs" / "quickstart.yaml")]
    base = _printed(quickstart, capsys)["model"]["init_args"]["optimizer"]
    assert base["name"] == "muon" and base["muon_lr"] == 0.03 and base["learning_rate"] == 6e-3
    fragment = tmp_path / "warmup.yaml"
    fragment.write_text("model:\n  optimizer:\n    warmup_steps: 20\n")
    for extra in (["--config", str(fragment)], ["--model.optimizer.warmup_steps", "20"],
                  ["--model.optimizer", "{warmup_steps: 20}"]):
        assert _printed(quickstart + extra, capsys)["model"]["init_args"]["optimizer"] == {**base, "warmup_steps": 20}
    # the instruction task's fine-tuning defaults, with only the learning rate changed
    from lit_llm.tasks import InstructionModel, OptimizerConfig

    module_default = inspect.signature(InstructionModel).parameters["optimizer"].default
    printed = _printed(["--model", "lit_llm.tasks.InstructionModel", "--model.init_from", "x.ckpt",
                        "--model.optimizer.learning_rate", "3e-4"], capsys)["model"]["init_args"]["optimizer"]
    assert printed == {**asdict(module_default), "learning_rate": 3e-4, "betas": [0.9, 0.95]}
    assert OptimizerConfig.of({"learning_rate": 3e-4}, module_default).weight_decay == 0.0  # from Python too


@pytest.mark.parametrize(("value", "problem"), [("{learning_rate: -1}", "need learning_rate > 0"),
                                                ("{min_lr: 1.0}", "0 <= min_lr <= learning_rate"),
                                                ("{betas: [0.9, 1.5]}", "need betas in [0, 1)")])
def test_an_impossible_optimizer_setting_is_one_error_line_before_any_work(value, problem, tmp_path, capsys):
    from tests.helpers.cli import call, error_line

    args = ["fit", "--config", "configs/debug.yaml", "--trainer.default_root_dir", str(tmp_path / "run"),
            "--model.optimizer", value]
    assert problem in error_line(*call(args, capsys)[::2])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "strategy").glob("*.yaml")), ids=lambda p: p.name)
def test_a_strategy_fragment_sets_only_the_trainer_and_the_parallel_plan(path):
    doc = yaml.safe_load(path.read_text())
    assert set(doc) <= {"trainer", "model"}, path
    assert set(doc.get("model") or {}) <= {"parallel"}, f"{path.name} sets model keys other than the parallel plan"


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "model").glob("*.yaml")), ids=lambda p: p.name)
def test_a_model_fragment_sets_only_the_model(path):
    assert set(yaml.safe_load(path.read_text())) == {"model"}, path


def _keys(doc: dict, section: str) -> set[str]:
    value = doc.get(section) or {}
    return set(value.get("init_args", value)) if isinstance(value, dict) else set()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*/*.yaml")) + sorted(
    (REPO / "configs" / "experiment").glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_fragment_folder_keeps_to_its_section(path):
    """The rules of configs/README.md: a fragment sets only its own section (and what goes with it)."""
    doc = yaml.safe_load(path.read_text())
    folder = path.parent.relative_to(REPO / "configs").as_posix()
    trainer = set(doc.get("trainer") or {})
    if folder == "experiment":
        return  # whole runs and the classifier recipe
    if folder == "data":
        assert set(doc) == {"data"}, path
    elif folder == "trainer":
        assert set(doc) == {"trainer"} and trainer <= {"accelerator", "devices", "precision"}, path
    elif folder == "logger":
        assert set(doc) == {"trainer"} and trainer == {"logger"}, path
    elif folder == "experiment/data":
        assert set(doc) <= {"data", "trainer"} and trainer <= {"default_root_dir", "max_epochs"}, path
    elif folder == "experiment/init":
        assert set(doc) <= {"model", "trainer", "data"}, path
        assert trainer <= {"callbacks", "default_root_dir", "max_epochs"}, path
        assert "class_path" not in (doc.get("data") or {}) and _keys(doc, "data") <= {"max_length", "batch_size"}, path
    else:  # model/ and strategy/ have their own tests above
        assert folder in ("model", "strategy"), f"{folder}: a configs folder without a rule in configs/README.md"


def test_whole_configs_other_than_the_cpu_recipes_leave_the_hardware_to_trainer_fragments():
    """The same YAML on a laptop CPU or a GPU node: only the CPU recipes pin the accelerator."""
    whole = [*(REPO / "configs").glob("*.yaml"), *(REPO / "configs" / "experiment").glob("*.yaml")]
    pinned = sorted(p.name for p in whole if "accelerator" in (yaml.safe_load(p.read_text()).get("trainer") or {}))
    assert pinned == ["nanogpt.yaml", "quickstart.yaml"]


def _documented_fits(text: str) -> list[list[str]]:
    """The arguments of every ``python -m lit_llm fit ...`` command in ``text`` (a README, or a YAML's comment lines),
    continuation lines (a trailing backslash) joined, trailing comments dropped."""
    import shlex

    lines = [line.strip().lstrip("#").strip() for line in text.splitlines()]
    commands, i = [], 0
    while i < len(lines):
        if lines[i].startswith("python -m lit_llm fit "):
            command = lines[i]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i]
            commands.append(shlex.split(command, comments=True)[4:])
        i += 1
    return commands


def test_the_debug_llama_and_bert_runs_are_documented_with_folders_of_their_own(monkeypatch):
    """debug.yaml writes to outputs/debug; a model fragment sets only the model, so the documented debug-llama and
    debug-bert commands name their own folder: the second run no longer replaces the first one's checkpoints."""
    from lit_llm.lightning_cli import resolve_config

    monkeypatch.chdir(REPO)
    roots: dict[str, set[str]] = {}
    for path in ["configs/model/debug-llama.yaml", "configs/model/debug-bert.yaml", "configs/data/char_mlm.yaml",
                 "README.md"]:
        for args in _documented_fits((REPO / path).read_text()):
            if any(name in args for name in ("configs/model/debug-llama.yaml", "configs/model/debug-bert.yaml")):
                resolved = resolve_config(args)
                roots.setdefault(resolved["model"]["init_args"]["preset"], set()).add(
                    resolved["trainer"]["default_root_dir"])
    assert {k: len(v) for k, v in roots.items()} == {"debug-llama": 1, "debug-bert": 1}, roots  # one folder each
    debug = resolve_config(["--config", "configs/debug.yaml"])["trainer"]["default_root_dir"]
    assert len({debug, *roots["debug-llama"], *roots["debug-bert"]}) == 3, (debug, roots)


def test_muon_on_a_sharded_strategy_is_refused_before_any_work(tmp_path, capsys):
    """quickstart (Muon) + fsdp used to switch every weight to AdamW at Muon's embedding learning rate."""
    from tests.helpers.cli import call, error_line

    args = ["fit", "--config", "configs/quickstart.yaml", "--config", "configs/strategy/fsdp.yaml",
            "--trainer.default_root_dir", str(tmp_path / "run")]
    line = error_line(*call(args, capsys)[::2])
    assert "--model.optimizer.name muon orthogonalizes whole weight matrices" in line and "--model.optimizer.name adamw" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    printed = _printed(args[1:] + ["--model.optimizer.name", "adamw", "--model.optimizer.learning_rate", "1e-3"], capsys)
    assert printed["model"]["init_args"]["optimizer"]["name"] == "adamw"
    assert printed["model"]["init_args"]["optimizer"]["learning_rate"] == 1e-3


def test_crossval_takes_the_configs_number_of_folds(tmp_path):
    from lit_llm.commands.crossval import crossval
    from lit_llm.errors import UsageError

    args = ["--config", str(EXPERIMENT / "classifier.yaml"), "--config", str(EXPERIMENT / "data/sst2.yaml"),
            "--config", str(EXPERIMENT / "init/scratch.yaml"), "--data.num_folds", "3"]
    with pytest.raises(UsageError, match=r"folds \[5\] are outside 0..2"):  # 10 folds before
        crossval(args, folds=[5], out=str(tmp_path))


def test_a_warm_up_longer_than_the_run_is_refused_before_any_side_effect(tmp_path, capsys):
    """It was found 22 s in, after W&B had started, and left a csv/version_0 behind."""
    from tests.helpers.cli import call, error_line

    run = tmp_path / "run"
    line = error_line(*call(["fit", "--config", "configs/debug.yaml", "--trainer.max_steps", "3",
                             "--trainer.default_root_dir", str(run)], capsys)[::2])
    assert "--model.optimizer.warmup_steps 5 is longer than the schedule (--trainer.max_steps 3)" in line
    assert not run.exists() and not (tmp_path / "cache").exists()


def _yaml_blocks(text: str) -> dict[str, str]:
    """The fenced YAML blocks of a page that name their file on their first line (``# feedback.yaml: ...``)."""
    import re

    blocks = {}
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        first = re.match(r"#\s*([\w./-]+\.yaml)\b", block.strip())
        if first:
            blocks[first.group(1)] = block
    return blocks


@pytest.mark.slow
def test_every_documented_fit_command_resolves(monkeypatch, tmp_path):
    """Every `python -m lit_llm fit ...` in the README, docs/ and the configs' comments parses as written (a file a
    page defines in a YAML block is written out first): a renamed key or file cannot leave a stale command."""
    from lit_llm.lightning_cli import resolve_config

    monkeypatch.chdir(REPO)
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *CONFIGS]
    checked = []
    for page in pages:
        text = page.read_text()
        defined = {}
        for name, block in _yaml_blocks(text).items():
            defined[name] = tmp_path / page.stem / name
            defined[name].parent.mkdir(parents=True, exist_ok=True)
            defined[name].write_text(block)
        for args in _documented_fits(text):
            if any(a == "--print_config" or a.endswith(".help") or a == "--help" for a in args):
                continue
            args = [str(defined.get(a, a)) for a in args]
            try:
                resolve_config(args)
            except BaseException as e:  # noqa: BLE001 - name the page and the command
                pytest.fail(f"{page.relative_to(REPO)}: `python -m lit_llm fit {' '.join(args)}` does not resolve: {e}")
            checked.append(args)
    assert len(checked) >= 40  # the README, docs and configs document this many
