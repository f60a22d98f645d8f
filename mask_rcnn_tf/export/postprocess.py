"""Detections in the frame of the image a client sent: boxes rescaled, masks pasted (keypoints:
ops.keypoint_ops.keypoints_to_original_frame).

The model sees each image resized by `scale` and padded; a client of the serving graph wants
pixels of its own image, whose size differs per image and per request: everything here works
on sizes known only when the graph runs.

Shapes: B images, N detections per image, M mask side, Hc x Wc the canvas (the largest image of
the batch).
"""

import tensorflow as tf

from mask_rcnn_tf.ops.mask_ops import paste_masks


def valid_rows(num_detections, num_rows):
    """bool [B, N]: True on the first num_detections[b] of num_rows rows of image b."""
    return tf.range(num_rows)[None, :] < tf.cast(num_detections, tf.int32)[:, None]


def to_original_frame(boxes, scales, num_detections):
    """Rescales detection boxes from the resized input to the original image; padding rows zero.

    Args:
        boxes: float32 [B, N, 4], [y1, x1, y2, x2], pixels of the resized input.
        scales: float32 [B], resized size = original size * scale.
        num_detections: int32 [B], valid leading rows per image.

    Returns:
        float32 [B, N, 4], [y1, x1, y2, x2], pixels of the original image, not clipped (the mask
        of a detection covers exactly this box).
    """
    boxes = tf.cast(boxes, tf.float32) / tf.cast(scales, tf.float32)[:, None, None]
    return tf.where(valid_rows(num_detections, tf.shape(boxes)[1])[:, :, None], boxes, 0.0)


def full_image_masks(masks, boxes, image_sizes, threshold):
    """Binary masks of every detection in its own image, on a canvas fitting the whole batch.

    Args:
        masks: float [B, N, M, M], probabilities inside each box.
        boxes: float32 [B, N, 4], [y1, x1, y2, x2], pixels of the original image, unclipped
            (see to_original_frame).
        image_sizes: int32 [B, 2], (h, w) of each original image.
        threshold: Python float; a pixel is foreground when its probability is >= threshold.

    Returns:
        uint8 [B, N, Hc, Wc] with Hc, Wc the largest h and w of the batch; 0 / 1, and 0 beyond
        an image's own (h, w).
    """
    image_sizes = tf.cast(image_sizes, tf.int32)
    canvas_size = tf.reduce_max(image_sizes, axis=0)
    probs = paste_masks(masks, boxes, canvas_size)
    inside_rows = tf.range(canvas_size[0])[None, :] < image_sizes[:, 0:1]
    inside_cols = tf.range(canvas_size[1])[None, :] < image_sizes[:, 1:2]
    inside = inside_rows[:, :, None] & inside_cols[:, None, :]
    return tf.cast((probs >= threshold) & inside[:, None], tf.uint8)
