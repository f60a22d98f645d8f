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

    No float canvas: each mask is pasted only over the pixels it can reach (mask_region), and
    an empty box (every padding row) costs no paste at all.

    Args:
        masks: float [B, N, M, M], probabilities inside each box.
        boxes: float32 [B, N, 4], [y1, x1, y2, x2], pixels of the original image, unclipped
            (see to_original_frame); all zeros on padding rows.
        image_sizes: int32 [B, 2], (h, w) of each original image.
        threshold: Python float > 0; a pixel is foreground when its probability is >= threshold.

    Returns:
        uint8 [B, N, Hc, Wc] with Hc, Wc the largest h and w of the batch; 0 / 1, and 0 beyond
        an image's own (h, w).
    """
    image_sizes = tf.cast(image_sizes, tf.int32)
    canvas_size = tf.reduce_max(image_sizes, axis=0)

    def canvas(mask, box, image_size):
        region, origin = mask_region(mask, box, image_size, threshold)
        after = canvas_size - origin - tf.shape(region)
        return tf.pad(region, tf.stack([origin, after], axis=1))

    return per_detection(canvas, masks, boxes, image_sizes,
                         tf.TensorSpec([None, None], tf.uint8))


def per_detection(fn, masks, boxes, image_sizes, output_spec):
    """fn(mask [M, M], box [4], image_size int32 [2]) on every detection row, one at a time.

    Args:
        fn: returns a tensor of output_spec.
        masks: float [B, N, M, M]; boxes: float32 [B, N, 4]; image_sizes: int32 [B, 2].
        output_spec: tf.TensorSpec of one result, shape without the [B, N] prefix.

    Returns:
        [B, N, ...] stacked results.
    """
    batch_size, num_boxes = tf.shape(boxes)[0], tf.shape(boxes)[1]
    mask_shape = tf.shape(masks)[2:]
    flat_sizes = tf.repeat(tf.cast(image_sizes, tf.int32), num_boxes, axis=0)
    results = tf.map_fn(
        lambda row: fn(row[0], row[1], row[2]),
        (tf.reshape(tf.cast(masks, tf.float32), tf.concat([[-1], mask_shape], 0)),
         tf.reshape(tf.cast(boxes, tf.float32), [-1, 4]), flat_sizes),
        fn_output_signature=output_spec)
    return tf.reshape(results, tf.concat([[batch_size, num_boxes], tf.shape(results)[1:]], 0))


def mask_region(mask, box, image_size, threshold):
    """One detection's binary mask over the rows and columns of its image it can reach.

    A pasted mask is zero from half a mask cell outside its box (ops/mask_ops.paste_masks), so
    only the box grown by one cell per side, clipped to the image, is pasted: the same values as
    a full-image paste, at the cost of the box instead of the image.

    Args:
        mask: float32 [M, M], probabilities inside the box.
        box: float32 [4], [y1, x1, y2, x2], pixels of the image, unclipped.
        image_size: int32 [2], (h, w) of the image.
        threshold: Python float > 0.

    Returns:
        (uint8 [rh, rw] 0 / 1, int32 [2] (row, col) of its top-left pixel in the image);
        [0, 0] in size for an empty box or one outside the image.
    """
    y1, x1, y2, x2 = tf.unstack(box)
    cell = tf.stack([y2 - y1, x2 - x1]) / tf.cast(tf.shape(mask), tf.float32)
    non_empty = (y2 > y1) & (x2 > x1)
    start = tf.clip_by_value(tf.cast(tf.floor(tf.stack([y1, x1]) - cell), tf.int32),
                             0, image_size)
    end = tf.clip_by_value(tf.cast(tf.math.ceil(tf.stack([y2, x2]) + cell), tf.int32),
                           start, image_size)
    size = tf.where(non_empty, end - start, 0)
    # The transform op needs a non-empty output: paste at least 1 x 1, then keep `size`.
    origin = tf.cast(tf.tile(start, [2]), tf.float32)
    probs = paste_masks(mask[None, None], (box - origin)[None, None], tf.maximum(size, 1))
    return tf.cast(probs[0, 0, :size[0], :size[1]] >= threshold, tf.uint8), start
