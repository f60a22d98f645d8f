"""Full-image binary masks encoded in the graph, one string per detection: a response carrying
100 full-image masks stays in the tens of KB where the uint8 [B, N, Hc, Wc] canvas is ~100 MB.

PNG (tf.io.encode_png), 8-bit grayscale, of the detection's mask in its own image's (h, w),
pixel values 0 / 1: any image library decodes it, and a binary mask deflates to ~1-2 KB at
800 x 1333. (COCO RLE would be smaller to compute, but needs a run-length coder that TensorFlow
has no op for; see benchmarks/README.md for the measured PNG cost.)

Shapes: B images, N detections per image, M mask side.
"""

import tensorflow as tf

from mask_rcnn_tf.export.postprocess import mask_region, per_detection

ENCODINGS = ("png",)


def encoded_masks(masks, boxes, image_sizes, valid, threshold, encoding="png"):
    """Each detection's full-image binary mask, encoded.

    Args:
        masks: float [B, N, M, M], probabilities inside each box.
        boxes: float32 [B, N, 4], [y1, x1, y2, x2], pixels of the original image, unclipped
            (postprocess.to_original_frame).
        image_sizes: int32 [B, 2], (h, w) of each original image.
        valid: bool [B, N], rows holding a detection (postprocess.valid_rows).
        threshold: Python float > 0; a pixel is foreground when its probability is >= threshold.
        encoding: one of ENCODINGS.

    Returns:
        string [B, N]: a PNG of uint8 [h, w, 1] (0 / 1) per valid row; b"" on padding rows and
        for a mask with no pixel inside its image (an empty box, or one outside the image).

    Raises:
        ValueError: an unknown encoding.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoded masks: unknown encoding {encoding!r}, expected one of "
                         f"{list(ENCODINGS)}")
    masks = tf.where(valid[:, :, None, None], tf.cast(masks, tf.float32), 0.0)
    boxes = tf.where(valid[:, :, None], tf.cast(boxes, tf.float32), 0.0)

    def png(mask, box, image_size):
        region, origin = mask_region(mask, box, image_size, threshold)
        after = image_size - origin - tf.shape(region)
        full = tf.pad(region, tf.stack([origin, after], axis=1))
        return tf.cond(tf.size(region) > 0, lambda: tf.io.encode_png(full[:, :, None]),
                       lambda: tf.constant(b""))

    encoded = per_detection(png, masks, boxes, image_sizes, tf.TensorSpec([], tf.string))
    return tf.where(valid, encoded, b"")
