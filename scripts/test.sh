#!/usr/bin/env bash
# README command 2: set up the environment, lint (ruff, [tool.ruff] in pyproject.toml) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check --no-cache .  # a lint error fails the run before any test
export WANDB_MODE=offline WANDB_SILENT=true
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=30 "$@"
