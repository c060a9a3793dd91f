"""The command line: the entry point ``python -m lit_llm`` (its help, errors and lazy imports), the one config
resolver that every command shares with ``fit``, and end-to-end runs through real subprocesses (marked slow)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_llm.cli import COMMANDS, main
from tests.helpers.cli import call, error_line
from tests.helpers.paths import REPO, cli_env
from tests.helpers.wandb_offline import config as wandb_config
from tests.helpers.wandb_offline import history as wandb_history

EXPERIMENT = REPO / "configs" / "experiment"
DEBUG = str(REPO / "configs" / "debug.yaml")


def run(args, tmp_path, check=True, timeout=300):
    proc = subprocess.run(
        [sys.executable, "-m", "lit_llm", *args], cwd=REPO, env=cli_env(tmp_path),
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"lit_llm {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


# ------------------------------------------------------------------ the entry point


def test_top_level_help_lists_every_command_on_one_line(tmp_path):
    proc = run(["--help"], tmp_path)
    for name in ["fit", "validate", "test", "predict", "prepare", "generate", "export", "import-hf", "size",
                 "consolidate", "crossval", "submit", "serve"]:
        assert name in COMMANDS
        assert len([line for line in proc.stdout.splitlines() if line.startswith(f"  {name} ")]) == 1, name
    assert set(COMMANDS) == {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")}
    nothing = run([], tmp_path, check=False)
    assert nothing.returncode == 2 and "error: give a command" in nothing.stderr and "generate" in nothing.stdout


def test_a_mistyped_command_suggests_the_nearest(tmp_path):
    proc = run(["genrate"], tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr == "error: unknown command 'genrate'; did you mean 'generate'?\n"
    proc = run(["xyzzy"], tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown command 'xyzzy'; the commands are fit,")


def test_the_cli_imports_no_command_module_before_it_runs(tmp_path):
    """Server, export and LoRA packages load only when their command runs: not for the CLI, not for fit's parser
    (which does load transformers: torchmetrics imports it for its BERTScore when it is installed)."""
    heavy = ("litserve", "fastapi", "onnx", "transformers", "peft")
    code = ("import sys; import lit_llm.cli; print([m for m in {h} if m in sys.modules]); import lit_llm.lightning_cli;"
            " print([m for m in {h} if m in sys.modules])").format(h=heavy)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    after_cli, after_config = proc.stdout.strip().splitlines()[-2:]
    assert after_cli == "[]"
    assert after_config in ("[]", "['transformers']")
    assert all(":" in c.target for n, c in COMMANDS.items() if n not in ("fit", "validate", "test", "predict"))


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        code, out, _ = call([name, "--help"], capsys)
        assert code == 0 and out.startswith("usage: python -m lit_llm ") and name in out.split("\n")[0].split(), name
    code, out, _ = call(["fit", "--help"], capsys)
    assert "--model CONFIG | CLASS_PATH_OR_NAME" in out and "--evaluation.dirpath" in out
    code, out, _ = call(["fit", "--model.help", "LanguageModel"], capsys)
    assert "--model.preset" in out and "--model.optimizer.learning_rate" in out and "peak learning rate" in out
    assert "--data.corpus" in call(["fit", "--data.help", "PretrainDataModule"], capsys)[1]
    assert "--model.layer_decay" in call(["fit", "--model.help", "SequenceClassifier"], capsys)[1]
    out = call(["generate", "--help"], capsys)[1]
    assert "--top_p" in out and "greedy" in out
    out = call(["size", "--help"], capsys)[1]
    assert "32-true" in out and "bf16-true" in out and "--config FILE" in out  # the choices, and fit's arguments


def test_help_read_from_the_source_is_the_help_of_the_imported_command():
    """``COMMAND --help`` is built from a stand-in read from the command's source (no import of its module); it must
    print exactly what the imported function's parser prints."""
    from lit_llm.cli import _load, function_parser, help_function

    read = set()
    for name, command in COMMANDS.items():
        stand_in = help_function(command.target) if command.target else None
        if stand_in is not None:
            read.add(name)
            real = function_parser(name, _load(command.target))
            assert function_parser(name, stand_in).format_help() == real.format_help(), name
    assert read >= {"generate", "export", "prepare", "consolidate", "plot", "serve"}


