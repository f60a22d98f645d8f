"""This project's Mask R-CNN against torchvision's maskrcnn_resnet50_fpn: latency, training step,
peak memory, in float32 and bfloat16, on the same machine and the same weights.

    python benchmarks/vs_torchvision.py [--threads 2] [--runs 3] [--rounds 2] [--warmup 2]
                                        [--json out.json]

One run measures both models. Each measurement runs in a fresh child process (so peak memory is
that model's own, and the Keras dtype policy is set once), with both frameworks limited to
`--threads` intra-op threads and one inter-op thread; each model gets --rounds children,
alternating with the other model's, each timing --runs runs after --warmup untimed ones:
- inference: one 800 x 1333 image (skimage's coffee photograph, rows cropped to 5:3, resized),
  zero-padded to 800 x 1344 (torchvision pads to a multiple of 32; our model gets the same
  tensor, the one `mask-rcnn predict` and the SavedModel build for that image), 1000
  proposals, score threshold 0 and 100 detections, so both run the mask head on 100 boxes and
  paste 100 masks into the image. torchvision: model([image]) in eval mode, its
  own normalization and (scale 1) resize included; ours: a tf.function of the model call plus
  ops.mask_ops.paste_masks, on the normalized, padded image.
- training step: a batch of 2 crops of 512 x 512 of that photo with 4 synthetic boxes and
  masks each; forward, losses, backward and an SGD step (momentum 0.9, weight decay 1e-4);
  backbone as torchvision's COCO model trains it (FrozenBatchNorm2d, conv1 and layer1 frozen =
  our freeze_at 2).
- bfloat16: Keras' mixed_bfloat16 policy against torch.autocast("cpu", torch.bfloat16).
Reported: median wall time and median process CPU time (both threads) per run, and the peak
resident set size of the child (ru_maxrss: framework, weights and activations). Weights:
torchvision's default initialization (seed 0) with BatchNorm statistics and FPN scales taken
from the photo, so activations and losses stay finite; converted for ours with
mask_rcnn_tf.convert, so both do the same work on the same proposals.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "maskrcnn_r50_fpn_torchvision.yaml"
IMAGE_SIZE = (800, 1333)
PADDED_SIZE = (800, 1344)
TRAIN_SIZE = 512
TRAIN_BATCH = 2
TRAIN_OBJECTS = 4
LEARNING_RATE = 0.0025  # the paper's 0.02 for 16 images, scaled to 2
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def _photo():
    """uint8 [800, 1333, 3]: skimage's coffee photograph, rows cropped to 5:3, resized."""
    from PIL import Image
    from skimage import data

    crop = data.coffee()[20:380]
    return np.asarray(Image.fromarray(crop).resize(IMAGE_SIZE[::-1], Image.BILINEAR))


def _training_batch(seed=0):
    """Training batch: uint8 crops of the photo [B, S, S, 3]; synthetic boxes [B, M, 4] yxyx,
    classes [B, M] in 1..90 and full-image masks [B, M, S, S] (filled ellipses in the boxes)."""
    rng = np.random.default_rng(seed)
    size = TRAIN_SIZE
    photo = _photo()
    tops = rng.integers(0, photo.shape[0] - size, TRAIN_BATCH)
    lefts = rng.integers(0, photo.shape[1] - size, TRAIN_BATCH)
    images = np.stack([photo[t:t + size, l:l + size] for t, l in zip(tops, lefts)])
    sides = rng.uniform(40, 300, (TRAIN_BATCH, TRAIN_OBJECTS, 2))
    corners = rng.uniform(0, 1, (TRAIN_BATCH, TRAIN_OBJECTS, 2)) * (size - sides)
    boxes = np.concatenate([corners, corners + sides], axis=-1).astype(np.float32)
    classes = rng.integers(1, 91, (TRAIN_BATCH, TRAIN_OBJECTS)).astype(np.int32)
    rows = np.arange(size)[:, None] + 0.5
    cols = np.arange(size)[None, :] + 0.5
    cy, cx = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    ry, rx = sides[..., 0] / 2, sides[..., 1] / 2
    masks = (((rows - cy[..., None, None]) / ry[..., None, None]) ** 2
             + ((cols - cx[..., None, None]) / rx[..., None, None]) ** 2) <= 1.0
    return images, boxes, classes, masks.astype(np.uint8)


