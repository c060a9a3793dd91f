"""Fixtures for every test. Helpers that tests import live in tests/helpers/."""

import os
from pathlib import Path

import pytest

from tests.helpers.paths import SHAKESPEARE


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Token cache and W&B files go to the test's tmp folder; W&B stays offline and quiet."""
    monkeypatch.setenv("LIT_LLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    for key in list(os.environ):  # leftover SLURM variables would switch Lightning into SLURM mode
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("WANDB_SERVICE", raising=False)  # an earlier in-process W&B run's service, gone or not ours


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    """The first 20,000 characters of Tiny Shakespeare (all 65-ish characters appear early on)."""
    assert SHAKESPEARE.is_file(), f"tests need ../shared/data beside the checkout ({SHAKESPEARE})"
    path = tmp_path / "small.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path
