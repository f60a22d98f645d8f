"""The Keypoint R-CNN loss (to join modeling/losses.py).

Shapes: B images, R RoIs per image, K keypoints, S heatmap side.
"""

import tensorflow as tf

from mask_rcnn_tf.ops.keypoint_ops import flatten_heatmaps


def keypoint_loss(heatmap_logits, target_index, valid):
    """Softmax cross-entropy over the S * S positions of each valid keypoint, averaged over them.

    As torchvision: every valid (RoI, keypoint) pair of the batch counts once, and the sum is
    divided by their number (floored at one, so a batch without any gives zero).

    Args:
        heatmap_logits: float [B, R, S, S, K], static S and K.
        target_index: int32 [B, R, K], flat target position i * S + j in [0, S * S)
            (keypoint_targets).
        valid: bool [B, R, K], visible keypoints inside foreground RoIs.

    Returns:
        float32 scalar.
    """
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(target_index, tf.int32), logits=flatten_heatmaps(heatmap_logits))
    count = tf.maximum(tf.reduce_sum(tf.cast(valid, tf.float32)), 1.0)
    return tf.reduce_sum(tf.where(valid, loss, 0.0)) / count
