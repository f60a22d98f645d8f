"""Mask ops against NumPy references written from the definitions: bin-centre sampling with
bilinear interpolation between pixel centres and zero outside the sampled map."""

import math

import numpy as np
import pytest
import tensorflow as tf

from mask_rcnn_tf.ops.mask_ops import crop_masks, mask_targets, paste_masks, paste_masks_numpy


def _sample(image, y, x):
    """Bilinear value of a 2-D map at pixel coordinates (y, x); pixel k's centre is k + 0.5."""
    y, x = y - 0.5, x - 0.5
    y0, x0 = math.floor(y), math.floor(x)
    total = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < image.shape[0] and 0 <= xx < image.shape[1]:
                total += wy * wx * image[yy, xx]
    return total


def _bin_centres(box, size):
    y1, x1, y2, x2 = box
    ys = y1 + (np.arange(size) + 0.5) * (y2 - y1) / size
    xs = x1 + (np.arange(size) + 0.5) * (x2 - x1) / size
    return ys, xs


def _random_masks(rng, shape):
    # Mostly 0 / high values like masks, but fractional so interpolation errors show.
    occupied = rng.random(shape) < 0.6
    return (occupied * rng.uniform(0.5, 1.0, shape)).astype(np.float32)


def _random_boxes(rng, count, extent):
    y1 = rng.uniform(-5, extent[0] - 5, count)
    x1 = rng.uniform(-5, extent[1] - 5, count)
    return np.stack([y1, x1, y1 + rng.uniform(2, extent[0] / 2, count),
                     x1 + rng.uniform(2, extent[1] / 2, count)], axis=1).astype(np.float32)


def test_crop_masks_matches_reference():
    rng = np.random.default_rng(0)
    masks = _random_masks(rng, (4, 20, 24))
    boxes = _random_boxes(rng, 4, (20, 24))
    got = crop_masks(masks, boxes, 7).numpy()
    assert got.shape == (4, 7, 7)
    for n in range(4):
        ys, xs = _bin_centres(boxes[n], 7)
        want = np.array([[_sample(masks[n], y, x) for x in xs] for y in ys])
        np.testing.assert_allclose(got[n], want, atol=1e-5)


def test_mask_targets_sample_the_crop_at_roi_bin_centres():
    rng = np.random.default_rng(1)
    batch, num_gt, num_rois, crop, out = 2, 3, 5, 12, 6
    crops = rng.random((batch, num_gt, crop, crop)).astype(np.float32)
    gt_boxes = _random_boxes(rng, batch * num_gt, (60, 60)).reshape(batch, num_gt, 4)
    rois = _random_boxes(rng, batch * num_rois, (60, 60)).reshape(batch, num_rois, 4)
    matched = rng.integers(0, num_gt, (batch, num_rois)).astype(np.int32)
    gt_boxes[1, 2] = 0.0  # an empty padding box: its targets must stay finite
    matched[1, 0] = 2
    got = mask_targets(crops, gt_boxes, rois, matched, out).numpy()
    assert got.shape == (batch, num_rois, out, out)
    assert np.all(np.isfinite(got))
    for b in range(batch):
        for r in range(num_rois):
            g = matched[b, r]
            gy1, gx1, gy2, gx2 = gt_boxes[b, g]
            if gy2 <= gy1:
                continue
            ys, xs = _bin_centres(rois[b, r], out)
            # Bin centre in the crop's pixel frame: the crop's S cells cover the gt box.
            want = np.array([[_sample(crops[b, g], (y - gy1) * crop / (gy2 - gy1),
                                      (x - gx1) * crop / (gx2 - gx1)) for x in xs] for y in ys])
            np.testing.assert_allclose(got[b, r], want, atol=1e-5)


def test_mask_targets_of_the_gt_box_itself_return_the_crop():
    rng = np.random.default_rng(2)
    crops = rng.random((1, 2, 8, 8)).astype(np.float32)
    gt_boxes = np.array([[[3.0, 4.0, 19.0, 30.0], [10.0, 10.0, 14.0, 50.0]]], np.float32)
    got = mask_targets(crops, gt_boxes, gt_boxes[:, ::-1], np.array([[1, 0]], np.int32), 8)
    np.testing.assert_allclose(got.numpy()[0], crops[0, ::-1], atol=1e-5)


def _paste_reference(mask, box, image_size):
    y1, x1, y2, x2 = box
    out = np.zeros(image_size)
    if y2 <= y1 or x2 <= x1:
        return out
    for i in range(image_size[0]):
        for j in range(image_size[1]):
            # Pixel centre in the mask's pixel frame.
            out[i, j] = _sample(mask, (i + 0.5 - y1) * mask.shape[0] / (y2 - y1),
                                (j + 0.5 - x1) * mask.shape[1] / (x2 - x1))
    return out


def test_paste_masks_tf_and_numpy_match_reference():
    rng = np.random.default_rng(3)
    masks = rng.random((2, 3, 10, 10)).astype(np.float32)
    boxes = _random_boxes(rng, 6, (30, 36)).reshape(2, 3, 4)
    boxes[0, 1] = [-8.0, 20.0, 12.5, 45.0]   # leaves the image at the top and the right
    boxes[1, 2] = [5.0, 5.0, 5.0, 15.0]      # empty
    got = paste_masks(masks, boxes, (30, 36)).numpy()
    assert got.shape == (2, 3, 30, 36)
    for b in range(2):
        for n in range(3):
            want = _paste_reference(masks[b, n], boxes[b, n], (30, 36))
            np.testing.assert_allclose(got[b, n], want, atol=1e-5)
            single = paste_masks_numpy(masks[b, n], boxes[b, n], (30, 36))
            assert single.dtype == np.float32
            np.testing.assert_allclose(single, want, atol=1e-5)
            np.testing.assert_allclose(single, got[b, n], atol=1e-5)
    assert not got[1, 2].any()


def test_pasted_ones_threshold_to_the_box():
    mask = np.ones((28, 28), np.float32)
    box = np.array([10.0, 20.0, 50.0, 60.0], np.float32)
    expected = np.zeros((64, 80), bool)
    expected[10:50, 20:60] = True
    tf_paste = paste_masks(mask[None, None], box[None, None], (64, 80)).numpy()[0, 0]
    np_paste = paste_masks_numpy(mask, box, (64, 80))
    for pasted in (tf_paste, np_paste):
        np.testing.assert_array_equal(pasted > 0.5, expected)
    np.testing.assert_allclose(tf_paste, np_paste, atol=1e-5)


@pytest.mark.parametrize("image_size", [(16, 16), (7, 40)])
def test_paste_masks_in_graph(image_size):
    rng = np.random.default_rng(4)
    masks = rng.random((1, 4, 6, 6)).astype(np.float32)
    boxes = _random_boxes(rng, 4, image_size)[None]
    run = tf.function(lambda m, b: paste_masks(m, b, image_size))
    got = run(tf.constant(masks), tf.constant(boxes)).numpy()
    for n in range(4):
        want = paste_masks_numpy(masks[0, n], boxes[0, n], image_size)
        np.testing.assert_allclose(got[0, n], want, atol=1e-5)
