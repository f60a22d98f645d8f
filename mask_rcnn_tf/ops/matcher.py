"""Assign each candidate box (anchor or RoI) to a ground-truth box: torchvision's Matcher, batched.

Shapes: B images, M ground-truth rows (padded; invalid rows flagged), N candidates.
"""

import tensorflow as tf

# Below every real IoU, so padding rows never win an argmax or a per-gt maximum.
_INVALID_IOU = -1.0


def match_boxes(iou, gt_valid, high_threshold, low_threshold, allow_low_quality_matches,
                candidate_valid=None):
    """Label candidates foreground / background / ignored from their IoU with ground truth.

    A candidate's best IoU over valid gt rows gives its label: 1 if >= high_threshold, 0 if
    < low_threshold, -1 in between. With allow_low_quality_matches, every candidate that attains
    some valid gt's maximum IoU over all candidates (ties included, maximum > 0) is labelled 1
    as well, and keeps its own best gt as matched_gt, as torchvision does. The "> 0" condition
    departs from torchvision, which would hand a gt that overlaps nothing every candidate.
    An image without valid gt rows gets label 0 everywhere. Invalid candidates (anchors
    outside the image, padding proposals) get label -1 and are never a gt's best candidate, so
    a gt at the image's edge claims its best valid one.

    Args:
        iou: float32 [B, M, N], IoU of gt row m with candidate n.
        gt_valid: bool [B, M], False for padding rows, which never match.
        high_threshold: Python float, foreground IoU threshold.
        low_threshold: Python float, background IoU threshold (<= high_threshold).
        allow_low_quality_matches: Python bool, let each gt claim its best candidates.
        candidate_valid: bool [B, N], or None for all valid.

    Returns:
        matched_gt: int32 [B, N], index of the best valid gt row (0 if the image has none or
            the candidate is invalid).
        labels: int32 [B, N], 1 foreground, 0 background, -1 ignored or invalid.

    Raises:
        ValueError: low_threshold > high_threshold.
    """
    if low_threshold > high_threshold:
        raise ValueError(
            f"match_boxes: low_threshold {low_threshold} > high_threshold {high_threshold}")
    iou = tf.cast(iou, tf.float32)
    if candidate_valid is not None:
        candidate_valid = tf.cast(candidate_valid, tf.bool)
    if iou.shape[1] == 0:
        zeros = tf.zeros(tf.stack([tf.shape(iou)[0], tf.shape(iou)[2]]), tf.int32)
        return zeros, _ignore_invalid(zeros, candidate_valid)
    gt_valid = tf.cast(gt_valid, tf.bool)
    valid = gt_valid[:, :, None]
    if candidate_valid is not None:
        valid &= candidate_valid[:, None, :]
    # One pass over the [B, M, N] matrix masks both kinds of invalid entry.
    iou = tf.where(valid, iou, _INVALID_IOU)
    # argmax returns the first maximum, so invalid images (all rows -1) get index 0.
    matched_gt = tf.argmax(iou, axis=1, output_type=tf.int32)
    best_iou = tf.reduce_max(iou, axis=1)
    labels = tf.where(best_iou >= high_threshold, 1, tf.where(best_iou < low_threshold, 0, -1))
    if allow_low_quality_matches:
        best_per_gt = tf.reduce_max(iou, axis=2, keepdims=True)
        claims = (iou == best_per_gt) & (best_per_gt > 0.0) & gt_valid[:, :, None]
        labels = tf.where(tf.reduce_any(claims, axis=1), 1, labels)
    return matched_gt, _ignore_invalid(tf.cast(labels, tf.int32), candidate_valid)


def _ignore_invalid(labels, candidate_valid):
    return labels if candidate_valid is None else tf.where(candidate_valid, labels, -1)