@pytest.mark.slow
def test_the_help_of_commands_that_train_nothing_imports_neither_torch_nor_lightning(tmp_path):
    code = ("import sys\nfrom lit_llm.cli import main\n"
            "for name in ['generate', 'export', 'prepare', 'consolidate', 'plot', 'serve']:\n"
            "    try:\n        main([name, '--help'])\n    except SystemExit as e:\n        assert not e.code, name\n"
            "print('IMPORTED', sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("usage: python -m lit_llm ") == 6 and "IMPORTED []" in proc.stdout


# ------------------------------------------------------------------ errors: one line, exit code 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.preset", "gpt5"], "error: Unknown model preset 'gpt5'. Available presets: "),
        (["--data.corpus", "/no/such/file.txt"], "error: Corpus '/no/such/file.txt' is neither a named corpus"),
        (["--data.block_size", "500000"], "fewer than block_size + 1"),
        (["--trainer.max_steps", "abc"], "error: Parser key \"trainer.max_steps\""),
        (["--trainer.max_stepz", "3"], "error: unrecognized arguments: --trainer.max_stepz 3"),
        (["--config", "/no/such/config.yaml"], "/no/such/config.yaml"),
    ],
)
def test_a_bad_fit_argument_is_one_error_line(tmp_path, capsys, args, message):
    code, _, err = call(["fit", "--config", DEBUG, "--trainer.logger", "false",
                         "--trainer.default_root_dir", str(tmp_path), *args], capsys)
    assert message in error_line(code, err)
    assert not list(tmp_path.glob("**/*.ckpt"))


def test_a_bad_argument_of_an_extra_command_is_one_error_line(tmp_path, capsys):
    line = error_line(*call(["generate", "--checkpoint", str(tmp_path / "missing.ckpt")], capsys)[::2])
    assert "missing.ckpt" in line and "does not exist" in line
    line = error_line(*call(["size", "--precision", "fp8"], capsys)[::2])  # a Literal: refused by the parser
    assert "fp8" in line and "bf16-mixed" in line and "size --help" in line
    line = error_line(*call(["size", "--preset", "gpt5"], capsys)[::2])
    assert line.startswith("error: Unknown model preset 'gpt5'")
    line = error_line(*call(["export", "--checkpoint", "x.ckpt", "--out", str(tmp_path), "--format", "gguf"], capsys)[::2])
    assert "gguf" in line
    line = error_line(*call(["crossval", "--config", DEBUG, "--num_folds", "2"], capsys)[::2])
    assert "crossval needs a classification data config" in line


def test_debug_env_shows_the_traceback(monkeypatch, capsys):
    monkeypatch.setenv("LIT_LLM_DEBUG", "1")
    with pytest.raises(ValueError, match="Unknown model preset 'gpt5'"):
        main(["size", "--preset", "gpt5"])


# ------------------------------------------------------------------ the config resolver


def test_resolve_config_composes_configs_and_overrides_like_fit(capsys):
    from lit_llm.lightning_cli import resolve_config

    args = [a for f in ("classifier.yaml", "data/sst2.yaml", "init/scratch.yaml") for a in ("--config", str(EXPERIMENT / f))]
    args += ["--model.init_args.optimizer.learning_rate", "1e-3", "--data.batch_size", "4", "--trainer.max_epochs", "2"]
    resolved = resolve_config(args)
    model, data = resolved["model"], resolved["data"]
    assert model["class_path"] == "lit_llm.tasks.SequenceClassifier"
    assert model["init_args"]["optimizer"]["learning_rate"] == 1e-3 and data["init_args"]["batch_size"] == 4  # the overrides
    assert resolved["trainer"]["max_epochs"] == 2
    assert model["init_args"]["optimizer"]["warmup_steps"] == 100  # classifier.yaml
    assert model["init_args"]["model_args"]["n_layer"] == 4  # init/scratch.yaml
    # the classifier's own defaults, not LanguageModel's lent by jsonargparse when the class_path changed
    assert model["init_args"]["optimizer"]["betas"] == [0.9, 0.999]
    # exactly what fit --print_config prints, plus the values links fill in (num_classes, from the model)
    code, out, _ = call(["fit", *args, "--print_config"], capsys)
    printed = yaml.safe_load(out)
    assert code == 0 and "num_classes" not in printed["data"]["init_args"]
    assert data["init_args"].pop("num_classes") == 2 and data["init_args"].pop("label_names") == ["negative", "positive"]
    assert resolved == printed


