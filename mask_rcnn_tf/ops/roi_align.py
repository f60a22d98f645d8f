"""RoIAlign over FPN levels, FPN level assignment, and the aligned crop that mask ops reuse.

All three are built on tf.image.crop_and_resize. crop_and_resize samples a regular grid whose
first and last points sit on its box's corners, in normalized coordinates where 0 and 1 are
the centres of the first and last pixel. RoIAlign samples bin centres in pixel coordinates.
The helpers below convert one into the other; this is the only module that sees normalized
coordinates.

The gradient with respect to the image is our own (_crop_and_resize): TensorFlow's CPU kernel
CropAndResizeGradImage splits the boxes over threads that add into the same image gradient
without synchronization, so overlapping boxes lose updates (with two threads, 10-30% of the
gradient's largest value on RoIAlign-sized inputs; exact only under
tf.config.experimental.enable_op_determinism, which runs it on one thread).

Shapes: B images, N boxes per image, L levels, C channels, P output side, R boxes in total.
"""

import math

import tensorflow as tf

from mask_rcnn_tf.ops.box_ops import box_area


def _padded_grid_boxes(boxes, height, width, crop_height, crop_width):
    """Normalized crop_and_resize boxes that sample bin centres of `boxes` in a 1-pixel-padded map.

    `boxes` are in index coordinates of the unpadded map (pixel k's centre at k). Splitting a
    side [y1, y2] into n bins of size s = (y2 - y1) / n, bin k's centre is y1 + s/2 + k s. The
    padded map shifts indices by 1, and crop_and_resize maps normalized 0..1 to padded indices
    0..H+1, so the first and last sample are (y1 + 1 + s/2) / (H + 1) and that plus
    s (n - 1) / (H + 1).

    Args:
        boxes: float32 [R, 4], [y1, x1, y2, x2], index coordinates of the unpadded map.
        height: float32 scalar H of the unpadded map.
        width: float32 scalar W of the unpadded map.
        crop_height: Python int, samples along y.
        crop_width: Python int, samples along x.

    Returns:
        float32 [R, 4], normalized [y1, x1, y2, x2] for crop_and_resize on the padded map.
    """
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    step_y = (y2 - y1) / crop_height
    step_x = (x2 - x1) / crop_width
    first_y = (y1 + 1.0 + 0.5 * step_y) / (height + 1.0)
    first_x = (x1 + 1.0 + 0.5 * step_x) / (width + 1.0)
    last_y = first_y + step_y * (crop_height - 1) / (height + 1.0)
    last_x = first_x + step_x * (crop_width - 1) / (width + 1.0)
    return tf.stack([first_y, first_x, last_y, last_x], axis=-1)


def _sample_neighbours(start, end, size, count):
    """crop_and_resize's samples along one axis, as its kernel computes them.

    Args:
        start, end: float32 [R], normalized box sides (0 and 1 the first and last pixel centre).
        size: int32 scalar, pixels along the axis.
        count: Python int, samples along the axis.

    Returns:
        low, high: int32 [R, count], the pixels on either side of each sample;
        low_weight, high_weight: float32 [R, count], their bilinear weights, 0 for samples
        outside the image (which crop_and_resize fills with the extrapolation value).
    """
    last = tf.cast(size - 1, tf.float32)
    if count > 1:
        step = (end - start) * last / (count - 1)
        position = start[:, None] * last + tf.range(count, dtype=tf.float32)[None] * step[:, None]
    else:
        position = (0.5 * (start + end) * last)[:, None]
    inside = (position >= 0.0) & (position <= last)
    low = tf.floor(position)
    fraction = tf.where(inside, position - low, 0.0)
    low_index = tf.clip_by_value(tf.cast(low, tf.int32), 0, size - 1)
    high_index = tf.clip_by_value(tf.cast(tf.math.ceil(position), tf.int32), 0, size - 1)
    return low_index, high_index, tf.where(inside, 1.0 - fraction, 0.0), fraction


def _crop_and_resize_image_gradient(upstream, boxes, box_indices, image_shape):
    """The gradient of bilinear crop_and_resize w.r.t. its image, by segment sums.

    Args:
        upstream: float32 [R, h, w, C], the gradient of the crops.
        boxes: float32 [R, 4], normalized [y1, x1, y2, x2] as given to crop_and_resize.
        box_indices: int32 [R].
        image_shape: int32 [4], the image's [K, H, W, C].

    Returns:
        float32 [K, H, W, C].
    """
    height, width = image_shape[1], image_shape[2]
    num_pixels = image_shape[0] * height * width
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    y_low, y_high, y_low_weight, y_high_weight = _sample_neighbours(
        y1, y2, height, upstream.shape[1])
    x_low, x_high, x_low_weight, x_high_weight = _sample_neighbours(
        x1, x2, width, upstream.shape[2])
    rows = box_indices[:, None] * height
    values = tf.reshape(upstream, [-1, upstream.shape[3]])
    gradient = 0.0
    # The four bilinear neighbours one at a time: one pass with all four would hold four
    # copies of the upstream gradient at once.
    for y, y_weight in ((y_low, y_low_weight), (y_high, y_high_weight)):
        for x, x_weight in ((x_low, x_low_weight), (x_high, x_high_weight)):
            pixel = tf.reshape((rows + y)[:, :, None] * width + x[:, None, :], [-1])
            weight = tf.reshape(y_weight[:, :, None] * x_weight[:, None, :], [-1, 1])
            gradient += tf.math.unsorted_segment_sum(values * weight, pixel, num_pixels)
    return tf.reshape(gradient, image_shape)


