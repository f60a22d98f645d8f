#!/usr/bin/env bash
# Installs the package with its test extras (pytest; torch, torchvision and scikit-image for the
# torchvision parity tests) into .venv and runs the test suite (CI runs this).
set -euo pipefail
cd "$(dirname "$0")/.."
export KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=2
python3 -m venv .venv
.venv/bin/pip install --quiet -e ".[test,parity]"
.venv/bin/python -m pytest -q -m "not slow" "$@"
