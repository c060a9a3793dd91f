#!/usr/bin/env bash
# Create .venv and install lit_llm with the extras in $LIT_LLM_EXTRAS (default: dev, everything the tests
# need; scripts/quickstart.sh sets it empty, the core only). torch is pinned by constraints.txt to the CPU
# build on this kind of machine's disk; every other package by constraints-lock.txt, the exact versions CI
# tested (LIT_LLM_LOCK= for none: the newest versions pyproject.toml's ranges allow). docs/installing.md says more.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LOCK=${LIT_LLM_LOCK-constraints-lock.txt}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt ${LOCK:+-c "$LOCK"} torch
EXTRAS=${LIT_LLM_EXTRAS-dev}
# the stream extra (litdata) is installed below, beside the CPU torch without its torchvision (pyproject.toml's
# stream extra says why), so pip never sees it as an extra
PIP_EXTRAS=$(echo ",$EXTRAS," | sed -e 's/,stream,/,/g' -e 's/^,//' -e 's/,$//')
.venv/bin/python -m pip install -q -c constraints.txt ${LOCK:+-c "$LOCK"} -e ".${PIP_EXTRAS:+[$PIP_EXTRAS]}"
case ",$EXTRAS," in
  *,dev,*|*,stream,*)
    .venv/bin/python -m pip install -q -c constraints.txt ${LOCK:+-c "$LOCK"} "boto3>=1.34" obstore tifffile
    .venv/bin/python -m pip install -q -c constraints.txt ${LOCK:+-c "$LOCK"} --no-deps "litdata>=0.2.76" ;;
esac