def test_resolve_config_gives_the_chosen_classes_their_own_defaults(tmp_path):
    """jsonargparse lends the default class's init_args to a class_path that replaces it; the resolver (like fit)
    parses with the chosen classes as the defaults, so none are lent."""
    import inspect
    from dataclasses import asdict

    from lit_llm.data.labelled import ClassificationDataModule
    from lit_llm.lightning_cli import resolve_config
    from lit_llm.tasks import SequenceClassifier

    config = tmp_path / "classify.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"class_path": "lit_llm.tasks.SequenceClassifier"},
        "data": {"class_path": "lit_llm.data.labelled.ClassificationDataModule", "init_args": {"train": "x.txt"}},
    }))
    resolved = resolve_config(["--config", str(config)])
    model, data = resolved["model"]["init_args"], resolved["data"]["init_args"]
    assert model["optimizer"] == {**asdict(inspect.signature(SequenceClassifier).parameters["optimizer"].default),
                                  "betas": [0.9, 0.999]}
    for key in ("batch_size", "seed"):
        assert data[key] == inspect.signature(ClassificationDataModule).parameters[key].default, key


def test_resolve_config_of_a_language_model_links_the_block_size():
    from lit_llm.lightning_cli import resolve_config

    resolved = resolve_config(["--config", DEBUG, "--config", str(REPO / "configs" / "model" / "debug-llama.yaml"),
                               "--data.block_size", "16"])
    assert resolved["model"]["class_path"] == "lit_llm.tasks.LanguageModel"
    assert resolved["model"]["init_args"]["block_size"] == 16 and resolved["data"]["init_args"]["block_size"] == 16
    assert resolved["model"]["init_args"]["optimizer"]["learning_rate"] == 3e-3  # debug.yaml


# ------------------------------------------------------------------ commands that take fit's arguments


def test_commands_that_take_fit_arguments_do_not_shadow_them():
    """A command's own options and fit's top-level keys are disjoint, so every other argument can go to fit."""
    import importlib
    import inspect

    from lit_llm.cli import FIT_ARGS
    from lit_llm.lightning_cli import resolve_config

    fit_keys = set(resolve_config([])) | {"config", "print_config", "help"}
    taking = []
    for name, command in COMMANDS.items():
        if command.target:
            module, _, fn = command.target.partition(":")
            params = inspect.signature(getattr(importlib.import_module(module), fn)).parameters
            if FIT_ARGS in params:
                taking.append(name)
                assert not (set(params) - {FIT_ARGS}) & fit_keys, name
    assert sorted(taking) == ["crossval", "plan", "prepare", "size", "submit", "sweep"]


