#!/usr/bin/env bash
# Create .venv and install lit_llm with the extras in $LIT_LLM_EXTRAS (default: dev, everything the tests
# need; scripts/quickstart.sh sets it empty, the core only). torch is pinned by constraints.txt to the CPU
# build on this kind of machine's disk; pyproject.toml itself keeps version ranges for users.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt torch
EXTRAS=${LIT_LLM_EXTRAS-dev}
.venv/bin/python -m pip install -q -c constraints.txt -e ".${EXTRAS:+[$EXTRAS]}"
