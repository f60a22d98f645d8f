"""The Mask R-CNN losses (five, six with the keypoint branch), from the model's training outputs.

Shapes: B images, S sampled anchors or RoIs per image, K classes including background,
F foreground slots for the mask branch, P mask size.
Every normaliser is a count over the whole batch (torchvision's convention), floored at one so
an image without objects gives a zero loss instead of a division by zero.
"""

import tensorflow as tf

from mask_rcnn_tf.ops.keypoint_ops import flatten_heatmaps


def smooth_l1(diff, beta):
    """Elementwise smooth L1 (Huber with the 1/beta slope switch of Fast R-CNN)."""
    absolute = tf.abs(diff)
    if beta < 1e-5:
        return absolute
    return tf.where(absolute < beta, 0.5 * tf.square(absolute) / beta, absolute - 0.5 * beta)


def _count(mask):
    return tf.maximum(tf.reduce_sum(tf.cast(mask, tf.float32)), 1.0)


def rpn_objectness_loss(logits, labels, valid):
    """Binary cross-entropy over sampled anchors.

    Args: logits float32 [B, S]; labels float32 [B, S] (1 object, 0 background); valid bool [B, S].
    """
    loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_sum(tf.where(valid, loss, 0.0)) / _count(valid)


def rpn_box_loss(deltas, targets, labels, valid, beta):
    """Smooth L1 on positive anchors, normalised by the number of sampled anchors.

    Args: deltas, targets float32 [B, S, 4]; labels float32 [B, S]; valid bool [B, S].
    """
    loss = tf.reduce_sum(smooth_l1(deltas - targets, beta), axis=-1) * labels
    return tf.reduce_sum(tf.where(valid, loss, 0.0)) / _count(valid)


def box_class_loss(class_logits, classes, valid):
    """Softmax cross-entropy over sampled RoIs.

    Args: class_logits float32 [B, S, K]; classes int32 [B, S] (0 background); valid bool [B, S].
    """
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=classes, logits=class_logits)
    return tf.reduce_sum(tf.where(valid, loss, 0.0)) / _count(valid)


def box_regression_loss(box_deltas, classes, targets, is_foreground, valid, beta):
    """Smooth L1 on the deltas of each foreground RoI's own class, over the sampled count.

    Args: box_deltas float32 [B, S, K, 4]; classes int32 [B, S]; targets float32 [B, S, 4];
        is_foreground, valid bool [B, S].
    """
    class_deltas = tf.gather(box_deltas, classes, batch_dims=2)
    loss = tf.reduce_sum(smooth_l1(class_deltas - targets, beta), axis=-1)
    return tf.reduce_sum(tf.where(is_foreground, loss, 0.0)) / _count(valid)


def mask_loss(mask_logits, classes, targets, is_foreground):
    """Mean per-pixel binary cross-entropy on the ground-truth class channel of foreground RoIs.

    Args: mask_logits float32 [B, F, P, P, K]; classes int32 [B, F]; targets float32 [B, F, P, P]
        in [0, 1] (binary, or soft with roi_heads.mask_target_threshold null); is_foreground bool [B, F].
    """
    logits = tf.gather(tf.transpose(mask_logits, [0, 1, 4, 2, 3]), classes, batch_dims=2)
    loss = tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits), axis=[2, 3])
    return tf.reduce_sum(tf.where(is_foreground, loss, 0.0)) / _count(is_foreground)


def keypoint_loss(heatmap_logits, target_index, valid):
    """Softmax cross-entropy over the S * S positions of each valid keypoint, averaged over them.

    As torchvision: every valid (RoI, keypoint) pair of the batch counts once.

    Args:
        heatmap_logits: float [B, R, S, S, Kp], static S and Kp.
        target_index: int32 [B, R, Kp], flat target position i * S + j in [0, S * S)
            (ops.keypoint_ops.keypoint_targets).
        valid: bool [B, R, Kp], labelled keypoints inside foreground RoIs.
    """
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(target_index, tf.int32), logits=flatten_heatmaps(heatmap_logits))
    return tf.reduce_sum(tf.where(valid, loss, 0.0)) / _count(valid)
