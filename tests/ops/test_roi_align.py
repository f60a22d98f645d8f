"""RoIAlign against a direct NumPy transcription of torchvision's roi_align (CPU kernel)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from mask_rcnn_tf.ops.roi_align import assign_levels, crop_and_resize_aligned, roi_align


def _bilinear_clamped(feature, y, x):
    """torchvision bilinear_interpolate: 0 beyond one pixel outside, clamped to the edge inside."""
    height, width = feature.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[2])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * feature[y_low, x_low] + hy * lx * feature[y_low, x_high]
            + ly * hx * feature[y_high, x_low] + ly * lx * feature[y_high, x_high])


def _roi_align_reference(feature, box, scale, output_size, sampling_ratio, aligned):
    """One RoI on one [H, W, C] map; box [y1, x1, y2, x2] in input pixels."""
    offset = 0.5 if aligned else 0.0
    y1, x1, y2, x2 = (v * scale - offset for v in box)
    roi_h, roi_w = y2 - y1, x2 - x1
    if not aligned:
        roi_h, roi_w = max(roi_h, 1.0), max(roi_w, 1.0)
    bin_h, bin_w = roi_h / output_size, roi_w / output_size
    out = np.zeros((output_size, output_size, feature.shape[2]))
    for ph in range(output_size):
        for pw in range(output_size):
            for iy in range(sampling_ratio):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / sampling_ratio
                for ix in range(sampling_ratio):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / sampling_ratio
                    out[ph, pw] += _bilinear_clamped(feature, y, x)
    return out / sampling_ratio ** 2


def _random_rois(rng, shape, extent):
    # Centres up to 10 pixels outside the image and sizes from sub-pixel to larger than it.
    cy = rng.uniform(-10, extent[0] + 10, shape)
    cx = rng.uniform(-10, extent[1] + 10, shape)
    h = np.exp(rng.uniform(np.log(0.5), np.log(1.5 * extent[0]), shape))
    w = np.exp(rng.uniform(np.log(0.5), np.log(1.5 * extent[1]), shape))
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1).astype(np.float32)


def test_tiny_exact_case():
    feature = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    boxes = np.array([[[1.0, 1.0, 3.0, 3.0]]], np.float32)
    out = roi_align([feature], boxes, np.zeros((1, 1), np.int32), [1], 4, aligned=True)
    assert out.shape == (1, 1, 4, 4, 1)
    np.testing.assert_allclose(out.numpy()[0, 0, 0, :, 0], [4.5, 5.0, 5.5, 6.0], atol=1e-6)
    want = _roi_align_reference(feature[0], boxes[0, 0], 1.0, 4, 2, True)
    np.testing.assert_allclose(out.numpy()[0, 0], want, atol=1e-6)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("output_size,sampling_ratio", [(7, 2), (3, 3)])
def test_multilevel_matches_reference(aligned, output_size, sampling_ratio):
    rng = np.random.default_rng(0 if aligned else 1)
    features = [rng.normal(size=(2, 13, 17, 3)).astype(np.float32),
                rng.normal(size=(2, 7, 9, 3)).astype(np.float32)]
    strides = [4, 8]
    boxes = _random_rois(rng, (2, 40), (52, 68))
    levels = rng.integers(0, 2, (2, 40)).astype(np.int32)
    got = roi_align(features, boxes, levels, strides, output_size, sampling_ratio, aligned).numpy()
    assert got.shape == (2, 40, output_size, output_size, 3)
    want = np.array([[_roi_align_reference(features[levels[b, n]][b], boxes[b, n],
                                           1.0 / strides[levels[b, n]], output_size,
                                           sampling_ratio, aligned)
                      for n in range(40)] for b in range(2)])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_graph_mode_one_level_empty_and_dtype():
    rng = np.random.default_rng(2)
    features = [tf.constant(rng.normal(size=(1, 13, 17, 2)), tf.bfloat16),
                tf.constant(rng.normal(size=(1, 7, 9, 2)), tf.bfloat16)]
    boxes = _random_rois(rng, (1, 6), (52, 68))
    run = tf.function(lambda f, b, l: roi_align(f, b, l, [4, 8], 2))
    # Every box on level 1: level 0's subset is empty. Out-of-range levels are clamped.
    levels = np.array([[1, 1, 1, 1, 5, 1]], np.int32)
    got = run(features, tf.constant(boxes), tf.constant(levels))
    assert got.dtype == tf.bfloat16 and got.shape == (1, 6, 2, 2, 2)
    level1 = tf.cast(features[1], tf.float32).numpy()[0]
    want = np.array([_roi_align_reference(level1, box, 1 / 8, 2, 2, True) for box in boxes[0]])
    np.testing.assert_allclose(tf.cast(got, tf.float32).numpy()[0], want, atol=2e-2)


def test_gradient_is_the_adjoint():
    rng = np.random.default_rng(3)
    features = [tf.constant(rng.normal(size=(2, 13, 17, 3)), tf.float32),
                tf.constant(rng.normal(size=(2, 7, 9, 3)), tf.float32)]
    boxes = _random_rois(rng, (2, 10), (52, 68))
    levels = rng.integers(0, 2, (2, 10)).astype(np.int32)
    weights = rng.normal(size=(2, 10, 4, 4, 3)).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(features)
        loss = tf.reduce_sum(roi_align(features, boxes, levels, [4, 8], 4) * weights)
    grads = tape.gradient(loss, features)
    for grad in grads:
        assert np.all(np.isfinite(grad.numpy())) and np.abs(grad.numpy()).sum() > 0
    # RoIAlign is linear in the features, so <grad, F'> = <weights, roi_align(F')> for any F'.
    probes = [tf.constant(rng.normal(size=f.shape), tf.float32) for f in features]
    lhs = sum(float(tf.reduce_sum(g * p)) for g, p in zip(grads, probes))
    rhs = float(tf.reduce_sum(roi_align(probes, boxes, levels, [4, 8], 4) * weights))
    assert lhs == pytest.approx(rhs, rel=1e-4)


def test_gradient_of_many_overlapping_rois_is_exact():
    # TensorFlow's CPU CropAndResizeGradImage splits boxes over threads that race on the shared
    # image gradient; at this size (two threads' worth of work, RoIs overlapping everywhere)
    # it lost 10-30% of the largest gradient value. The adjoint identity holds only for an
    # exact gradient, and each run must give the same one.
    rng = np.random.default_rng(5)
    features = [tf.constant(rng.normal(size=(2, 18, 18, 64)), tf.float32)]
    # Corners sorted per axis: [[y1, x1], [y2, x2]] -> [y1, x1, y2, x2].
    boxes = np.sort(rng.uniform(0, 72, (2, 200, 2, 2)), axis=2).reshape(2, 200, 4)
    boxes = boxes.astype(np.float32)
    levels = np.zeros((2, 200), np.int32)
    weights = tf.constant(rng.normal(size=(2, 200, 7, 7, 64)), tf.float32)

    def gradient():
        with tf.GradientTape() as tape:
            tape.watch(features)
            loss = tf.reduce_sum(roi_align(features, boxes, levels, [4], 7) * weights)
        return tape.gradient(loss, features)[0]

    grads = gradient()
    probe = tf.constant(rng.normal(size=features[0].shape), tf.float32)
    lhs = float(tf.reduce_sum(tf.cast(grads, tf.float64) * tf.cast(probe, tf.float64)))
    rhs = float(tf.reduce_sum(tf.cast(roi_align([probe], boxes, levels, [4], 7), tf.float64)
                              * tf.cast(weights, tf.float64)))
    assert lhs == pytest.approx(rhs, rel=1e-5)
    for _ in range(3):
        np.testing.assert_allclose(gradient().numpy(), grads.numpy(), rtol=0,
                                   atol=1e-5 * np.abs(grads.numpy()).max())


def test_assign_levels():
    sides = np.array([10.0, 55.9, 56.0, 111.9, 112.0, 223.9, 224.0, 447.9, 448.0, 1000.0, 0.0])
    boxes = np.stack([np.zeros_like(sides), np.full_like(sides, 5.0), sides, sides + 5.0], axis=-1)
    got = assign_levels(boxes[None].astype(np.float32), 2, 5).numpy()
    np.testing.assert_array_equal(got, [[2, 2, 2, 2, 3, 3, 4, 4, 5, 5, 2]])
    rng = np.random.default_rng(4)
    boxes = _random_rois(rng, (3, 50), (800, 800))
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    want = np.clip(np.floor(4 + np.log2(np.sqrt(area) / 224) + 1e-6), 2, 5)
    np.testing.assert_array_equal(assign_levels(boxes, 2, 5).numpy(), want)
    assert assign_levels(boxes, 2, 5).dtype == tf.int32


def _bilinear_zero(image, y, x):
    """Bilinear at index coordinates (y, x), image values at integer points, zero outside."""
    height, width = image.shape[:2]
    y0, x0 = math.floor(y), math.floor(x)
    total = np.zeros(image.shape[2:])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                total = total + wy * wx * image[yy, xx]
    return total


def test_crop_and_resize_aligned_samples_bin_centres_with_zero_outside():
    rng = np.random.default_rng(5)
    images = rng.normal(size=(2, 9, 11, 2)).astype(np.float32)
    boxes = _random_rois(rng, (12,), (9, 11))
    box_indices = rng.integers(0, 2, 12).astype(np.int32)
    got = crop_and_resize_aligned(images, boxes, box_indices, (3, 5)).numpy()
    assert got.shape == (12, 3, 5, 2)
    for r, (y1, x1, y2, x2) in enumerate(boxes):
        for i in range(3):
            for j in range(5):
                # Bin centre in pixel coordinates, minus 0.5 for index coordinates.
                y = y1 + (i + 0.5) * (y2 - y1) / 3 - 0.5
                x = x1 + (j + 0.5) * (x2 - x1) / 5 - 0.5
                want = _bilinear_zero(images[box_indices[r]], y, x)
                np.testing.assert_allclose(got[r, i, j], want, atol=1e-5)
    # On the image border (half way from the first pixel centre to the zeros) half the pixel.
    edge = crop_and_resize_aligned(images, np.array([[-0.5, 0.0, 0.5, 1.0]], np.float32), [0], 1)
    np.testing.assert_allclose(edge.numpy()[0, 0, 0], 0.5 * images[0, 0, 0], atol=1e-6)


def test_bad_arguments_raise():
    features = [tf.zeros([1, 4, 4, 1])]
    boxes, levels = tf.zeros([1, 1, 4]), tf.zeros([1, 1], tf.int32)
    with pytest.raises(ValueError, match="stride"):
        roi_align(features, boxes, levels, [4, 8], 2)
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(features, boxes, levels, [4], 2, sampling_ratio=0)
