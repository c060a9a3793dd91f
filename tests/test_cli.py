"""End-to-end tests through the real entry point, ``python -m lit_llm``, as subprocesses."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, cli_env
from wandb_offline import config as wandb_config
from wandb_offline import history as wandb_history


def run(args, tmp_path, check=True, timeout=300):
    proc = subprocess.run(
        [sys.executable, "-m", "lit_llm", *args], cwd=REPO, env=cli_env(tmp_path),
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"lit_llm {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny fit through the CLI with the default (offline W&B) logger, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("fit")
    out = tmp / "out"
    proc = run(["fit", "--config", "configs/debug.yaml", "--trainer.default_root_dir", str(out)], tmp)
    return tmp, out, proc


def test_fit_writes_checkpoint_config_and_offline_wandb_run(trained):
    tmp, out, proc = trained
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "checkpoints" / "step20.ckpt").is_file()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["init_args"]["model"] == "debug" and saved["trainer"]["max_steps"] == 20
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, "the W&B run directory sits inside the output directory"
    rows = wandb_history(runs[0])
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    ppl = [r["val_ppl"] for r in rows if "val_ppl" in r]
    assert len(val) == 2 and 1.0 < val[-1] < math.log(65) + 0.5  # validated at steps 10 and 20
    assert ppl[-1] == pytest.approx(math.exp(val[-1]), rel=1e-4)
    assert any("train_loss" in r for r in rows) and any(k.startswith("lr-AdamW") for r in rows for k in r)
    assert any("tokens_per_sec" in r for r in rows) and any("tokens_seen" in r for r in rows)
    data = next(r for r in rows if "data/bytes_per_token" in r)  # the data report reaches the tracker
    assert data["data/bytes_per_token"] == 1.0 and data["data/train_tokens"] == 1_003_855
    image = next(r for r in rows if "data/doc_lengths/format" in r)  # the length histogram, as an image
    assert image["data/doc_lengths/format"] == "png"
    assert (runs[0].parent / "files" / image["data/doc_lengths/filenames"][0]).is_file()
    cfg = wandb_config(runs[0])
    assert cfg["model"] == "debug" and cfg["learning_rate"] == 3e-3  # hyperparameters
    assert cfg["config"]["trainer"]["max_steps"] == 20  # and the resolved CLI config
    run = cfg["run"]  # code version, hardware and the prepared data's hashes
    assert len(run["code"]["git_sha"]) == 40 and run["hardware"]["world_size"] == 1 and run["data"]["tokenizer_hash"]
    tables = list((runs[0].parent / "files" / "media" / "table").glob("samples_*.table.json"))
    assert tables and '"sample"' in tables[-1].read_text()  # sample generations as a table


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


def test_resume_through_the_cli_continues_from_the_checkpoint_step(trained):
    tmp, out, _ = trained
    ckpt = str(out / "checkpoints" / "last.ckpt")
    proc = run(["fit", "--config", "configs/debug.yaml", "--trainer.max_steps", "30", "--ckpt_path", ckpt,
                "--model.lr_decay_steps", "20", "--trainer.default_root_dir", str(tmp / "resumed"),
                "--trainer.logger", "false"], tmp)
    assert "Restored all states" in proc.stdout + proc.stderr
    assert (tmp / "resumed" / "checkpoints" / "step30.ckpt").is_file()


def test_help_and_print_config(tmp_path):
    top = run(["--help"], tmp_path).stdout
    assert "fit" in top and "generate" in top
    fit_help = run(["fit", "--help"], tmp_path).stdout
    assert "--model CONFIG | CLASS_PATH_OR_NAME" in fit_help and "--evaluation.dirpath" in fit_help
    model_help = run(["fit", "--model.help", "LanguageModel"], tmp_path).stdout
    assert "--model.learning_rate" in model_help and "peak learning rate" in model_help
    assert "--data.corpus" in run(["fit", "--data.help", "PretrainDataModule"], tmp_path).stdout
    assert "--model.layer_decay" in run(["fit", "--model.help", "SequenceClassifier"], tmp_path).stdout
    gen_help = run(["generate", "--help"], tmp_path).stdout
    assert "--top_p" in gen_help and "greedy" in gen_help
    printed = yaml.safe_load(run(["fit", "--config", "configs/quickstart.yaml", "--print_config"], tmp_path).stdout)
    assert printed["trainer"]["max_steps"] == 2000 and printed["data"]["init_args"]["block_size"] == 64


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.model", "gpt5"], "Unknown model preset 'gpt5'"),
        (["--data.corpus", "/no/such/file.txt"], "neither a named corpus"),
        (["--data.block_size", "500000"], "fewer than block_size + 1"),
    ],
)
def test_bad_input_gives_a_clear_error(tmp_path, args, message):
    proc = run(["fit", "--config", "configs/debug.yaml", "--trainer.logger", "false",
                "--trainer.default_root_dir", str(tmp_path), *args], tmp_path, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not list(tmp_path.glob("**/*.ckpt"))


def test_generate_bad_input(tmp_path, trained):
    _, out, _ = trained
    proc = run(["generate", "--checkpoint", str(tmp_path / "missing.ckpt")], tmp_path, check=False)
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    proc = run(["generate", "--checkpoint", str(out / "checkpoints" / "last.ckpt"), "--prompt", "€"], tmp_path, check=False)
    assert proc.returncode != 0 and "does not know" in proc.stderr


@pytest.mark.parametrize("family", ["debug-llama", "debug-bert"])
def test_every_family_trains_through_the_cli(tmp_path, family):
    out = tmp_path / "out"
    run(["fit", "--config", "configs/debug.yaml", "--config", f"configs/model/{family}.yaml",
         "--trainer.max_steps", "6", "--trainer.val_check_interval", "6", "--trainer.logger", "false",
         "--model.warmup_steps", "2", "--trainer.default_root_dir", str(out)], tmp_path)
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    gen = run(["generate", "--checkpoint", str(ckpt), "--prompt", "ROMEO:", "--max_new_tokens", "10",
               "--temperature", "0"], tmp_path, check=False)
    if family == "debug-bert":
        assert gen.returncode != 0 and "does not generate text" in gen.stderr
    else:
        assert gen.returncode == 0 and gen.stdout.startswith("ROMEO:")


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


def test_size_prints_counts_flops_and_memory(tmp_path):
    text = run(["size", "--model", "gpt2-124m", "--world_size", "8"], tmp_path).stdout
    assert "124,439,808" in text and "854,438,400" in text  # 6 * 123,532,032 + 12 * 12 * 768 * 1024
    assert "1.85 GiB" in text and "0.23 GiB" in text  # 16 B/param on each DDP rank; / 8 under FSDP
    assert "6,738,415,616" in run(["size", "--model", "llama-7b"], tmp_path).stdout
    assert "809,856" in run(["size", "--model", "configs/quickstart.yaml"], tmp_path).stdout


def test_prepare_command_then_fit_reuses_it_and_logs_the_report(tmp_path):
    proc = run(["prepare", "--config", "configs/data/reviews.yaml"], tmp_path)
    assert "dedup_exact" in proc.stdout and "bytes/token" in proc.stdout
    folder = proc.stdout.split("token folder: ")[1].split()[0]
    csv_dir = tmp_path / "csv"
    fit = run(["fit", "--config", "configs/debug.yaml", "--config", "configs/data/reviews.yaml",
               "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--model.warmup_steps", "1",
               "--trainer.default_root_dir", str(tmp_path / "out"),
               "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(csv_dir)],
              tmp_path)
    assert "clean:" not in fit.stderr  # the prepared folder was reused, not rebuilt
    metrics = next(csv_dir.glob("**/metrics.csv")).read_text()
    assert "data/bytes_per_token" in metrics and "data/removed_by_dedup_exact" in metrics
    assert (Path(folder) / "manifest.json").is_file()
