#!/usr/bin/env bash
# Create .venv and install lit_llm with its test extras. torch is pinned by constraints.txt to the
# CPU build on this kind of machine's disk; pyproject.toml itself keeps version ranges for users.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt torch
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
