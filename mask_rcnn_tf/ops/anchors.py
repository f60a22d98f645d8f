"""Anchor boxes per FPN level, laid out exactly as torchvision's AnchorGenerator lays them out.

The order (position-major: row y, then column x; aspect ratio minor) and the rounding of the
base anchors match torchvision, so converted RPN head weights line up with these anchors.
Sizes are static, so anchors are computed with NumPy at trace time and embedded as constants.
"""

import numpy as np
import tensorflow as tf


def _base_anchors(size, aspect_ratios):
    # float32 like torchvision, so round-half-to-even sees the same values it does.
    ratios = np.asarray(aspect_ratios, np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1.0) / h_ratios
    hs = h_ratios * np.float32(size)
    ws = w_ratios * np.float32(size)
    return np.round(np.stack([-hs, -ws, hs, ws], axis=1) / np.float32(2.0))


def generate_anchors(feature_sizes, strides, sizes, aspect_ratios, offset=0.0):
    """Anchors for every level, torchvision order and rounding.

    Args:
        feature_sizes: list of (h, w) Python ints, the feature map size of each level.
        strides: list of Python ints, the stride of each level in input pixels.
        sizes: list of Python numbers, the anchor size (sqrt of area) of each level.
        aspect_ratios: sequence of Python floats, height / width.
        offset: Python float; the centre of cell (i, j) is ((i + offset) * stride,
            (j + offset) * stride). torchvision uses 0.

    Returns:
        List (one per level) of float32 [h * w * A, 4], [y1, x1, y2, x2], input pixels,
        A = len(aspect_ratios); row = (i * w + j) * A + a.

    Raises:
        ValueError: the three per-level lists differ in length, or a size or stride is not positive.
    """
    if not len(feature_sizes) == len(strides) == len(sizes):
        raise ValueError(
            f"generate_anchors: feature_sizes ({len(feature_sizes)}), strides ({len(strides)}) "
            f"and sizes ({len(sizes)}) need one entry per level")
    if not aspect_ratios or min(aspect_ratios) <= 0:
        raise ValueError(f"generate_anchors: aspect_ratios must be positive, got {aspect_ratios}")
    anchors = []
    for (height, width), stride, size in zip(feature_sizes, strides, sizes):
        if stride <= 0 or size <= 0:
            raise ValueError(f"generate_anchors: stride {stride} and size {size} must be positive")
        base = _base_anchors(size, aspect_ratios)
        shift_y = (np.arange(height, dtype=np.float32) + np.float32(offset)) * np.float32(stride)
        shift_x = (np.arange(width, dtype=np.float32) + np.float32(offset)) * np.float32(stride)
        shift_y, shift_x = np.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = np.stack([shift_y, shift_x, shift_y, shift_x], axis=-1).reshape(-1, 1, 4)
        level = (shifts + base[None]).reshape(-1, 4).astype(np.float32)
        anchors.append(tf.constant(level))
    return anchors
