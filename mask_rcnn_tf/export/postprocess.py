"""Detections in the frame of the image a client sent: boxes rescaled, masks pasted.

The model sees each image resized by `scale` and padded; a client of the serving graph wants
pixels of its own image, whose size differs per image and per request. Everything here works
on sizes known only when the graph runs, which `ops.mask_ops.paste_masks` (Python-int image
sizes, as training and evaluation use it) does not.

Shapes: B images, N detections per image, M mask side, Hc x Wc the canvas (the largest image of
the batch).
"""

import tensorflow as tf


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


def paste_masks_dynamic(masks, boxes, canvas_size):
    """Pastes box-relative masks into images whose size is a tensor.

    The same resampling as `ops.mask_ops.paste_masks`: image pixel centre (y + 0.5, x + 0.5) is
    read bilinearly between mask cell centres, with zeros beyond the mask, so values fade to
    zero over the half cell outside the box. Here it is an affine image transform (one
    ImageProjectiveTransformV3 op, bilinear, constant zero fill) mapping output pixel index
    (y, x) to mask index ((y + 0.5 - y1) / cell_h - 0.5, (x + 0.5 - x1) / cell_w - 0.5), with
    cell_h = (y2 - y1) / M; its output size may be a tensor.

    Args:
        masks: float [B, N, M, M], probabilities inside each box.
        boxes: float32 [B, N, 4], [y1, x1, y2, x2], pixels of the canvas.
        canvas_size: int32 [2], (Hc, Wc).

    Returns:
        float32 [B, N, Hc, Wc]; all zeros for empty boxes.
    """
    masks = tf.cast(masks, tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    mask_height, mask_width = tf.shape(masks)[2], tf.shape(masks)[3]
    batch_size, num_boxes = tf.shape(masks)[0], tf.shape(masks)[1]
    flat_boxes = tf.reshape(boxes, [-1, 4])
    y1, x1, y2, x2 = tf.unstack(flat_boxes, axis=-1)
    # Inverse cell sizes; an empty box gets 0 here and an all-zero paste below.
    per_row = tf.math.divide_no_nan(tf.cast(mask_height, tf.float32), y2 - y1)
    per_col = tf.math.divide_no_nan(tf.cast(mask_width, tf.float32), x2 - x1)
    zeros = tf.zeros_like(y1)
    # Row [a0, a1, a2, b0, b1, b2, c0, c1] maps output (x, y) to input (a0 x + a1 y + a2,
    # b0 x + b1 y + b2); the op reads index coordinates (pixel k at k).
    transforms = tf.stack([per_col, zeros, (0.5 - x1) * per_col - 0.5,
                           zeros, per_row, (0.5 - y1) * per_row - 0.5,
                           zeros, zeros], axis=-1)
    pasted = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.reshape(masks, [-1, mask_height, mask_width, 1]), transforms=transforms,
        output_shape=tf.cast(canvas_size, tf.int32), fill_value=0.0, interpolation="BILINEAR",
        fill_mode="CONSTANT")
    non_empty = tf.cast((y2 > y1) & (x2 > x1), tf.float32)
    pasted = pasted[..., 0] * non_empty[:, None, None]
    return tf.reshape(pasted, tf.concat([[batch_size, num_boxes], tf.shape(pasted)[1:]], 0))


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
    probs = paste_masks_dynamic(masks, boxes, canvas_size)
    inside_rows = tf.range(canvas_size[0])[None, :] < image_sizes[:, 0:1]
    inside_cols = tf.range(canvas_size[1])[None, :] < image_sizes[:, 1:2]
    inside = inside_rows[:, :, None] & inside_cols[:, None, :]
    return tf.cast((probs >= threshold) & inside[:, None], tf.uint8)
