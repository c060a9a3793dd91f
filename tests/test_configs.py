"""Every YAML in configs/ is parsed and instantiated by the CLI (DESIGN.md, example 9).

Top-level files are complete configs; files in sub-folders are fragments composed onto configs/debug.yaml.
"""

from pathlib import Path

import pytest
import yaml

from lit_llm.cli import LitLLMCLI

from conftest import REPO

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"quickstart.yaml", "debug.yaml", "debug-llama.yaml", "debug-bert.yaml"}


def _args(path: Path, tmp_path: Path) -> list[str]:
    base = [] if path.parent.name == "configs" else ["--config", str(REPO / "configs" / "debug.yaml")]
    return [*base, "--config", str(path), "--trainer.default_root_dir", str(tmp_path)]


NEEDS_NETWORK = {"wikipedia.yaml"}  # hub corpora: parsed here, not prepared


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name in NEEDS_NETWORK], ids=lambda p: p.name)
def test_hub_config_parses(path: Path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["lit_llm"])
    with pytest.raises(SystemExit) as exit_:
        LitLLMCLI(args=["fit", *_args(path, tmp_path), "--print_config"], run=True)
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["init_args"]["sources"][0]["hf_name"] == "wikimedia/wikipedia"


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name not in NEEDS_NETWORK], ids=lambda p: str(p.relative_to(REPO)))
def test_config_parses_and_instantiates(path: Path, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lit_llm"])
    args = _args(path, tmp_path)
    if "gpt2-124m" in path.name:
        args += ["--data.block_size", "1024"]
    cli = LitLLMCLI(args=args, run=False)
    assert cli.model.config.vocab_size == cli.datamodule.vocab_size  # linked from the data
    assert cli.model.config.block_size == cli.datamodule.block_size
    assert cli.trainer.max_steps > 0
