"""Box arithmetic: areas, pairwise IoU, the box coder, clipping.

Boxes are [y1, x1, y2, x2] float32 pixels in continuous coordinates (pixel i spans [i, i + 1)).
Deltas are (dy, dx, dh, dw), the torchvision BoxCoder parameterisation in y-first order.
"""

import math

import tensorflow as tf

# torchvision's default clamp: no box grows more than 1000/16 times its anchor per side.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def box_area(boxes):
    """Area of each box; sides of inverted boxes count as 0.

    Args:
        boxes: float [..., 4], [y1, x1, y2, x2], pixels.

    Returns:
        float32 [...].
    """
    boxes = tf.cast(boxes, tf.float32)
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    return tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0)


def box_iou(boxes1, boxes2):
    """Pairwise intersection over union; 0 where the union is empty.

    Args:
        boxes1: float [..., N, 4], [y1, x1, y2, x2], pixels.
        boxes2: float [..., M, 4], [y1, x1, y2, x2], pixels; leading dims broadcast with boxes1.

    Returns:
        float32 [..., N, M].
    """
    boxes1 = tf.cast(boxes1, tf.float32)[..., :, None, :]
    boxes2 = tf.cast(boxes2, tf.float32)[..., None, :, :]
    top = tf.maximum(boxes1[..., 0], boxes2[..., 0])
    left = tf.maximum(boxes1[..., 1], boxes2[..., 1])
    bottom = tf.minimum(boxes1[..., 2], boxes2[..., 2])
    right = tf.minimum(boxes1[..., 3], boxes2[..., 3])
    intersection = tf.maximum(bottom - top, 0.0) * tf.maximum(right - left, 0.0)
    union = box_area(boxes1) + box_area(boxes2) - intersection
    return tf.math.divide_no_nan(intersection, union)


def _centres_and_sizes(boxes):
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    height = y2 - y1
    width = x2 - x1
    return y1 + 0.5 * height, x1 + 0.5 * width, height, width


def encode_boxes(boxes, anchors, weights):
    """Regression targets that move each anchor onto its box (torchvision BoxCoder.encode).

    dy = wy (cy_box - cy_anchor) / h_anchor, dh = wh log(h_box / h_anchor); same for x, w.

    Args:
        boxes: float [..., 4], [y1, x1, y2, x2], pixels; the targets.
        anchors: float [..., 4], [y1, x1, y2, x2], pixels; same shape as boxes, positive sizes.
        weights: 4 Python floats (wy, wx, wh, ww).

    Returns:
        float32 [..., 4] deltas (dy, dx, dh, dw).
    """
    wy, wx, wh, ww = weights
    cy, cx, h, w = _centres_and_sizes(tf.cast(boxes, tf.float32))
    cy_a, cx_a, h_a, w_a = _centres_and_sizes(tf.cast(anchors, tf.float32))
    return tf.stack([
        wy * (cy - cy_a) / h_a,
        wx * (cx - cx_a) / w_a,
        wh * tf.math.log(h / h_a),
        ww * tf.math.log(w / w_a),
    ], axis=-1)


def decode_boxes(deltas, anchors, weights, scale_clamp=DEFAULT_SCALE_CLAMP):
    """Apply deltas to anchors (torchvision BoxCoder.decode), the inverse of encode_boxes.

    dh / wh and dw / ww are clamped at scale_clamp before exp so that an untrained head
    cannot produce infinite boxes.

    Args:
        deltas: float [..., 4] (dy, dx, dh, dw).
        anchors: float [..., 4], [y1, x1, y2, x2], pixels; broadcastable with deltas.
        weights: 4 Python floats (wy, wx, wh, ww).
        scale_clamp: Python float, upper bound of the unweighted log-scale deltas.

    Returns:
        float32 [..., 4], [y1, x1, y2, x2], pixels.
    """
    wy, wx, wh, ww = weights
    dy, dx, dh, dw = tf.unstack(tf.cast(deltas, tf.float32), axis=-1)
    cy_a, cx_a, h_a, w_a = _centres_and_sizes(tf.cast(anchors, tf.float32))
    cy = dy / wy * h_a + cy_a
    cx = dx / wx * w_a + cx_a
    half_h = 0.5 * tf.exp(tf.minimum(dh / wh, scale_clamp)) * h_a
    half_w = 0.5 * tf.exp(tf.minimum(dw / ww, scale_clamp)) * w_a
    return tf.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=-1)


def clip_boxes(boxes, image_size):
    """Clip boxes to their image: y into [0, h], x into [0, w].

    Args:
        boxes: float [B, ..., 4], [y1, x1, y2, x2], pixels; any number of middle dims.
        image_size: int or float [B, 2], (h, w) of each image.

    Returns:
        float32 [B, ..., 4].

    Raises:
        ValueError: image_size is not of rank 2.
    """
    image_size = tf.convert_to_tensor(image_size)
    if image_size.shape.rank != 2:
        raise ValueError(f"clip_boxes: image_size must be [B, 2], got shape {image_size.shape}")
    boxes = tf.cast(boxes, tf.float32)
    limits = tf.tile(tf.cast(image_size, tf.float32), [1, 2])
    middle_ones = tf.ones([tf.rank(boxes) - 2], tf.int32)
    limits = tf.reshape(limits, tf.concat([tf.shape(limits)[:1], middle_ones, [4]], axis=0))
    return tf.minimum(tf.maximum(boxes, 0.0), limits)
