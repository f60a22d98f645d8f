"""Anchor boxes per FPN level, laid out exactly as torchvision's AnchorGenerator lays them out.

The order (position-major: row y, then column x; aspect ratio minor) and the rounding of the
base anchors match torchvision, so converted RPN head weights line up with these anchors.
The base anchors depend only on the config (NumPy constants); the grid of cell centres is
computed in the graph from each feature map's run-time size, so one traced graph serves every
input size.
"""

import numpy as np
import tensorflow as tf

# Level strides: "fixed" puts level l's cells 2**l input pixels apart; "torchvision" follows
# torchvision's AnchorGenerator, stride = padded input side // cells of the level, per axis
# (e.g. 800 // 13 = 61 on P6 of an 800-pixel side, not 64).
STRIDE_RULES = ("fixed", "torchvision")


def _base_anchors(size, aspect_ratios):
    # float32 like torchvision, so round-half-to-even sees the same values it does.
    ratios = np.asarray(aspect_ratios, np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1.0) / h_ratios
    hs = h_ratios * np.float32(size)
    ws = w_ratios * np.float32(size)
    return np.round(np.stack([-hs, -ws, hs, ws], axis=1) / np.float32(2.0))


def _stride_pair(stride):
    return tuple(stride) if isinstance(stride, (tuple, list)) else (stride, stride)


def generate_anchors(feature_sizes, strides, sizes, aspect_ratios, offset=0.0):
    """Anchors for every level, torchvision order and rounding.

    Args:
        feature_sizes: list of (h, w), the feature map size of each level: Python ints or
            int32 scalar tensors (run-time sizes).
        strides: list, the stride of each level in input pixels: a Python number, or a pair
            (stride_y, stride_x) of Python numbers or int32 scalar tensors.
        sizes: list of Python numbers, the anchor size (sqrt of area) of each level.
        aspect_ratios: sequence of Python floats, height / width.
        offset: Python float; the centre of cell (i, j) is ((i + offset) * stride_y,
            (j + offset) * stride_x). torchvision uses 0.

    Returns:
        List (one per level) of float32 [h * w * A, 4], [y1, x1, y2, x2], input pixels,
        A = len(aspect_ratios); row = (i * w + j) * A + a.

    Raises:
        ValueError: the three per-level lists differ in length, or a size or a Python stride
            is not positive.
    """
    if not len(feature_sizes) == len(strides) == len(sizes):
        raise ValueError(
            f"generate_anchors: feature_sizes ({len(feature_sizes)}), strides ({len(strides)}) "
            f"and sizes ({len(sizes)}) need one entry per level")
    if not aspect_ratios or min(aspect_ratios) <= 0:
        raise ValueError(f"generate_anchors: aspect_ratios must be positive, got {aspect_ratios}")
    anchors = []
    for (height, width), stride, size in zip(feature_sizes, strides, sizes):
        stride_y, stride_x = _stride_pair(stride)
        static = [s for s in (stride_y, stride_x) if not isinstance(s, tf.Tensor)]
        if size <= 0 or any(s <= 0 for s in static):
            raise ValueError(f"generate_anchors: stride {stride} and size {size} must be positive")
        base = tf.constant(_base_anchors(size, aspect_ratios), tf.float32)
        # (index + offset) * stride in float32, the NumPy and torchvision order of operations.
        shift_y = (tf.cast(tf.range(height), tf.float32) + np.float32(offset)) * tf.cast(
            stride_y, tf.float32)
        shift_x = (tf.cast(tf.range(width), tf.float32) + np.float32(offset)) * tf.cast(
            stride_x, tf.float32)
        shift_y, shift_x = tf.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = tf.reshape(tf.stack([shift_y, shift_x, shift_y, shift_x], axis=-1), [-1, 1, 4])
        anchors.append(tf.reshape(shifts + base[None], [-1, 4]))
    return anchors


def level_strides(image_size, feature_sizes, min_level, rule="fixed"):
    """The stride of each level under `rule` (see STRIDE_RULES).

    Args:
        image_size: int32 [2], (H, W) of the padded input.
        feature_sizes: list of int32 [2], (h, w) of each level's feature map.
        min_level: Python int, the level of feature_sizes[0] (2 for P2).
        rule: "fixed" or "torchvision".

    Returns:
        list of strides as generate_anchors takes them: Python ints ("fixed") or
        (stride_y, stride_x) int32 scalar tensors ("torchvision").
    """
    if rule == "fixed":
        return [2 ** (min_level + i) for i in range(len(feature_sizes))]
    if rule == "torchvision":
        return [(image_size[0] // size[0], image_size[1] // size[1]) for size in feature_sizes]
    raise ValueError(f"level_strides: rule must be one of {', '.join(STRIDE_RULES)}, got {rule!r}")
