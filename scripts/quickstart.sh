#!/usr/bin/env bash
# README command 1: set up the environment (the core install only, no test or serving extras), train the
# quickstart GPT on Tiny Shakespeare (CPU, about 40 s on 2 cores) and sample from it.
set -euo pipefail
cd "$(dirname "$0")/.."
LIT_LLM_EXTRAS= bash scripts/setup.sh
.venv/bin/python -m lit_llm fit --config configs/quickstart.yaml
.venv/bin/python -m lit_llm generate --checkpoint outputs/quickstart/checkpoints/last.ckpt --prompt "ROMEO:" --max_new_tokens 200
