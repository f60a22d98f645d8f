"""The input path at COCO-train size: make-tfrecords, start-up, memory and throughput.

Writes a COCO-train-sized annotations file (118,287 images, about 860k polygon instances of
16-40 vertices, COCO's mix of image sizes and of small / medium / large objects) whose images
are symbolic links to a few real JPEGs (one per image size), then measures, each in a fresh
process:

  1. `mask-rcnn make-tfrecords` time (every image decoded in parallel, then written);
  2. training input start-up, process start to first batch, from the shards and from the JSON;
  3. peak RSS of a process that only iterates the training input for --batches batches, from
     the shards, at --small images and at the full size (target: within 15%);
  4. input throughput in images/s at the COCO config's sizes (configs/maskrcnn_r50_fpn_coco.yaml:
     800 x 1333, 2 images per batch), and the images/s of one R-50-FPN training step on the
     same machine (target: input >= 1.5x the step).

    python benchmarks/coco_scale.py --workdir /tmp/coco_scale            # full size (~1 h)
    python benchmarks/coco_scale.py --workdir /tmp/coco_small --num-images 2000 --small 500 \\
        --batches 20 --no-step                                           # smoke test
    python benchmarks/coco_scale.py --workdir /tmp/coco_scale --reuse-shards  # measure again
                                                 # without rewriting the shards (~10 min)

Prints one JSON object; the targets of issue 15 are checked in its "targets" field.
"""

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "maskrcnn_r50_fpn_coco.yaml")
COCO_TRAIN_IMAGES = 118287
INSTANCES_PER_IMAGE = 7.3  # COCO train 2017: 860,001 instances over 118,287 images
# (height, width) of COCO images and how often they occur (the most common sizes, rounded).
IMAGE_SIZES = [((480, 640), 0.42), ((427, 640), 0.2), ((640, 480), 0.12), ((640, 427), 0.07),
               ((424, 640), 0.05), ((512, 640), 0.04), ((360, 640), 0.05), ((640, 640), 0.05)]
# Object side in pixels (sqrt of the area): COCO's ~41% small (< 32), 34% medium, 25% large.
SIDE_BINS = [((4, 32), 0.41), ((32, 96), 0.34), ((96, 400), 0.25)]