def _crop_and_resize(images, boxes, box_indices, crop_size):
    """tf.image.crop_and_resize (bilinear, 0 outside the image) with a race-free image gradient.

    Args:
        images: float32 [K, H, W, C].
        boxes: float32 [R, 4], normalized [y1, x1, y2, x2]; no gradient flows to them (RoIs
            and mask boxes are constants of the loss here, as in torchvision).
        box_indices: int32 [R], in [0, K).
        crop_size: [h, w] Python ints.

    Returns:
        float32 [R, h, w, C].
    """
    boxes = tf.stop_gradient(boxes)

    @tf.custom_gradient
    def crop(images):
        def gradient(upstream):
            return _crop_and_resize_image_gradient(
                tf.cast(upstream, tf.float32), boxes, box_indices, tf.shape(images))

        return tf.image.crop_and_resize(images, boxes, box_indices, crop_size,
                                        extrapolation_value=0.0), gradient

    return crop(images)


def _map_size(images):
    shape = tf.shape(images)
    return tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)


def crop_and_resize_aligned(images, boxes, box_indices, crop_size):
    """Bilinear samples at the bin centres of each box, the image being zero outside its border.

    The image is the bilinear interpolation of its pixel values placed at pixel centres
    (k + 0.5 in pixel coordinates) and of zeros beyond the border, so values fade to zero over
    the half pixel outside the image. A box side [y1, y2] split into n bins is sampled at
    y1 + (k + 0.5)(y2 - y1) / n, one sample per bin (RoIAlign aligned=True, scale 1,
    sampling ratio 1, but zero padding instead of edge clamping).

    Args:
        images: float [K, H, W, C].
        boxes: float32 [R, 4], [y1, x1, y2, x2], pixels of `images` (may leave the image).
        box_indices: int32 [R], the image each box samples, in [0, K).
        crop_size: Python int S or (h, w) pair of Python ints.

    Returns:
        float32 [R, h, w, C].
    """
    if isinstance(crop_size, (tuple, list)):
        crop_height, crop_width = (int(side) for side in crop_size)
    else:
        crop_height = crop_width = int(crop_size)
    images = tf.cast(images, tf.float32)
    height, width = _map_size(images)
    # Pixel coordinates put pixel k's centre at k + 0.5; index coordinates put it at k.
    index_boxes = tf.cast(boxes, tf.float32) - 0.5
    padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]])
    return _crop_and_resize(
        padded, _padded_grid_boxes(index_boxes, height, width, crop_height, crop_width),
        tf.cast(box_indices, tf.int32), [crop_height, crop_width])


