"""Non-maximum suppression with static output shapes: class-agnostic and per class.

Both suppress a box when its IoU with a higher-scoring kept box is > iou_threshold and drop
scores <= score_threshold, as torchvision does. Shapes: B images, N boxes, K foreground classes,
D = max_detections.
"""

import tensorflow as tf


def nms_padded(boxes, scores, max_output_size, iou_threshold, score_threshold=float("-inf")):
    """Greedy NMS per image, padded to max_output_size.

    Runs NonMaxSuppressionV4 (the exact greedy kernel) per image: the batched
    tf.image.non_max_suppression_padded cannot keep a box whose coordinates are all <= 0.

    Args:
        boxes: float [B, N, 4], [y1, x1, y2, x2], pixels.
        scores: float [B, N].
        max_output_size: Python int, kept boxes per image at most.
        iou_threshold: Python float.
        score_threshold: Python float; only scores > score_threshold are kept.

    Returns:
        indices: int32 [B, max_output_size] into N, kept boxes by descending score, then 0.
        valid: bool [B, max_output_size], False for padding.
    """
    def one_image(args):
        image_boxes, image_scores = args
        indices, num_valid = tf.raw_ops.NonMaxSuppressionV4(
            boxes=image_boxes, scores=image_scores, max_output_size=max_output_size,
            iou_threshold=iou_threshold, score_threshold=score_threshold,
            pad_to_max_output_size=True)
        return indices, num_valid

    indices, num_valid = tf.map_fn(
        one_image, (tf.cast(boxes, tf.float32), tf.cast(scores, tf.float32)),
        fn_output_signature=(tf.TensorSpec([max_output_size], tf.int32),
                             tf.TensorSpec([], tf.int32)))
    valid = tf.range(max_output_size)[None, :] < num_valid[:, None]
    return tf.where(valid, indices, 0), valid


def per_class_nms(boxes, scores, max_detections, iou_threshold, score_threshold):
    """Final detections: NMS per class, then the top max_detections over all classes.

    Keeps (box, class) pairs with score > score_threshold, suppresses within each class
    independently, and returns the best max_detections pairs by score (torchvision's
    postprocess_detections without its small-box filter). Padding rows have box 0, score 0
    and class -1, like padded ground truth.

    Args:
        boxes: float32 [B, N, K, 4], [y1, x1, y2, x2], pixels; one box per foreground class.
        scores: float [B, N, K], per-class probabilities (background column removed).
        max_detections: Python int D.
        iou_threshold: Python float.
        score_threshold: Python float.

    Returns:
        dict with `boxes` float32 [B, D, 4] ([y1, x1, y2, x2], pixels), `scores` float32 [B, D]
        (descending), `classes` int32 [B, D] (0-based foreground index, -1 for padding) and
        `num_detections` int32 [B].
    """
    boxes = tf.cast(boxes, tf.float32)
    # Every class may keep all N boxes; the op rejects 0 when an image has no candidates.
    num_candidates = tf.maximum(tf.shape(boxes)[1], 1)
    nmsed_boxes, nmsed_scores, nmsed_classes, num_detections = (
        tf.image.combined_non_max_suppression(
            boxes, tf.cast(scores, tf.float32), max_output_size_per_class=num_candidates,
            max_total_size=max_detections, iou_threshold=iou_threshold,
            score_threshold=score_threshold, pad_per_class=False, clip_boxes=False))
    valid = tf.range(max_detections)[None, :] < num_detections[:, None]
    return {
        "boxes": tf.where(valid[..., None], nmsed_boxes, 0.0),
        "scores": tf.where(valid, nmsed_scores, 0.0),
        "classes": tf.where(valid, tf.cast(nmsed_classes, tf.int32), -1),
        "num_detections": tf.cast(num_detections, tf.int32),
    }
