#!/usr/bin/env bash
# README command 2: set up the environment and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=offline WANDB_SILENT=true
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
