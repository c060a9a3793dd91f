#!/usr/bin/env bash
# README command 1: set up the environment, train the quickstart GPT on Tiny Shakespeare (CPU, ~2 min on
# 2 cores) and sample from it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m lit_llm fit --config configs/quickstart.yaml
.venv/bin/python -m lit_llm generate --checkpoint outputs/quickstart/checkpoints/last.ckpt --prompt "ROMEO:" --max_new_tokens 200