def test_size_of_presets_and_of_configs(capsys):
    text = call(["size", "--preset", "gpt2-124m", "--world_size", "8"], capsys)[1]
    assert "124,439,808" in text and "854,438,400" in text  # 6 * 123,532,032 + 12 * 12 * 768 * 1024
    assert "1.85 GiB" in text and "0.23 GiB" in text  # 16 B/param on each DDP rank; / 8 under FSDP
    assert "6,738,415,616" in call(["size", "--preset", "llama-7b"], capsys)[1]
    assert "809,856" in call(["size", "--config", "configs/quickstart.yaml"], capsys)[1]
    # a classifier config from scratch: its preset and model_args, read through fit's parser (model.init_args)
    text = call(["size", "--config", str(EXPERIMENT / "init/scratch.yaml")], capsys)[1]
    assert text.startswith("model tiny-gpt2 (gpt2)") and "(context 64)" in text
    # repeated --config and an override, as for fit: the gpt2-124m preset with the data's context of 1024
    text = call(["size", "--config", "configs/quickstart.yaml", "--config", "configs/model/gpt2-124m.yaml",
                 "--data.block_size", "1024", "--world_size", "8"], capsys)[1]
    assert text.startswith("model gpt2-124m (gpt2)") and "124,439,808" in text and "(context 1024)" in text
    code, _, err = call(["size", "--preset", "debug", "--config", DEBUG], capsys)
    assert "not both" in error_line(code, err)


def test_prepare_resolves_every_config_like_fit(tmp_path, small_corpus, capsys):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump({"data": {"corpus": str(small_corpus), "block_size": 16}}))
    b.write_text(yaml.safe_dump({"data": {"cleaning": ["whitespace"], "val_fraction": 0.25}}))
    code, out, err = call(["prepare", "--config", str(a), "--config", str(b)], capsys)
    assert code == 0, err
    assert "  whitespace " in out  # B's cleaning step ran ...
    tokens = dict(part.split() for part in out.split("tokens: ")[1].split(";")[0].split(", "))
    train, val = (int(tokens[k].replace(",", "")) for k in ("train", "val"))
    assert train + val < 20_001  # ... on A's corpus (20,000 characters), not the default Tiny Shakespeare
    assert val / (train + val) == pytest.approx(0.25, abs=0.01)  # B's val_fraction
    png = out.split("document lengths: ")[1].split()[0]  # where the report's picture is
    assert png.endswith("doc_lengths.png") and Path(png).is_file()
    code, _, err = call(["prepare", "--config", str(EXPERIMENT / "classifier.yaml"), "--config",
                         str(EXPERIMENT / "data/sst2.yaml")], capsys)
    assert "prepare runs the language-model data stage" in error_line(code, err)


