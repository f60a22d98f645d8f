#!/usr/bin/env bash
# Installs the package with its test extras (pytest, pytest-xdist; torch, torchvision and scikit-image for the
# torchvision parity tests) into .venv and runs the test suite (CI runs this).
set -euo pipefail
cd "$(dirname "$0")/.."
export KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=2
python3 -m venv .venv
.venv/bin/pip install --quiet -e ".[test,parity]"
# Two pytest-xdist workers, whole test files each: much of a test's time is single-threaded
# graph building and process start-up, which the other worker overlaps (2 cores: 677 s serially,
# 416 s so). Pass -n 0 to run in one process.
.venv/bin/python -m pytest -q -m "not slow" -n 2 --dist loadfile "$@"
