#!/usr/bin/env bash
# The main job on a fresh machine: install into .venv, generate the shapes dataset, train
# configs/shapes.yaml from scratch, evaluate it on held-out images, draw a few predictions.
# Outputs go under runs/demo (checkpoints, metrics.json, predictions/).
set -euo pipefail
cd "$(dirname "$0")/.."
export KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=2

python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e .
run=runs/demo
mkdir -p "$run"

[[ -f data/shapes/train/annotations.json ]] || .venv/bin/mask-rcnn make-shapes --output data/shapes/train --num-images 2000 --seed 1
[[ -f data/shapes/val/annotations.json ]] || .venv/bin/mask-rcnn make-shapes --output data/shapes/val --num-images 200 --seed 2

start=$(date +%s)
.venv/bin/mask-rcnn train --config configs/shapes.yaml --model-dir "$run"
echo "training wall time: $(( $(date +%s) - start )) s"

.venv/bin/mask-rcnn evaluate --config configs/shapes.yaml --model-dir "$run" --output "$run/metrics.json"
.venv/bin/mask-rcnn predict --config configs/shapes.yaml --model-dir "$run" \
    --output-dir "$run/predictions" data/shapes/val/images/00000{0,1,2,3}.png
echo "metrics: $run/metrics.json; drawings: $run/predictions/"