def _roi_align_level(features, boxes, box_indices, scale, output_size, sampling_ratio, aligned):
    """RoIAlign on one level: features float32 [K, H, W, C], boxes float32 [R, 4] input pixels,
    box_indices int32 [R] -> float32 [R, P, P, C]."""
    height, width = _map_size(features)
    offset = 0.5 if aligned else 0.0
    y1, x1, y2, x2 = tf.unstack(boxes * scale - offset, axis=-1)
    if not aligned:
        # torchvision's legacy mode forces every RoI to be at least one cell wide.
        y2 = y1 + tf.maximum(y2 - y1, 1.0)
        x2 = x1 + tf.maximum(x2 - x1, 1.0)
    samples = sampling_ratio * output_size
    grid_boxes = _padded_grid_boxes(
        tf.stack([y1, x1, y2, x2], axis=-1), height, width, samples, samples)
    # SYMMETRIC padding repeats the edge row, which reproduces torchvision's clamping of samples
    # in [-1, 0] and [H - 1, H]; samples beyond that fall outside the padded map and get 0.
    padded = tf.pad(features, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    crops = _crop_and_resize(padded, grid_boxes, box_indices, [samples, samples])
    # The bin average as a pooling op: a mean over axes 2 and 4 of a 6-D reshape runs as a
    # strided reduction, several times slower forwards and backwards on CPU.
    return tf.nn.avg_pool2d(crops, sampling_ratio, sampling_ratio, "VALID")


def roi_align(features, boxes, levels, strides, output_size, sampling_ratio=2, aligned=True):
    """Multi-level RoIAlign matching torchvision.ops.roi_align (fixed sampling ratio).

    Each box is pooled from one level. With scale = 1 / stride and o = 0.5 if aligned else 0,
    the box in level index coordinates is y1' = y1 * scale - o (same for x1, y2, x2); when not
    aligned, roi_h = max(y2' - y1', 1). The box is split into P x P bins, each sampled at
    sampling_ratio x sampling_ratio points, i.e. n = sampling_ratio * P points per side at
    y1' + (k + 0.5) roi_h / n, averaged per bin. On a map padded by one pixel per side, those
    points are the crop_and_resize grid of the normalized box
        ny1 = (y1' + 1 + s/2) / (H + 1), ny2 = ny1 + s (n - 1) / (H + 1),  s = roi_h / n
    (same for x with W), followed by sampling_ratio x sampling_ratio average pooling.
    Why: crop_and_resize puts its first and last samples on the box corners, RoIAlign puts
    them half a step s/2 inside the box, so the box handed over is shifted in by s/2 and shrunk
    from n s to (n - 1) s; the +1 and H + 1 account for the padding (normalized 1 is the last
    padded pixel, index H + 1). The shift o moves pixel-boundary coordinates (pixel i spans
    [i, i + 1)) to the index frame where feature cell i sits at i (aligned=True);
    aligned=False keeps Detectron's legacy half-pixel misalignment.

    Boxes are grouped by level, each level crops only its own boxes, and the results are
    stitched back into input order.

    Args:
        features: list of L float [B, Hl, Wl, C], one map per level, same C and dtype.
        boxes: float32 [B, N, 4], [y1, x1, y2, x2], input-image pixels.
        levels: int32 [B, N], index into `features` (values outside [0, L) are clamped).
        strides: list of L Python ints, stride of each level in input pixels.
        output_size: Python int P.
        sampling_ratio: Python int >= 1, samples per bin side.
        aligned: Python bool, torchvision's `aligned`.

    Returns:
        [B, N, P, P, C], the dtype of `features`.

    Raises:
        ValueError: features and strides differ in length, or sampling_ratio < 1.
    """
    if len(features) != len(strides) or not features:
        raise ValueError(
            f"roi_align: need one stride per feature level, got {len(features)} levels "
            f"and strides {strides}")
    if sampling_ratio < 1:
        raise ValueError(
            f"roi_align: sampling_ratio must be >= 1 (adaptive sampling is not supported), "
            f"got {sampling_ratio}")
    dtype = features[0].dtype
    boxes = tf.cast(boxes, tf.float32)
    batch_size = tf.shape(boxes)[0]
    num_boxes = tf.shape(boxes)[1]
    flat_boxes = tf.reshape(boxes, [-1, 4])
    flat_levels = tf.clip_by_value(
        tf.reshape(tf.cast(levels, tf.int32), [-1]), 0, len(features) - 1)
    flat_batch = tf.repeat(tf.range(batch_size), num_boxes)

    positions, pooled = [], []
    for level, (level_features, stride) in enumerate(zip(features, strides)):
        selected = tf.cast(tf.where(tf.equal(flat_levels, level))[:, 0], tf.int32)
        positions.append(selected)
        pooled.append(_roi_align_level(
            tf.cast(level_features, tf.float32), tf.gather(flat_boxes, selected),
            tf.gather(flat_batch, selected), 1.0 / stride, output_size, sampling_ratio, aligned))
    result = tf.dynamic_stitch(positions, pooled) if len(features) > 1 else pooled[0]
    channels = tf.shape(result)[-1]
    result = tf.reshape(result, [batch_size, num_boxes, output_size, output_size, channels])
    result.set_shape([boxes.shape[0], boxes.shape[1], output_size, output_size,
                      features[0].shape[-1]])
    return tf.cast(result, dtype)


def assign_levels(boxes, min_level, max_level, canonical_size=224, canonical_level=4):
    """FPN level of each box (torchvision LevelMapper, FPN paper eq. 1).

    k = floor(canonical_level + log2(sqrt(h * w) / canonical_size) + 1e-6), clamped to
    [min_level, max_level]; the 1e-6 keeps exact powers of two on the upper level despite
    float rounding.

    Args:
        boxes: float [B, N, 4], [y1, x1, y2, x2], input-image pixels.
        min_level: Python int, lowest level number (e.g. 2).
        max_level: Python int, highest level number (e.g. 5).
        canonical_size: Python number, box size that maps to canonical_level.
        canonical_level: Python int.

    Returns:
        int32 [B, N] level numbers in [min_level, max_level] (subtract min_level for a list index).
    """
    size = tf.sqrt(box_area(boxes))
    level = tf.floor(canonical_level + tf.math.log(size / canonical_size) / math.log(2.0) + 1e-6)
    # Clamp before the cast: empty boxes give -inf.
    return tf.cast(tf.clip_by_value(level, float(min_level), float(max_level)), tf.int32)
