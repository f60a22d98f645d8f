"""Inference post-processing of the box branch: scores, class-specific boxes, per-class NMS.

Shapes: B images, N RoIs, K classes including background, D detections kept per image.
"""

import keras
import tensorflow as tf

from mask_rcnn_tf.ops import box_ops, nms


@keras.saving.register_keras_serializable(package="mask_rcnn_tf")
class DetectionGenerator(keras.layers.Layer):
    """Softmax, class-specific decode and clip, score threshold, per-class NMS, top-D."""

    def __init__(self, score_threshold, nms_threshold, detections_per_image, box_weights,
                 min_box_size, **kwargs):
        super().__init__(**kwargs)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image
        self.box_weights = tuple(box_weights)
        self.min_box_size = min_box_size

    def call(self, class_logits, box_deltas, rois, roi_valid, image_sizes):
        """Turns box-head outputs into detections.

        Args:
            class_logits: float32 [B, N, K]; box_deltas: float32 [B, N, K, 4].
            rois: float32 [B, N, 4], [y1, x1, y2, x2], input pixels; roi_valid: bool [B, N].
            image_sizes: float32 [B, 2] (h, w) inside the padded input.

        Returns:
            dict: `detection_boxes` float32 [B, D, 4] (input pixels), `detection_scores`
            float32 [B, D], `detection_classes` int32 [B, D] (1..K-1; 0 on padding),
            `num_detections` int32 [B].
        """
        probs = tf.nn.softmax(class_logits, axis=-1)[:, :, 1:]
        deltas = box_deltas[:, :, 1:, :]
        anchors = tf.broadcast_to(rois[:, :, None, :], tf.shape(deltas))
        boxes = box_ops.clip_boxes(box_ops.decode_boxes(deltas, anchors, self.box_weights),
                                   image_sizes)
        heights = boxes[..., 2] - boxes[..., 0]
        widths = boxes[..., 3] - boxes[..., 1]
        keep = (heights >= self.min_box_size) & (widths >= self.min_box_size) & roi_valid[:, :, None]
        probs = tf.where(keep, probs, 0.0)
        result = nms.per_class_nms(boxes, probs, self.detections_per_image, self.nms_threshold,
                                   self.score_threshold)
        num = result["num_detections"]
        valid = tf.range(self.detections_per_image)[None, :] < num[:, None]
        return {
            "detection_boxes": result["boxes"],
            "detection_scores": tf.where(valid, result["scores"], 0.0),
            "detection_classes": tf.where(valid, result["classes"] + 1, 0),
            "num_detections": num,
        }

    def get_config(self):
        config = super().get_config()
        config.update(score_threshold=self.score_threshold, nms_threshold=self.nms_threshold,
                      detections_per_image=self.detections_per_image,
                      box_weights=self.box_weights, min_box_size=self.min_box_size)
        return config