def test_submit_takes_fit_arguments_like_fit(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, err = call(["submit", "--config", "configs/debug.yaml", "--nodes", "2", "--config",
                           "configs/strategy/ddp.yaml", "--trainer.max_steps", "5", "--gpus_per_node", "4",
                           "--dry_run", "true", "--output_dir", str(tmp_path / "logs")], capsys)
    assert code == 0, err
    assert out.splitlines()[-1] == (
        "srun python -m lit_llm fit --trainer.enable_progress_bar false --log_lines.every_n_steps 50"
        " --config configs/debug.yaml --config configs/strategy/ddp.yaml --trainer.max_steps 5"
        " --trainer.num_nodes 2 --trainer.devices 4 --trainer.accelerator gpu")
    assert "#SBATCH --nodes=2" in out and not (tmp_path / "logs").exists()
    code, _, err = call(["submit", "--config", "configs/debug.yaml", "--trainer.max_stepz", "5", "--dry_run", "true"],
                        capsys)
    assert "unrecognized arguments: --trainer.max_stepz" in error_line(code, err)  # checked before sbatch


# ------------------------------------------------------------------ end to end, in subprocesses


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny fit through the CLI with the default (offline W&B) logger, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("fit")
    out = tmp / "out"
    proc = run(["fit", "--config", "configs/debug.yaml", "--trainer.default_root_dir", str(out)], tmp)
    return tmp, out, proc


@pytest.mark.slow
def test_fit_writes_checkpoint_config_and_offline_wandb_run(trained):
    tmp, out, proc = trained
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "checkpoints" / "step20.ckpt").is_file()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["init_args"]["preset"] == "debug" and saved["trainer"]["max_steps"] == 20
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, "the W&B run directory sits inside the output directory"
    rows = wandb_history(runs[0])
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    ppl = [r["val_ppl"] for r in rows if "val_ppl" in r]
    assert len(val) == 2 and 1.0 < val[-1] < math.log(65) + 0.5  # validated at steps 10 and 20
    assert ppl[-1] == pytest.approx(math.exp(val[-1]), rel=1e-4)
    assert any("train_loss" in r for r in rows) and any(k.startswith("lr-AdamW") for r in rows for k in r)
    # and the same curves, without W&B: the CSV log in the run's folder, drawn at the end of fit
    from lit_llm.curves import read_curves
    curves = read_curves(out)
    assert [round(curves["val_loss"][s], 4) for s in sorted(curves["val_loss"])] == [round(v, 4) for v in val]
    assert {p.name for p in (out / "plots").iterdir()} == {"loss.png", "val_ppl.png", "learning_rate.png",
                                                           "tokens_per_sec.png"}
    assert any("tokens_per_sec" in r for r in rows) and any("tokens_seen" in r for r in rows)
    data = next(r for r in rows if "data/bytes_per_token" in r)  # the data report reaches the tracker
    assert data["data/bytes_per_token"] == 1.0 and data["data/train_tokens"] == 1_003_855
    image = next(r for r in rows if "data/doc_lengths/format" in r)  # the length histogram, as an image
    assert image["data/doc_lengths/format"] == "png"
    assert (runs[0].parent / "files" / image["data/doc_lengths/filenames"][0]).is_file()
    cfg = wandb_config(runs[0])
    assert cfg["preset"] == "debug" and cfg["optimizer"]["learning_rate"] == 3e-3  # hyperparameters
    assert cfg["config"]["trainer"]["max_steps"] == 20  # and the resolved CLI config
    run = cfg["run"]  # code version, hardware and the prepared data's hashes
    assert len(run["code"]["git_sha"]) == 40 and run["hardware"]["world_size"] == 1 and run["data"]["tokenizer_hash"]
    tables = list((runs[0].parent / "files" / "media" / "table").glob("samples_*.table.json"))
    assert tables and '"sample"' in tables[-1].read_text()  # sample generations as a table


@pytest.mark.slow
def test_fit_prints_no_logger_tip_no_wandb_anonymous_warning_and_no_negative_epoch_total(trained):
    """Lightning's litlogger tip, W&B's warning about the `anonymous` argument Lightning always passes, and the
    progress bar's "Epoch 0/-2" of a max_steps run (max_epochs -1) are gone; the lines around them stay."""
    _, _, proc = trained
    out = proc.stdout + proc.stderr
    assert "GPU available" in out and "Epoch 0" in out  # Lightning's log and the progress bar still print
    assert "litlogger" not in out and "💡 Tip" not in out
    assert "anonymous setting" not in out
    assert "Epoch 0/-" not in out


@pytest.mark.slow
def test_generate_from_the_checkpoint(trained):
    tmp, out, _ = trained
    ckpt = str(out / "checkpoints" / "last.ckpt")
    args = ["generate", "--checkpoint", ckpt, "--prompt", "ROMEO:", "--max_new_tokens", "40"]
    a = run(args + ["--temperature", "0"], tmp).stdout
    b = run(args + ["--temperature", "0", "--seed", "7"], tmp).stdout
    assert a.startswith("ROMEO:") and len(a.rstrip("\n")) >= len("ROMEO:") + 30
    assert a == b  # greedy ignores the seed
    s1 = run(args + ["--temperature", "1.0", "--top_k", "20", "--top_p", "0.9", "--seed", "1"], tmp).stdout
    assert s1.startswith("ROMEO:") and s1 != a


