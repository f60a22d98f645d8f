"""Instance masks: fixed-size crops of ground truth, mask-head targets, pasting predictions.

Every resampling here samples bin centres of a box with bilinear interpolation and zero outside
the sampled map (crop_and_resize_aligned). A mask "in a box" of side S covers the box exactly:
mask cell k spans [y1 + k h / S, y1 + (k + 1) h / S) of the box's frame.

Shapes: B images, N boxes, M gt rows, R RoIs, S stored crop side, P target side.
"""

import tensorflow as tf

from mask_rcnn_tf.ops.roi_align import crop_and_resize_aligned
# The NumPy twin of paste_masks lives outside ops/ and serving/ (NumPy only) so that the
# serving client uses it without the model and the model without loading the client (grpc);
# re-exported here so model-side callers find both in one place.
from mask_rcnn_tf.mask_paste import paste_mask as paste_masks_numpy  # noqa: F401


def crop_masks(masks, boxes, output_size):
    """Resample each full-image mask at the S x S bin centres of its box.

    Args:
        masks: float [N, H, W], full-image masks (0 / 1).
        boxes: float32 [N, 4], [y1, x1, y2, x2], pixels of the mask's image.
        output_size: Python int S.

    Returns:
        float32 [N, S, S], bilinear, zero outside the image.
    """
    crops = crop_and_resize_aligned(
        tf.cast(masks, tf.float32)[..., None], boxes, tf.range(tf.shape(masks)[0]), output_size)
    return crops[..., 0]


def _boxes_in_frame(boxes, frames, frame_size):
    """Express boxes in the pixel frame of a grid of frame_size cells laid over each frame box.

    Args:
        boxes: float32 [..., 4], [y1, x1, y2, x2], pixels.
        frames: float32 [..., 4], [y1, x1, y2, x2], pixels, the boxes the grids cover.
        frame_size: (h, w) Python ints, the grid's cells per side.

    Returns:
        float32 [..., 4]; finite (all zeros) when a frame is empty.
    """
    fy1, fx1, fy2, fx2 = tf.unstack(frames, axis=-1)
    scale_y = tf.math.divide_no_nan(float(frame_size[0]), fy2 - fy1)
    scale_x = tf.math.divide_no_nan(float(frame_size[1]), fx2 - fx1)
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    return tf.stack([(y1 - fy1) * scale_y, (x1 - fx1) * scale_x,
                     (y2 - fy1) * scale_y, (x2 - fx1) * scale_x], axis=-1)


def mask_targets(gt_mask_crops, gt_boxes, rois, matched_gt, output_size):
    """Mask-head targets: each RoI's matched gt mask resampled at the RoI's P x P bin centres.

    The stored crop covers exactly its gt box and the mask is zero outside that box, so the RoI
    is expressed in the crop's pixel frame and the crop is sampled there, zero outside it.

    Args:
        gt_mask_crops: float [B, M, S, S], each gt mask cropped to its own gt box (crop_masks).
        gt_boxes: float32 [B, M, 4], [y1, x1, y2, x2], input pixels.
        rois: float32 [B, R, 4], [y1, x1, y2, x2], input pixels.
        matched_gt: int32 [B, R], row of gt_boxes matched to each RoI.
        output_size: Python int P.

    Returns:
        float32 [B, R, P, P] in [0, 1] (finite for RoIs matched to empty padding boxes).

    Raises:
        ValueError: the crop size S is not static.
    """
    gt_mask_crops = tf.cast(gt_mask_crops, tf.float32)
    crop_size = gt_mask_crops.shape[-1]
    if crop_size is None:
        raise ValueError("mask_targets: gt_mask_crops needs a static crop size S")
    batch_size = tf.shape(gt_mask_crops)[0]
    num_gt = tf.shape(gt_mask_crops)[1]
    num_rois = tf.shape(rois)[1]
    matched_gt = tf.cast(matched_gt, tf.int32)
    matched_boxes = tf.gather(tf.cast(gt_boxes, tf.float32), matched_gt, batch_dims=1)
    roi_in_crop = _boxes_in_frame(tf.cast(rois, tf.float32), matched_boxes, (crop_size, crop_size))
    crop_indices = matched_gt + tf.range(batch_size)[:, None] * num_gt
    targets = crop_and_resize_aligned(
        tf.reshape(gt_mask_crops, [-1, crop_size, crop_size, 1]),
        tf.reshape(roi_in_crop, [-1, 4]), tf.reshape(crop_indices, [-1]), output_size)
    return tf.reshape(targets, [batch_size, num_rois, output_size, output_size])


def paste_masks(masks, boxes, image_size):
    """Pastes box-relative mask probabilities into full images.

    Image pixel centre (y + 0.5, x + 0.5) is read bilinearly between mask cell centres, with
    zeros beyond the mask, so values fade to zero over the half cell outside the box (0.5 * edge
    value on the edge). One affine image transform (ImageProjectiveTransformV3, bilinear,
    constant zero fill) maps output pixel index (y, x) to mask index
    ((y + 0.5 - y1) / cell_h - 0.5, (x + 0.5 - x1) / cell_w - 0.5), cell_h = (y2 - y1) / M, so
    the image size may be known only when the graph runs (serving).

    Args:
        masks: float [B, N, M, M], probabilities inside each box.
        boxes: float32 [B, N, 4], [y1, x1, y2, x2], pixels of the target image.
        image_size: (h, w) Python ints or an int32 [2] tensor.

    Returns:
        float32 [B, N, h, w]; all zeros for empty boxes.
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
        output_shape=tf.cast(image_size, tf.int32), fill_value=0.0, interpolation="BILINEAR",
        fill_mode="CONSTANT")
    non_empty = tf.cast((y2 > y1) & (x2 > x1), tf.float32)
    pasted = pasted[..., 0] * non_empty[:, None, None]
    return tf.reshape(pasted, tf.concat([[batch_size, num_boxes], tf.shape(pasted)[1:]], 0))
