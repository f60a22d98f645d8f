"""Keypoints for Keypoint R-CNN: heatmap targets, heatmap decoding, horizontal flips.

A keypoint is [x, y, v]: x, y in continuous input pixels (pixel i spans [i, i + 1)), v the COCO
visibility (0 unlabelled, 1 labelled but hidden, 2 visible). COCO files store pixel-index
coordinates (pixel i's centre at i); the data pipeline adds 0.5 on reading and results
subtract it on writing, as Detectron2 does.

A heatmap of side S covers its RoI exactly: cell (i, j) spans
[y1 + i h / S, y1 + (i + 1) h / S) x [x1 + j w / S, x1 + (j + 1) w / S), the bins of RoIAlign
and of the mask targets, and positions are flattened row-major: index = i * S + j.

Shapes: B images, M gt rows, R RoIs, N detections, K keypoints, S heatmap side.
"""

import numpy as np
import tensorflow as tf


def _cell(coord, low, high, size):
    """Heatmap cell of `coord` along one axis of [low, high], clipped to [0, size - 1]."""
    cell = tf.floor((coord - low) * tf.math.divide_no_nan(float(size), high - low))
    # The far edge (x == x2, and float rounding just inside it) belongs to the last cell.
    return tf.cast(tf.clip_by_value(cell, 0.0, size - 1.0), tf.int32)


def keypoint_targets(gt_keypoints, rois, matched_gt, heatmap_size):
    """One-hot heatmap targets: the cell of each RoI's heatmap holding its matched keypoint.

    torchvision's keypoints_to_heatmap computes floor((x - x1) * S / w) from COCO pixel-index
    keypoints against boxes in continuous coordinates, so its targets sit half a pixel off
    (Detectron1 has the same mix). Here, as in Detectron2, the keypoints are continuous too
    (COCO x + 0.5), and the same formula then picks the cell whose span contains the point:
        x_map = floor((x - x1) * S / w),  y_map = floor((y - y1) * S / h),
    with a point on the right or bottom edge (x == x2, y == y2) mapped to S - 1, as torchvision
    does. A target is valid when v > 0, the RoI is not empty and x1 <= x <= x2, y1 <= y <= y2.

    Args:
        gt_keypoints: float32 [B, M, K, 3], (x, y, v), x and y continuous input pixels;
            padding rows hold v = 0.
        rois: float32 [B, R, 4], [y1, x1, y2, x2], input pixels.
        matched_gt: int32 [B, R], row of gt_keypoints matched to each RoI, in [0, M).
        heatmap_size: Python int S.

    Returns:
        (target_index int32 [B, R, K] in [0, S * S), y_map * S + x_map, 0 where not valid;
        valid bool [B, R, K]). The caller also masks out RoIs that are not foreground.

    Raises:
        ValueError: heatmap_size is not a positive integer.
    """
    if int(heatmap_size) != heatmap_size or heatmap_size < 1:
        raise ValueError(f"keypoint_targets: heatmap_size must be a positive integer, "
                         f"got {heatmap_size!r}")
    size = int(heatmap_size)
    matched = tf.gather(tf.cast(gt_keypoints, tf.float32), tf.cast(matched_gt, tf.int32),
                        batch_dims=1)
    x, y, visibility = tf.unstack(matched, axis=-1)
    y1, x1, y2, x2 = (side[..., None] for side in tf.unstack(tf.cast(rois, tf.float32), axis=-1))
    inside = (x >= x1) & (x <= x2) & (y >= y1) & (y <= y2) & (x2 > x1) & (y2 > y1)
    valid = inside & (visibility > 0)
    index = _cell(y, y1, y2, size) * size + _cell(x, x1, x2, size)
    return tf.where(valid, index, 0), valid


def _static_heatmap_shape(heatmap_logits, caller):
    size, width, num_keypoints = (heatmap_logits.shape[i] for i in (2, 3, 4))
    if size is None or num_keypoints is None or size != width:
        raise ValueError(f"{caller}: heatmap_logits need a static square S x S and static K, "
                         f"got shape {heatmap_logits.shape}")
    return size, num_keypoints


def flatten_heatmaps(heatmap_logits):
    """Heatmaps with their positions flattened row-major, keypoint axis before them.

    Args:
        heatmap_logits: float [B, N, S, S, K], static S and K.

    Returns:
        float32 [B, N, K, S * S], position i * S + j of keypoint k at [b, n, k, i * S + j].

    Raises:
        ValueError: S or K is not static, or the heatmap is not square.
    """
    size, num_keypoints = _static_heatmap_shape(heatmap_logits, "flatten_heatmaps")
    shape = tf.shape(heatmap_logits)
    logits = tf.transpose(tf.cast(heatmap_logits, tf.float32), [0, 1, 4, 2, 3])
    return tf.reshape(logits, [shape[0], shape[1], num_keypoints, size * size])


