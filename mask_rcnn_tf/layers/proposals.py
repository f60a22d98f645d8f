"""Proposal generation: RPN outputs -> a fixed number of scored boxes per image.

Shapes: B images, L levels, Nl anchors at level l, R proposals kept per image:
min(post_nms_top_n, L * pre_nms_top_n), whatever the input size.
"""

import keras
import tensorflow as tf

from mask_rcnn_tf.ops import box_ops, nms

# Objectness probabilities lie in [0, 1]; boxes removed for being too small get a score below
# this, so NMS drops them without a second mask.
_REMOVED_SCORE = -1.0


@keras.saving.register_keras_serializable(package="mask_rcnn_tf")
class ProposalGenerator(keras.layers.Layer):
    """Per level top-k by objectness, decode, clip, drop tiny boxes, NMS; then top-R per image.

    NMS runs independently per level, as torchvision does (boxes of different levels do not
    suppress each other).
    """

    def __init__(self, pre_nms_top_n_train, pre_nms_top_n_test, post_nms_top_n_train,
                 post_nms_top_n_test, nms_threshold, min_size, box_weights, **kwargs):
        super().__init__(**kwargs)
        self.pre_nms_top_n_train = pre_nms_top_n_train
        self.pre_nms_top_n_test = pre_nms_top_n_test
        self.post_nms_top_n_train = post_nms_top_n_train
        self.post_nms_top_n_test = post_nms_top_n_test
        self.nms_threshold = nms_threshold
        self.min_size = min_size
        self.box_weights = tuple(box_weights)

    def call(self, logits, deltas, anchors, image_sizes, training=False):
        """Generates proposals.

        Args:
            logits: list per level of float32 [B, Nl] objectness logits.
            deltas: list per level of float32 [B, Nl, 4] (dy, dx, dh, dw).
            anchors: list per level of float32 [Nl, 4], [y1, x1, y2, x2], input pixels.
            image_sizes: float32 [B, 2] (h, w) of each image inside the padded input.

        Returns:
            boxes float32 [B, R, 4] ([y1, x1, y2, x2], input pixels, no gradient),
            scores float32 [B, R] (objectness probability), valid bool [B, R].
        """
        pre_n = self.pre_nms_top_n_train if training else self.pre_nms_top_n_test
        post_n = self.post_nms_top_n_train if training else self.post_nms_top_n_test
        level_boxes, level_scores, level_valid = [], [], []
        for level_logits, level_deltas, level_anchors in zip(logits, deltas, anchors):
            # The anchor count is known only at run time (it follows the input size); NMS pads
            # its output to pre_n, so every level yields [B, pre_n] whatever the size.
            k = tf.minimum(pre_n, tf.shape(level_anchors)[0])
            top_logits, top_idx = tf.math.top_k(tf.stop_gradient(level_logits), k=k, sorted=False)
            top_deltas = tf.gather(tf.stop_gradient(level_deltas), top_idx, batch_dims=1)
            top_anchors = tf.gather(level_anchors, top_idx)
            boxes = box_ops.decode_boxes(top_deltas, top_anchors, self.box_weights)
            boxes = box_ops.clip_boxes(boxes, image_sizes)
            heights = boxes[..., 2] - boxes[..., 0]
            widths = boxes[..., 3] - boxes[..., 1]
            big_enough = (heights >= self.min_size) & (widths >= self.min_size)
            scores = tf.where(big_enough, tf.sigmoid(top_logits), _REMOVED_SCORE)
            keep, keep_valid = nms.nms_padded(
                boxes, scores, max_output_size=pre_n, iou_threshold=self.nms_threshold,
                score_threshold=_REMOVED_SCORE / 2)
            level_boxes.append(tf.gather(boxes, keep, batch_dims=1))
            level_scores.append(tf.where(keep_valid, tf.gather(scores, keep, batch_dims=1),
                                         _REMOVED_SCORE))
            level_valid.append(keep_valid)
        boxes = tf.concat(level_boxes, axis=1)
        scores = tf.concat(level_scores, axis=1)
        valid = tf.concat(level_valid, axis=1)
        post_n = min(post_n, int(scores.shape[1]))
        top_scores, top_idx = tf.math.top_k(scores, k=post_n)
        return (tf.gather(boxes, top_idx, batch_dims=1), top_scores,
                tf.gather(valid, top_idx, batch_dims=1))

    def get_config(self):
        config = super().get_config()
        config.update(
            pre_nms_top_n_train=self.pre_nms_top_n_train,
            pre_nms_top_n_test=self.pre_nms_top_n_test,
            post_nms_top_n_train=self.post_nms_top_n_train,
            post_nms_top_n_test=self.post_nms_top_n_test,
            nms_threshold=self.nms_threshold, min_size=self.min_size,
            box_weights=self.box_weights)
        return config
