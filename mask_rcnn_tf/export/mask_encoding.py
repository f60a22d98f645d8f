"""Full-image binary masks encoded in the graph, one string per detection: a response carrying
100 full-image masks stays in the tens to hundreds of KB where the uint8 [B, N, Hc, Wc] canvas
is ~100 MB.

Two encodings of the detection's mask in its own image's (h, w):
- "png": tf.io.encode_png of uint8 [h, w, 1], pixel values 0 / 1; any image library reads it.
  Deflate runs over all h * w pixels of every mask.
- "rle": COCO's compressed RLE string (pycocotools' `counts`, column-major runs, zeros first),
  computed from the pasted region alone, so its cost follows the box, not the image; decode
  with pycocotools.mask.decode({"size": [h, w], "counts": ...}).
For 100 detections in an 800 x 1333 image, RLE came out about 16x faster to build and 8x
smaller than PNG (15 KB against 128 KB; serving/README.md), hence the recommended choice;
benchmarks/served_path.py ("masks") measures both on a real request.

Shapes: B images, N detections per image, M mask side, R runs.
"""

import tensorflow as tf

from mask_rcnn_tf.export.postprocess import mask_region, per_detection

ENCODINGS = ("png", "rle")
# 5-bit groups per count in COCO's string: enough for the counts of any image under 2**31
# pixels and for their differences (pycocotools maskApi.c rleToString).
_RLE_GROUPS = 7


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
        string [B, N], one per valid row: a PNG of uint8 [h, w, 1] (0 / 1; b"" for a mask with
        no pixel inside its image), or COCO's compressed RLE counts; b"" on padding rows.

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

    def rle(mask, box, image_size):
        region, origin = mask_region(mask, box, image_size, threshold)
        return rle_string(rle_counts(region, origin, image_size))

    encoded = per_detection(png if encoding == "png" else rle, masks, boxes, image_sizes,
                            tf.TensorSpec([], tf.string))
    return tf.where(valid, encoded, b"")


def rle_counts(region, origin, image_size):
    """Run lengths of a full-image mask in column-major order, zeros first (COCO's RLE).

    Args:
        region: uint8 [rh, rw] 0 / 1, the mask where it can be non-zero (mask_region).
        origin: int32 [2], (row, col) of the region's top-left pixel in the image.
        image_size: int32 [2], (h, w); the mask is zero outside the region.

    Returns:
        int64 [R], summing to h * w; the first is 0 when pixel (0, 0) is foreground.
    """
    height = tf.cast(image_size[0], tf.int64)
    total = height * tf.cast(image_size[1], tf.int64)
    # A zero row above and below the region: each run of a column starts and ends inside it.
    padded = tf.pad(tf.cast(region, tf.int32), [[1, 1], [0, 0]])
    changes = tf.where(tf.transpose(padded[1:] != padded[:-1]))  # (column, row + 1), sorted
    starts = (tf.cast(origin[1], tf.int64) + changes[:, 0]) * height \
        + tf.cast(origin[0], tf.int64) + changes[:, 1]
    # A run reaching a column's last row and going on at the next column's first row is one
    # run in column-major order: its end and restart fall on the same index and cancel. A run
    # ending at the image's last pixel leaves no trailing zero run.
    repeated = starts[1:] == starts[:-1]
    edge = tf.zeros([1], tf.bool)
    keep = ~(tf.concat([repeated, edge], 0) | tf.concat([edge, repeated], 0)) & (starts < total)
    bounds = tf.concat([[0], tf.boolean_mask(starts, keep), [total]], 0)
    return bounds[1:] - bounds[:-1]


def rle_string(counts):
    """COCO's compressed string of RLE counts (pycocotools maskApi.c rleToString).

    Each count, from the fourth on as its difference to the count two before, goes as 5-bit
    groups, low first, each + 48, with 0x20 set on all groups but a count's last; the last is
    the first whose sign bit (0x10) matches the rest of the (arithmetically shifted) value.

    Args:
        counts: int64 [R].

    Returns:
        string scalar of characters 48..111.
    """
    index = tf.range(tf.shape(counts, out_type=tf.int64)[0])
    two_before = tf.concat([tf.zeros([2], tf.int64), counts], 0)[:-2]
    values = counts - tf.where(index > 2, two_before, 0)
    shifts = tf.constant([5 * k for k in range(_RLE_GROUPS)], tf.int64)
    groups = tf.bitwise.bitwise_and(tf.bitwise.right_shift(values[:, None], shifts), 0x1F)
    rest = tf.bitwise.right_shift(values[:, None], shifts + 5)
    more = tf.where(tf.bitwise.bitwise_and(groups, 0x10) != 0, rest != -1, rest != 0)
    # Group k is written when every group before it had more to follow.
    written = tf.concat([tf.ones_like(more[:, :1]), tf.cast(
        tf.math.cumprod(tf.cast(more, tf.int32), axis=1), tf.bool)[:, :-1]], axis=1)
    chars = groups + tf.where(more, tf.constant(0x20, tf.int64), 0) + 48
    return tf.strings.unicode_encode(tf.cast(tf.boolean_mask(chars, written), tf.int32),
                                     "UTF-8")
