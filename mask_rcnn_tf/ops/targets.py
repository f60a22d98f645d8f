"""Training targets: anchor labels for the RPN, sampled RoIs with class/box/mask targets.

Shapes: B images, M padded ground-truth instances, N anchors, R proposals, S sampled per image.
"""

import tensorflow as tf

from mask_rcnn_tf.ops import box_ops, matcher, sampling


def _foreground_targets(is_foreground, deltas):
    """Zeroes the deltas of non-foreground samples: those may point at an all-zero padding box,
    whose encoding is infinite (log 0), and an infinity times a zero mask is NaN."""
    return tf.where(is_foreground[..., None], deltas, 0.0)


def visible_anchors(anchors, image_sizes, straddle_thresh):
    """Which anchors lie inside each image's valid area, up to straddle_thresh pixels.

    The "visibility" rule of Detectron's and maskrcnn-benchmark's RPN (RPN.STRADDLE_THRESH,
    maskrcnn_benchmark/modeling/rpn/loss.py: anchors straddling the image boundary by more
    than the threshold are ignored in training), here against the unpadded image, so that no
    anchor in the batch's padding is sampled as a negative. Continuous pixel coordinates: an
    anchor ending exactly on the image's edge is inside.

    Args:
        anchors: float32 [N, 4], [y1, x1, y2, x2], input pixels.
        image_sizes: float32 [B, 2], (h, w) of each image inside the padded input.
        straddle_thresh: Python float >= 0.

    Returns:
        bool [B, N].
    """
    y1, x1, y2, x2 = [c[None] for c in tf.unstack(anchors, axis=-1)]
    height, width = image_sizes[:, 0:1], image_sizes[:, 1:2]
    return ((y1 >= -straddle_thresh) & (x1 >= -straddle_thresh)
            & (y2 <= height + straddle_thresh) & (x2 <= width + straddle_thresh))


def rpn_targets(anchors, gt_boxes, gt_valid, image_sizes=None, *, fg_iou_threshold,
                bg_iou_threshold, num_samples, positive_fraction, box_weights,
                straddle_thresh=None, seed=None):
    """Labels and samples anchors for the RPN losses.

    Args:
        anchors: float32 [N, 4], [y1, x1, y2, x2], input pixels (all levels concatenated).
        gt_boxes: float32 [B, M, 4], [y1, x1, y2, x2], input pixels.
        gt_valid: bool [B, M], False on padding rows.
        image_sizes: float32 [B, 2], (h, w) of each image inside the padded input; needed
            with straddle_thresh.
        straddle_thresh: None (every anchor is labelled, as in torchvision) or a Python
            float: anchors reaching further past the image are ignored (visible_anchors).

    Returns:
        dict with `indices` int32 [B, S] (sampled anchors), `labels` float32 [B, S] (1 object,
        0 background), `valid` bool [B, S] (False on padding of the sample), and
        `box_targets` float32 [B, S, 4] (dy, dx, dh, dw) toward each sample's matched box.
    """
    batch = tf.shape(gt_boxes)[0]
    batched_anchors = tf.broadcast_to(anchors[None], [batch, tf.shape(anchors)[0], 4])
    iou = box_ops.box_iou(gt_boxes, batched_anchors)
    visible = None
    if straddle_thresh is not None:
        # Invisible anchors are matched to nothing, so a ground truth at the image's edge
        # claims its best visible anchor (maskrcnn-benchmark matches first and then drops the
        # invisible ones, which can leave such an object without a positive).
        visible = visible_anchors(anchors, image_sizes, straddle_thresh)
    matched_gt, labels = matcher.match_boxes(
        iou, gt_valid, fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches=True,
        candidate_valid=visible)
    indices, valid = sampling.sample_balanced(labels, num_samples, positive_fraction, seed=seed)
    sampled_labels = tf.gather(labels, indices, batch_dims=1)
    sampled_gt = tf.gather(gt_boxes, tf.gather(matched_gt, indices, batch_dims=1), batch_dims=1)
    positive = tf.equal(sampled_labels, 1) & valid
    box_targets = _foreground_targets(
        positive, box_ops.encode_boxes(sampled_gt, tf.gather(anchors, indices), box_weights))
    return {
        "indices": indices,
        "labels": tf.cast(positive, tf.float32),
        "valid": valid,
        "box_targets": box_targets,
    }


def sample_rois(proposals, proposal_valid, gt_boxes, gt_classes, gt_valid, *, fg_iou_threshold,
                bg_iou_threshold, num_samples, positive_fraction, add_gt_as_proposals,
                box_weights, seed=None):
    """Matches proposals to ground truth and samples the RoIs the second stage trains on.

    Foreground samples come first in every image (the sampler's order), so the first
    `int(num_samples * positive_fraction)` rows hold every foreground RoI; the mask branch
    uses only those.

    Args:
        proposals: float32 [B, R, 4], [y1, x1, y2, x2], input pixels.
        proposal_valid: bool [B, R].
        gt_boxes: float32 [B, M, 4]; gt_classes: int32 [B, M] (1..K, -1 padding); gt_valid: bool [B, M].

    Returns:
        dict with `rois` float32 [B, S, 4], `valid` bool [B, S], `classes` int32 [B, S]
        (0 background), `is_foreground` bool [B, S], `matched_gt` int32 [B, S] and
        `box_targets` float32 [B, S, 4] (class-agnostic deltas toward the matched box).
    """
    proposals = tf.stop_gradient(proposals)
    if add_gt_as_proposals:
        proposals = tf.concat([proposals, gt_boxes], axis=1)
        proposal_valid = tf.concat([proposal_valid, gt_valid], axis=1)
    iou = box_ops.box_iou(gt_boxes, proposals)
    matched_gt, labels = matcher.match_boxes(
        iou, gt_valid, fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches=False,
        candidate_valid=proposal_valid)
    indices, valid = sampling.sample_balanced(labels, num_samples, positive_fraction, seed=seed)
    rois = tf.gather(proposals, indices, batch_dims=1)
    roi_matched = tf.gather(matched_gt, indices, batch_dims=1)
    is_foreground = tf.equal(tf.gather(labels, indices, batch_dims=1), 1) & valid
    matched_classes = tf.gather(gt_classes, roi_matched, batch_dims=1)
    classes = tf.where(is_foreground, matched_classes, 0)
    matched_boxes = tf.gather(gt_boxes, roi_matched, batch_dims=1)
    return {
        "rois": rois,
        "valid": valid,
        "classes": classes,
        "is_foreground": is_foreground,
        "matched_gt": roi_matched,
        "box_targets": _foreground_targets(
            is_foreground, box_ops.encode_boxes(matched_boxes, rois, box_weights)),
    }