def _peak_memory_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time(fn, runs, warmup):
    """{"times": wall seconds, "cpu": process CPU seconds} of `runs` calls after `warmup`."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"times": times, "cpu": cpu}


# --- torchvision -------------------------------------------------------------------------


def _torch_setup(threads):
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    # TensorFlow computes with denormals flushed to zero; torch does not by default, and at
    # score threshold 0 its NMS handles tens of thousands of denormal class probabilities,
    # which alone costs seconds. Same floating-point mode on both sides.
    torch.set_flush_denormal(True)
    return torch


def _torchvision_model(training, weights=None):
    """torchvision's Mask R-CNN as maskrcnn_resnet50_fpn builds it for pretrained weights
    (FrozenBatchNorm2d, conv1 and layer1 frozen), loaded from the .npz state dict `weights`."""
    import torch
    import torchvision
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    torch.manual_seed(0)
    body = torchvision.models.resnet50(norm_layer=torchvision.ops.misc.FrozenBatchNorm2d)
    size = dict(min_size=TRAIN_SIZE, max_size=TRAIN_SIZE) if training else {}
    model = MaskRCNN(_resnet_fpn_extractor(body, 3), num_classes=91, box_score_thresh=0.0,
                     box_detections_per_img=100, rpn_pre_nms_top_n_test=1000,
                     rpn_post_nms_top_n_test=1000, **size)
    if weights is not None:
        with np.load(weights) as arrays:
            model.load_state_dict({k: torch.from_numpy(arrays[k]) for k in arrays.files})
    return model.train(training)


def _worker_export_weights(args):
    """Default initialization, but BatchNorm statistics taken from the photo and FPN outputs
    scaled to unit deviation on it (an untrained ResNet with identity statistics grows its
    activations into the hundreds, and training steps diverge at once)."""
    torch = _torch_setup(args.threads)
    import torchvision

    torch.manual_seed(0)
    calibration = torchvision.models.resnet50()
    for module in calibration.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
    image = torch.from_numpy(((_photo() - MEAN) / STD).astype(np.float32)).permute(2, 0, 1)
    with torch.no_grad():
        calibration.train()(image[None])
    model = _torchvision_model(training=False)
    body = {k: v for k, v in calibration.state_dict().items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    model.backbone.body.load_state_dict(body)
    with torch.no_grad():
        features = model.backbone(image[None])
        # Unit-scale FPN levels on the photo, so the default-initialized heads train stably.
        for block, key in zip(model.backbone.fpn.layer_blocks, list(features)[:4]):
            block[0].weight.div_(features[key].std())
    np.savez(args.weights, **{k: v.numpy() for k, v in model.state_dict().items()})
    return {}


def _autocast(torch, precision):
    import contextlib

    if precision == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _worker_torchvision_inference(args):
    torch = _torch_setup(args.threads)
    model = _torchvision_model(training=False, weights=args.weights)
    image = torch.from_numpy(_photo().copy()).permute(2, 0, 1).float() / 255.0
    outputs = {}

    def run():
        with torch.no_grad(), _autocast(torch, args.precision):
            outputs["result"] = model([image])[0]

    return {**_time(run, args.runs, args.warmup),
            "detections": int(len(outputs["result"]["boxes"])), "peak_mb": _peak_memory_mb()}


def _worker_torchvision_train(args):
    torch = _torch_setup(args.threads)
    model = _torchvision_model(training=True, weights=args.weights)
    images, boxes, classes, masks = _training_batch()
    inputs = [torch.from_numpy(i).permute(2, 0, 1).float() / 255.0 for i in images]
    targets = [{"boxes": torch.from_numpy(b[:, [1, 0, 3, 2]]),
                "labels": torch.from_numpy(c).long(), "masks": torch.from_numpy(m)}
               for b, c, m in zip(boxes, classes, masks)]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LEARNING_RATE, momentum=0.9, weight_decay=1e-4)
    losses = []

    def step():
        with _autocast(torch, args.precision):
            loss = sum(model(inputs, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))

    return {**_time(step, args.runs, args.warmup), "loss": losses[-1],
            "peak_mb": _peak_memory_mb()}


# --- ours --------------------------------------------------------------------------------


def _tf_setup(args):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    if args.precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    return tf


def _our_model(args, overrides):
    from mask_rcnn_tf.config import load_config
    from mask_rcnn_tf.convert import assign_torchvision_weights
    from mask_rcnn_tf.modeling.factory import build_model

    config = load_config(CONFIG, overrides)
    model = build_model(config.model, image_size=64)
    with np.load(args.weights) as weights:
        assign_torchvision_weights(model, dict(weights), source=args.weights)
    return model, config


def _worker_ours_inference(args):
    tf = _tf_setup(args)
    from mask_rcnn_tf.ops.mask_ops import paste_masks

    model, _ = _our_model(args, ["model.roi_heads.score_threshold=0.0"])
    images = np.zeros((1, *PADDED_SIZE, 3), np.float32)
    images[0, :IMAGE_SIZE[0], :IMAGE_SIZE[1]] = (_photo().astype(np.float32) - MEAN) / STD
    image_sizes = np.array([IMAGE_SIZE], np.float32)

    @tf.function
    def infer(images, image_sizes):
        out = model({"images": images, "image_sizes": image_sizes}, training=False)
        out["masks_in_image"] = paste_masks(out["detection_masks"], out["detection_boxes"],
                                            IMAGE_SIZE)
        return out

    outputs = {}

    def run():
        outputs["result"] = infer(images, image_sizes)
        outputs["result"]["masks_in_image"].numpy()

    return {**_time(run, args.runs, args.warmup),
            "detections": int(outputs["result"]["num_detections"][0]),
            "peak_mb": _peak_memory_mb()}


def _worker_ours_train(args):
    tf = _tf_setup(args)
    from mask_rcnn_tf.ops.mask_ops import crop_masks
    from mask_rcnn_tf.training.optimizer import build_optimizer

    model, config = _our_model(args, [])
    model.compile(optimizer=build_optimizer(model, name="sgd", learning_rate=LEARNING_RATE,
                                            momentum=0.9, weight_decay=1e-4))
    images, boxes, classes, masks = _training_batch()
    crop = config.data.mask_crop_size
    crops = np.stack([np.asarray(crop_masks(m.astype(np.float32), b, crop))
                      for m, b in zip(masks, boxes)])
    batch = {
        "images": (images.astype(np.float32) - MEAN) / STD,
        "image_sizes": np.full((TRAIN_BATCH, 2), TRAIN_SIZE, np.float32),
        "gt_boxes": boxes, "gt_classes": classes, "gt_masks": crops,
    }
    step_fn = tf.function(model.train_step)
    losses = []

    def step():
        losses.append(float(step_fn(batch)["loss"]))

    return {**_time(step, args.runs, args.warmup), "loss": losses[-1],
            "peak_mb": _peak_memory_mb()}


WORKERS = {
    "export_weights": _worker_export_weights,
    "torchvision_inference": _worker_torchvision_inference,
    "torchvision_train": _worker_torchvision_train,
    "ours_inference": _worker_ours_inference,
    "ours_train": _worker_ours_train,
}


# --- driver ------------------------------------------------------------------------------


def _child(worker, args, precision):
    command = [sys.executable, __file__, "--worker", worker, "--precision", precision,
               "--weights", args.weights, "--threads", str(args.threads),
               "--runs", str(args.runs), "--warmup", str(args.warmup)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    if result.returncode != 0:
        sys.exit(f"{worker} ({precision}) failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _merge(children):
    """One model's measurements over several child processes."""
    merged = {"times": [], "cpu": [], "peak_mb": max(c["peak_mb"] for c in children)}
    for child in children:
        merged["times"] += child["times"]
        merged["cpu"] += child["cpu"]
    for key in ("detections", "loss"):
        if key in children[-1]:
            merged[key] = children[-1][key]
    return merged


