#!/usr/bin/env bash
# The main job on a fresh machine: install into .venv, generate the shapes dataset, train
# configs/shapes.yaml from scratch, evaluate it on held-out images, draw a few predictions,
# export a SavedModel for TensorFlow Serving and answer a gRPC request with it.
# Outputs go under runs/demo (checkpoints, metrics.json, predictions/, export/, served/).
set -euo pipefail
cd "$(dirname "$0")/.."
export KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=2

python3 -m venv .venv
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

# Export version 1 (replaced on re-runs), serve it with the development server (the same gRPC
# API as tensorflow_model_server, see serving/README.md) and send it two images.
.venv/bin/mask-rcnn export --config configs/shapes.yaml --model-dir "$run" \
    --export-base "$run/export" --version 1 --overwrite
port=$(.venv/bin/python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
.venv/bin/mask-rcnn serve --model-base-path "$run/export" --model-name shapes --port "$port" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
.venv/bin/mask-rcnn client --server "127.0.0.1:$port" --model-name shapes --wait 120 \
    --draw "$run/served" data/shapes/val/images/00000{4,5}.png > "$run/served.json"
kill "$server"; wait "$server" || true
echo "metrics: $run/metrics.json; drawings: $run/predictions/; SavedModel: $run/export/1;"
echo "gRPC answer: $run/served.json, drawn in $run/served/"
