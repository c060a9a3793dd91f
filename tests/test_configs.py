"""Every YAML in configs/ is parsed and instantiated by the CLI (DESIGN.md, example 9)."""

from pathlib import Path

import pytest

from lit_llm.cli import LitLLMCLI

from conftest import REPO

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"quickstart.yaml", "debug.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_config_parses_and_instantiates(path: Path, tmp_path):
    cli = LitLLMCLI(args=["--config", str(path), "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert cli.model.config.vocab_size == cli.datamodule.vocab_size  # linked from the data
    assert cli.model.config.block_size == cli.datamodule.block_size
    assert cli.trainer.max_steps > 0