def heatmaps_to_keypoints(heatmap_logits, rois):
    """Keypoints at each heatmap's maximum, mapped back into the RoI.

    The maximum cell (i, j) becomes its centre, x = x1 + (j + 0.5) w / S and
    y = y1 + (i + 0.5) h / S, the exact inverse of keypoint_targets (encoding the decoded point
    gives the cell back). torchvision first resizes each heatmap to the RoI's size in pixels
    with bicubic interpolation and takes the maximum there, which resolves positions finer than
    a cell (w / S, under 2 px for RoIs up to 112 px with S = 56) at the cost of a resize per
    RoI; this module keeps the cell centre. The score is the maximum logit, as torchvision
    (Detectron2 reports a softmax probability instead); COCO's OKS ignores it.

    Args:
        heatmap_logits: float [B, N, S, S, K], static S and K.
        rois: float32 [B, N, 4], [y1, x1, y2, x2], input pixels (the detected boxes).

    Returns:
        float32 [B, N, K, 3], (x, y, score), x and y continuous input pixels.

    Raises:
        ValueError: S or K is not static, or the heatmap is not square.
    """
    size, _ = _static_heatmap_shape(heatmap_logits, "heatmaps_to_keypoints")
    flat = flatten_heatmaps(heatmap_logits)
    index = tf.argmax(flat, axis=-1, output_type=tf.int32)
    score = tf.reduce_max(flat, axis=-1)
    y1, x1, y2, x2 = (side[..., None] for side in tf.unstack(tf.cast(rois, tf.float32), axis=-1))
    column = tf.cast(index % size, tf.float32)
    row = tf.cast(index // size, tf.float32)
    x = x1 + (column + 0.5) * (x2 - x1) / size
    y = y1 + (row + 0.5) * (y2 - y1) / size
    return tf.stack([x, y, score], axis=-1)


def flip_keypoints(keypoints, image_width, flip_map):
    """Mirrors keypoints left to right and swaps the left and right keypoints.

    x becomes W - x (continuous coordinates; COCO's pixel-index form would be W - 1 - x) and
    entry k takes the flipped entry flip_map[k], so a left hand becomes a right hand. Entries
    with v = 0 are mirrored too: their coordinates carry no meaning.

    Args:
        keypoints: float32 [..., K, 3], (x, y, v), x and y continuous pixels.
        image_width: float32 scalar W, or a tensor broadcastable against keypoints[..., 0]
            (e.g. [B, 1, 1] for one width per image).
        flip_map: K Python ints, a permutation of 0..K-1 that is its own inverse
            (flip_map[flip_map[k]] == k).

    Returns:
        float32 [..., K, 3].

    Raises:
        ValueError: flip_map is not a self-inverse permutation, or its length is not K.
    """
    flip_map = [int(k) for k in flip_map]
    num_keypoints = len(flip_map)
    if sorted(flip_map) != list(range(num_keypoints)) or any(
            flip_map[k] != j for j, k in enumerate(flip_map)):
        raise ValueError(f"flip_keypoints: flip_map must be a permutation of 0..K-1 that is its "
                         f"own inverse, got {flip_map}")
    keypoints = tf.cast(keypoints, tf.float32)
    if keypoints.shape[-2] is not None and keypoints.shape[-2] != num_keypoints:
        raise ValueError(f"flip_keypoints: flip_map has {num_keypoints} entries but keypoints "
                         f"have K = {keypoints.shape[-2]}")
    x, y, visibility = tf.unstack(tf.gather(keypoints, flip_map, axis=-2), axis=-1)
    return tf.stack([tf.cast(image_width, tf.float32) - x, y, visibility], axis=-1)


# Which of (x, y, score) are coordinates: they are rescaled and shifted, the score is not.
_XY = np.array([1.0, 1.0, 0.0], np.float32)


def keypoints_to_original_frame(keypoints, scales):
    """Moves keypoints from the model's frame to COCO's pixel-index frame of the original image.

    The model gives continuous pixels of the resized input (pixel i spans [i, i + 1)); COCO
    results, evaluation and serving clients put pixel i's centre at i: x / scale - 0.5. Plain
    arithmetic, so the same definition runs on NumPy arrays (evaluation) and tensors (the
    serving graph).

    Args:
        keypoints: float [B, N, Kp, 3] (x, y, score), x and y continuous pixels of the resized
            input.
        scales: float [B], resized size = original size * scale.

    Returns:
        float [B, N, Kp, 3] (x, y, score), x and y pixel indices of the original image; the
        score unchanged.
    """
    divisor = scales[:, None, None, None] * _XY + (1.0 - _XY)
    return keypoints / divisor - 0.5 * _XY
