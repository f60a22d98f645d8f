"""RoIAlign's image gradient: ours (ops/roi_align.py) against TensorFlow's CPU kernel.

    python benchmarks/roi_align_gradient.py

TensorFlow's CropAndResizeGradImage shards the boxes over threads that add into one image
gradient without synchronization; ours sums the four bilinear neighbours of every sample with
segment sums. For each case (the crops the RoIAlign layers take in one training step) this
prints the median time of both over --rounds runs, alternating, and each one's largest error
against a float64 NumPy reference, relative to the reference's largest value.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from mask_rcnn_tf.ops import roi_align  # noqa: E402

# (name, images K, map side H = W, channels C, boxes R, crop side n): a P2 map with its padding.
CASES = [
    ("shapes box head, 8 x 128 px", 8, 34, 64, 512, 14),
    ("shapes mask head, 8 x 128 px", 8, 34, 64, 128, 28),
    ("R-50 box head, 2 x 512 px", 2, 130, 256, 1024, 14),
    ("R-50 mask head, 2 x 512 px", 2, 130, 256, 256, 28),
]


def _neighbours(start, end, count, size):
    """Per box and sample along one axis: (low, high) pixels and their bilinear weights."""
    position = start[:, None] * (size - 1) + (
        np.arange(count) * (end - start)[:, None] * (size - 1) / (count - 1))
    inside = (position >= 0) & (position <= size - 1)
    low = np.floor(position)
    weights = (np.where(inside, 1 - (position - low), 0), np.where(inside, position - low, 0))
    indices = (np.clip(low, 0, size - 1).astype(int),
               np.clip(np.ceil(position), 0, size - 1).astype(int))
    return indices, weights


def numpy_gradient(upstream, boxes, box_indices, image_shape):
    """The definition: each crop sample adds its gradient to its four bilinear neighbours."""
    batch, height, width, channels = image_shape
    out = np.zeros((batch * height * width, channels))
    y_indices, y_weights = _neighbours(boxes[:, 0], boxes[:, 2], upstream.shape[1], height)
    x_indices, x_weights = _neighbours(boxes[:, 1], boxes[:, 3], upstream.shape[2], width)
    for y_index, y_weight in zip(y_indices, y_weights):
        for x_index, x_weight in zip(x_indices, x_weights):
            pixel = ((box_indices[:, None, None] * height + y_index[:, :, None]) * width
                     + x_index[:, None, :])
            weight = y_weight[:, :, None, None] * x_weight[:, None, :, None]
            np.add.at(out, pixel.reshape(-1), (weight * upstream).reshape(-1, channels))
    return out.reshape(image_shape)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print("| case | ours ms | TF kernel ms | ours error | TF kernel error |")
    print("|---|---|---|---|---|")
    for name, batch, side, channels, num_boxes, crop in CASES:
        corner = rng.uniform(-0.1, 0.9, (num_boxes, 2))
        size = rng.uniform(0.02, 0.4, (num_boxes, 2))
        boxes = np.concatenate([corner, corner + size], axis=1).astype(np.float32)
        box_indices = rng.integers(0, batch, num_boxes).astype(np.int32)
        upstream = rng.standard_normal((num_boxes, crop, crop, channels)).astype(np.float32)
        shape = (batch, side, side, channels)
        inputs = [tf.constant(v) for v in (upstream, boxes, box_indices, shape)]
        functions = {
            "ours": tf.function(lambda g, b, i, s: roi_align._crop_and_resize_image_gradient(
                g, b, i, s)),
            "tf": tf.function(lambda g, b, i, s: tf.raw_ops.CropAndResizeGradImage(
                grads=g, boxes=b, box_ind=i, image_size=s, T=tf.float32)),
        }
        want = numpy_gradient(upstream.astype(np.float64), boxes.astype(np.float64),
                              box_indices, shape)
        errors = {key: np.abs(fn(*inputs).numpy() - want).max() / np.abs(want).max()
                  for key, fn in functions.items()}
        times = {key: [] for key in functions}
        for _ in range(args.rounds):
            for key, fn in functions.items():
                start = time.perf_counter()
                fn(*inputs).numpy()
                times[key].append(time.perf_counter() - start)
        median = {key: 1e3 * statistics.median(values) for key, values in times.items()}
        print(f"| {name} ({num_boxes} boxes, {crop}x{crop}, {channels} ch) | {median['ours']:.1f} "
              f"| {median['tf']:.1f} | {errors['ours']:.1e} | {errors['tf']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