def _cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per child process")
    parser.add_argument("--rounds", type=int, default=2,
                        help="child processes per model and measurement, alternating models")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per child")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16"])
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--json", help="also write all measurements to this file")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.runs, args.rounds, args.threads) < 1 or args.warmup < 0:
        parser.error("--runs, --rounds and --threads must be >= 1, --warmup >= 0")
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return

    import platform
    from importlib.metadata import version

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        args.weights = os.path.join(folder, "weights.npz")
        _child("export_weights", args, "float32")
        rows = []
        for precision in args.precisions:
            phases = ["inference"] + ([] if args.skip_training else ["train"])
            for phase in phases:
                results = {"ours": [], "torchvision": []}
                # Alternate which model goes first, so that load from other jobs drifting
                # over the minutes of a round biases neither.
                for round_index in range(args.rounds):
                    order = ["ours", "torchvision"][::1 if round_index % 2 == 0 else -1]
                    for name in order:
                        results[name].append(_child(f"{name}_{phase}", args, precision))
                rows.append({"phase": phase, "precision": precision,
                             **{name: _merge(runs) for name, runs in results.items()}})
                print(_row(rows[-1]), file=sys.stderr, flush=True)
    report = {
        "machine": {"cpu": _cpu_model(), "cpus": os.cpu_count(), "threads": args.threads,
                    "python": platform.python_version(), "tensorflow": version("tensorflow"),
                    "torch": version("torch"), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "runs": args.runs, "rounds": args.rounds, "warmup": args.warmup, "rows": rows,
    }
    print()
    print(_table(report))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(report, f, indent=2)
        os.replace(args.json + ".tmp", args.json)


def _row(row):
    ours, theirs = row["ours"], row["torchvision"]
    cells = [row["phase"], row["precision"]]
    for key in ("times", "cpu"):
        a, b = statistics.median(ours[key]), statistics.median(theirs[key])
        cells += [f"{a * 1000:.0f}", f"{b * 1000:.0f}", f"**{a / b:.2f}**"]
    cells += [f"{ours['peak_mb']:.0f}", f"{theirs['peak_mb']:.0f}",
              f"**{ours['peak_mb'] / theirs['peak_mb']:.2f}**"]
    return "| " + " | ".join(cells) + " |"


def _table(report):
    m = report["machine"]
    lines = [
        f"{m['cpu']}, {m['cpus']} CPUs, {m['threads']} threads per framework; TensorFlow "
        f"{m['tensorflow']}, torch {m['torch']}; load average (1, 5, 15 min) before: "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_before'])}, after: "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_after'])}",
        f"medians over {report['rounds']} child processes per model x {report['runs']} runs, "
        f"each child after {report['warmup']} warm-up runs",
        "",
        "| phase | precision | ours ms | torchvision ms | ours/tv | ours CPU ms "
        "| torchvision CPU ms | ours/tv (CPU) | ours peak MB | torchvision peak MB | ours/tv |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(row) for row in report["rows"]]
    by_key = {(r["phase"], r["precision"]): statistics.median(r["ours"]["times"])
              for r in report["rows"]}
    for phase in ("inference", "train"):
        if (phase, "float32") in by_key and (phase, "bfloat16") in by_key:
            lines.append(f"\nours {phase}: bfloat16 speed-up over float32 "
                         f"{by_key[(phase, 'float32')] / by_key[(phase, 'bfloat16')]:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