@pytest.mark.slow
def test_validate_test_predict_from_checkpoint_with_a_csv_logger(trained):
    tmp, out, _ = trained
    ckpt = str(out / "checkpoints" / "last.ckpt")
    csv_dir = tmp / "csv"
    common = ["--config", "configs/debug.yaml", "--ckpt_path", ckpt, "--trainer.default_root_dir", str(tmp / "eval"),
              "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(csv_dir)]
    proc = run(["validate", *common], tmp)
    assert "val_loss" in proc.stdout
    metrics = next(csv_dir.glob("**/version_*/metrics.csv")).read_text()
    assert "val_loss" in metrics and "val_ppl" in metrics
    assert "test_loss" in run(["test", *common], tmp).stdout
    run(["predict", *common], tmp)  # per-block losses; must run end to end


@pytest.mark.slow
def test_resume_through_the_cli_continues_from_the_checkpoint_step(trained):
    tmp, out, _ = trained
    ckpt = str(out / "checkpoints" / "last.ckpt")
    proc = run(["fit", "--config", "configs/debug.yaml", "--trainer.max_steps", "30", "--ckpt_path", ckpt,
                "--model.optimizer.lr_decay_steps", "20", "--trainer.default_root_dir", str(tmp / "resumed")], tmp)
    assert "Restored all states" in proc.stdout + proc.stderr
    assert (tmp / "resumed" / "checkpoints" / "step30.ckpt").is_file()
    # resumed by hand, it continues the W&B run that saved the checkpoint (the id travels in the checkpoint)
    run_id = torch.load(ckpt, map_location="cpu", weights_only=True)["wandb_run_id"]
    first = [p.name for p in (out / "wandb").glob("offline-run-*")]
    again = [p.name for p in (tmp / "resumed" / "wandb").glob("offline-run-*")]
    assert len(first) == len(again) == 1 and first[0].endswith(run_id) and again[0].endswith(run_id)
    parts = [wandb_history(next((d / "wandb").glob(f"offline-run-*/run-{run_id}.wandb"))) for d in (out, tmp / "resumed")]
    steps = [[r["trainer/global_step"] for r in rows if "train_loss" in r] for rows in parts]
    assert steps[0] and steps[1] and max(steps[0]) < 20 <= min(steps[1])  # the second part goes on from step 20


@pytest.mark.slow
def test_print_config_through_the_entry_point(tmp_path):
    printed = yaml.safe_load(run(["fit", "--config", "configs/quickstart.yaml", "--print_config"], tmp_path).stdout)
    assert printed["trainer"]["max_steps"] == 450 and printed["data"]["init_args"]["block_size"] == 64
    assert printed["model"]["init_args"]["optimizer"]["name"] == "muon"


@pytest.mark.slow
def test_a_bad_preset_through_the_entry_point(tmp_path):
    proc = run(["fit", "--config", "configs/debug.yaml", "--trainer.logger", "false", "--model.preset", "gpt5",
                "--trainer.default_root_dir", str(tmp_path)], tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: Unknown model preset 'gpt5'")


@pytest.mark.slow
def test_generate_bad_prompt(tmp_path, trained):
    _, out, _ = trained
    proc = run(["generate", "--checkpoint", str(out / "checkpoints" / "last.ckpt"), "--prompt", "€"], tmp_path, check=False)
    assert proc.returncode == 2 and "does not know" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("family", ["debug-llama", "debug-bert"])
def test_every_family_trains_through_the_cli(tmp_path, family):
    out = tmp_path / "out"
    data = ["--config", "configs/data/char_mlm.yaml"] if family == "debug-bert" else []
    run(["fit", "--config", "configs/debug.yaml", "--config", f"configs/model/{family}.yaml", *data,
         "--trainer.max_steps", "6", "--trainer.val_check_interval", "6", "--trainer.logger", "false",
         "--model.optimizer.warmup_steps", "2", "--trainer.default_root_dir", str(out)], tmp_path)
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    gen = run(["generate", "--checkpoint", str(ckpt), "--prompt", "ROMEO:", "--max_new_tokens", "10",
               "--temperature", "0"], tmp_path, check=False)
    if family == "debug-bert":
        assert gen.returncode == 2 and "does not generate text" in gen.stderr
    else:
        assert gen.returncode == 0 and gen.stdout.startswith("ROMEO:")


@pytest.mark.slow
def test_export_to_transformers_and_back(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    _, out, _ = trained
    ckpt = str(out / "checkpoints" / "last.ckpt")
    hf_dir = tmp_path / "hf"
    run(["export", "--checkpoint", ckpt, "--format", "hf", "--out", str(hf_dir)], tmp_path)
    assert (hf_dir / "model.safetensors").is_file() and (hf_dir / "tokenizer.json").is_file()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)
    assert type(model).__name__ == "GPT2LMHeadModel"
    ids = tok("ROMEO:", return_tensors="pt").input_ids
    n = 32 - ids.size(1)  # transformers' GPT-2 does not crop to its context (debug: 32)
    greedy = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)
    theirs = tok.decode(greedy[0])
    ours = run(["generate", "--checkpoint", ckpt, "--prompt", "ROMEO:", "--max_new_tokens", str(n),
                "--temperature", "0"], tmp_path).stdout
    assert ours == theirs + "\n"
    # and the import path back gives a checkpoint that generates the same text
    back = tmp_path / "back.ckpt"
    run(["import-hf", "--hf_dir", str(hf_dir), "--out", str(back)], tmp_path)
    again = run(["generate", "--checkpoint", str(back), "--prompt", "ROMEO:", "--max_new_tokens", str(n),
                 "--temperature", "0"], tmp_path).stdout
    assert again == ours


@pytest.mark.slow
def test_prepare_command_then_fit_reuses_it_and_logs_the_report(tmp_path):
    proc = run(["prepare", "--config", "configs/data/reviews.yaml"], tmp_path)
    assert "dedup_exact" in proc.stdout and "bytes/token" in proc.stdout
    folder = proc.stdout.split("token folder: ")[1].split()[0]
    csv_dir = tmp_path / "csv"
    fit = run(["fit", "--config", "configs/debug.yaml", "--config", "configs/data/reviews.yaml",
               "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--model.optimizer.warmup_steps", "1",
               "--trainer.default_root_dir", str(tmp_path / "out"),
               "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(csv_dir)],
              tmp_path)
    assert "clean:" not in fit.stderr  # the prepared folder was reused, not rebuilt
    metrics = next(csv_dir.glob("**/metrics.csv")).read_text()
    assert "data/bytes_per_token" in metrics and "data/removed_by_dedup_exact" in metrics
    assert (Path(folder) / "manifest.json").is_file()
    assert json.loads((Path(folder) / "manifest.json").read_text())


def test_plot_reads_every_csv_version_of_a_resumed_run_and_compares_runs(tmp_path, capsys):
    """A resumed run logs to a new CSV version and repeats the steps after its checkpoint: the later values
    win. Two runs go on one figure each; a folder without a CSV log is one clear error."""
    from lit_llm.curves import plot, read_curves

    def write(run, version, rows):
        folder = tmp_path / run / "csv" / f"version_{version}"
        folder.mkdir(parents=True)
        lines = ["epoch,lr-AdamW,step,train_loss,val_loss"] + [",".join(map(str, r)) for r in rows]
        (folder / "metrics.csv").write_text("\n".join(lines) + "\n")

    write("a", 0, [(0, 0.001, 0, 4.0, ""), (0, 0.001, 1, 3.5, ""), (0, "", 1, "", 3.6), (0, 0.001, 2, 3.0, "")])
    write("a", 1, [(0, 0.0005, 2, 2.9, ""), (0, 0.0005, 3, 2.5, ""), (0, "", 3, "", 2.7)])  # resumed at step 2
    write("b", 0, [(0, 0.002, 0, 4.1, ""), (0, 0.002, 1, 3.9, "")])
    curves = read_curves(tmp_path / "a")
    assert curves["train_loss"] == {0: 4.0, 1: 3.5, 2: 2.9, 3: 2.5} and curves["val_loss"] == {1: 3.6, 3: 2.7}
    written = plot([str(tmp_path / "a"), str(tmp_path / "b")], out=str(tmp_path / "cmp"))
    assert sorted(p.name for p in written) == ["learning_rate.png", "loss.png"]
    assert all(p.stat().st_size > 5000 for p in written) and not list((tmp_path / "cmp").glob(".*"))
    (tmp_path / "empty").mkdir()
    code, _, err = call(["plot", "--runs", f"[{tmp_path / 'empty'}]"], capsys)
    assert "has no CSV log" in error_line(code, err)


def test_plot_takes_run_folders_as_words_or_as_the_runs_option(tmp_path, capsys, monkeypatch):
    """``plot RUN_DIR`` (as configs/logger/csv.yaml shows it), several words, ``--runs A``, ``--runs A B`` and the
    list form all reach plot() as the same list; a value of another option stays with it."""
    from typing import Optional

    seen = []

    def plot(runs: list[str], out: Optional[str] = None) -> None:
        seen.append((runs, out))

    monkeypatch.setattr("lit_llm.curves.plot", plot)
    a, b, out = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "o")
    for args in ([a, b, "--out", out], ["--out", out, a, b], ["--runs", a, b, "--out", out],
                 ["--runs", f"[{a}, {b}]", "--out", out], [a, "--runs", b, "--out", out], [f"--runs={a}", b, "--out", out]):
        code, _, err = call(["plot", *args], capsys)
        assert code == 0, (args, err)
        assert seen.pop() == ([a, b], out), args
    assert call(["plot", a], capsys)[0] == 0 and seen.pop() == ([a], None)
    code, out_text, _ = call(["plot", "--help"], capsys)
    assert code == 0 and out_text.startswith("usage: python -m lit_llm plot RUNS [RUNS ...]")
    assert "required" in error_line(*call(["plot", "--out", out], capsys)[::2])  # no run folder at all


@pytest.mark.slow
def test_a_batch_job_prints_progress_as_lines_not_a_bar(tmp_path):
    """What submit's jobs run with: no progress bar, a plain line every N steps (a log file stays readable)."""
    proc = run(["fit", "--config", "configs/debug.yaml", "--trainer.enable_progress_bar", "false",
                "--log_lines.every_n_steps", "5", "--trainer.logger", "false",
                "--trainer.default_root_dir", str(tmp_path / "out")], tmp_path)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines] == ["step 5/20", "step 10/20", "step 15/20", "step 20/20"]
    assert all("train_loss" in line for line in lines) and "\r" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("args,hint", [
    (["fit", "--config", "configs/debug.yaml", "--trainer.max_stepz", "5"], "did you mean --trainer.max_steps?"),
    (["fit", "--config", "configs/debug.yaml", "--modle.learning_rate", "5"], "did you mean --model.optimizer.learning_rate?"),
    (["fit", "--config", "configs/debug.yaml", "--model.learning_rat", "5"], "did you mean --model.optimizer.learning_rate?"),
    (["fit", "--config", "configs/debug.yaml", "--model.warmup_steps", "5"], "did you mean --model.optimizer.warmup_steps?"),
    (["fit", "--config", "configs/debug.yaml", "--model.optimizer.learning_rat", "5"],
     "did you mean --model.optimizer.learning_rate?"),
    # no argparse abbreviations: --model.optimizer.lr would have set lr_decay_steps
    (["fit", "--config", "configs/debug.yaml", "--model.optimizer.lr", "5"], "unrecognized arguments: --optimizer.lr"),
    (["fit", "--config", "configs/debug.yaml", "--trainer.max_st", "5"], "did you mean --trainer.max_steps?"),
    (["generate", "--checkpoint", "x.ckpt", "--promt", "a"], "did you mean --prompt?"),
])
def test_a_mistyped_option_gets_a_did_you_mean(args, hint, capsys):
    assert hint in error_line(*call(args, capsys)[::2])


def test_a_config_that_is_not_valid_yaml_is_named_in_the_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: [debug\n")
    line = error_line(*call(["fit", "--config", str(bad)], capsys)[::2])
    assert f"--config {bad} is not valid YAML" in line and f'"{bad}", line 2' in line and "<unicode string>" not in line