def _write_jpegs(folder, rng):
    from PIL import Image

    paths = {}
    for (height, width), _ in IMAGE_SIZES:
        y, x = np.mgrid[:height, :width]
        pixels = np.stack([(x * 255 // width), (y * 255 // height), (x + y) % 256], -1)
        pixels = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"real_{height}x{width}.jpg")
        Image.fromarray(pixels).save(path, quality=90)
        paths[(height, width)] = path
    return paths


def _polygon(rng, height, width):
    side = rng.uniform(*SIDE_BINS[rng.choice(len(SIDE_BINS), p=[p for _, p in SIDE_BINS])][0])
    side = min(side, 0.9 * min(height, width))
    count = int(rng.integers(16, 41))
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    radii = side / 2 * rng.uniform(0.6, 1.0, count)
    cx, cy = rng.uniform(side / 2, width - side / 2), rng.uniform(side / 2, height - side / 2)
    xs, ys = cx + radii * np.cos(angles), cy + radii * np.sin(angles)
    x1, y1, x2, y2 = xs.min(), ys.min(), xs.max(), ys.max()
    polygon = np.round(np.stack([xs, ys], 1).reshape(-1), 2).tolist()
    return polygon, [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]


def write_dataset(folder, num_images, seed=0):
    """Writes folder/annotations.json and folder/images/ (links); returns the instance count."""
    rng = np.random.default_rng(seed)
    images_dir = os.path.join(folder, "images")
    os.makedirs(images_dir, exist_ok=True)
    jpegs = _write_jpegs(folder, rng)
    sizes = [size for size, _ in IMAGE_SIZES]
    size_index = rng.choice(len(sizes), num_images, p=[p for _, p in IMAGE_SIZES])
    counts = np.minimum(rng.geometric(1 / INSTANCES_PER_IMAGE, num_images) - 1, 60)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height, width = sizes[size_index[image_id - 1]]
        name = f"{image_id:012d}.jpg"
        link = os.path.join(images_dir, name)
        if not os.path.lexists(link):
            os.symlink(jpegs[(height, width)], link)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for _ in range(counts[image_id - 1]):
            polygon, bbox = _polygon(rng, height, width)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.integers(1, 81)), "iscrowd": 0,
                                "bbox": bbox, "area": bbox[2] * bbox[3],
                                "segmentation": [polygon]})
    categories = [{"id": i, "name": f"class{i}"} for i in range(1, 81)]
    with open(os.path.join(folder, "annotations.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return len(annotations)


def _child(mode):
    """Runs this script in a fresh process in `mode` (see child); returns its JSON result."""
    start = time.time()
    output = subprocess.run([sys.executable, __file__, "--child", mode, "--start", repr(start)],
                            check=True, capture_output=True, text=True,
                            env=dict(os.environ, KERAS_BACKEND="tensorflow",
                                     TF_CPP_MIN_LOG_LEVEL="2"))
    return json.loads(output.stdout.strip().splitlines()[-1])


def _input(source, folder):
    from mask_rcnn_tf.config import load_config
    from mask_rcnn_tf.data.inputs import load_split, make_training_input

    import tensorflow as tf

    if source == "shards":
        paths = [f"data.train.tfrecords={folder}/shards/train-*"]
    else:
        paths = [f"data.train.annotations={folder}/annotations.json",
                 f"data.train.images={folder}/images"]
    config = load_config(CONFIG, paths)
    data = load_split(config.data, "train")
    return config, make_training_input(config.data, data, tf.distribute.get_strategy(),
                                       batch_size=config.train.batch_size, seed=0)


def child(args):
    """Modes: "first:SOURCE:FOLDER", "iterate:SOURCE:FOLDER:BATCHES", "step:FOLDER"."""
    mode, *rest = args.child.split(":")
    if mode == "step":
        result = {"step_images_per_s": _step_rate(rest[0])}
    else:
        source, folder = rest[0], rest[1]
        config, dataset = _input(source, folder)
        iterator = iter(dataset)
        next(iterator)
        result = {"first_batch_s": time.time() - args.start}
        if mode == "iterate":
            batches = int(rest[2])
            warm = min(10, batches // 4)
            for _ in range(warm):
                next(iterator)
            tick = time.time()
            for _ in range(batches - warm):
                next(iterator)
            result["images_per_s"] = ((batches - warm) * config.train.batch_size
                                      / (time.time() - tick))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _step_rate(folder, rounds=3):
    """Images/s of R-50-FPN training steps (train_step in a tf.function, after one traced
    step) on one batch of the shards at the COCO config's size."""
    import tensorflow as tf

    from mask_rcnn_tf.training.train import compile_model

    config, dataset = _input("shards", folder)
    batch = next(iter(dataset))
    model = compile_model(config)
    step = tf.function(model.train_step)
    step(batch)
    tick = time.time()
    for _ in range(rounds):
        step(batch)
    return rounds * config.train.batch_size / (time.time() - tick)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="folder for the generated data (required)")
    parser.add_argument("--num-images", type=int, default=COCO_TRAIN_IMAGES)
    parser.add_argument("--small", type=int, default=10000, help="the smaller size for RSS")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--no-step", action="store_true", help="skip the R-50-FPN step timing")
    parser.add_argument("--reuse-shards", action="store_true",
                        help="keep shards an earlier run wrote (make-tfrecords is not timed)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if not args.workdir:
        parser.error("--workdir is required")
    report = {}
    for name, count in (("small", args.small), ("full", args.num_images)):
        folder = os.path.join(args.workdir, name)
        if not os.path.exists(os.path.join(folder, "annotations.json")):
            tick = time.time()
            report[f"{name}_instances"] = write_dataset(folder, count)
            report[f"{name}_generate_s"] = time.time() - tick
        os.makedirs(os.path.join(folder, "shards"), exist_ok=True)
        if args.reuse_shards and glob.glob(os.path.join(folder, "shards", "train*manifest.json")):
            report[f"{name}_shards"] = _child(f"iterate:shards:{folder}:{args.batches}")
            continue
        tick = time.time()
        subprocess.run([sys.executable, "-m", "mask_rcnn_tf.cli", "make-tfrecords",
                        "--annotations", os.path.join(folder, "annotations.json"),
                        "--images", os.path.join(folder, "images"),
                        "--output", os.path.join(folder, "shards", "train"), "--overwrite"],
                       check=True, capture_output=True)
        report[f"{name}_make_tfrecords_s"] = time.time() - tick
        report[f"{name}_shards"] = _child(f"iterate:shards:{folder}:{args.batches}")
    full = os.path.join(args.workdir, "full")
    report["full_json"] = _child(f"first:json:{full}")
    targets = {
        "startup_from_shards_under_30s": report["full_shards"]["first_batch_s"] < 30,
        "rss_full_within_15pct_of_small": report["full_shards"]["peak_rss_mb"]
        <= 1.15 * report["small_shards"]["peak_rss_mb"],
    }
    if not args.no_step:
        report["step"] = _child(f"step:{full}")
        targets["input_at_least_1.5x_step"] = (report["full_shards"]["images_per_s"]
                                               >= 1.5 * report["step"]["step_images_per_s"])
    report["targets"] = targets
    print(json.dumps(report, indent=2))

if __name__ == "__main__":
    sys.exit(main())
