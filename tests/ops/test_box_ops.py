"""box_ops against NumPy formulas written from the definitions (torchvision BoxCoder, IoU)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from mask_rcnn_tf.ops import box_ops


def _random_boxes(rng, shape, low=0.0, high=100.0, min_size=1.0, max_size=40.0):
    y1 = rng.uniform(low, high, shape)
    x1 = rng.uniform(low, high, shape)
    h = rng.uniform(min_size, max_size, shape)
    w = rng.uniform(min_size, max_size, shape)
    return np.stack([y1, x1, y1 + h, x1 + w], axis=-1).astype(np.float32)


def _iou_pair(a, b):
    iy = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ix = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iy * ix
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_box_area_hand_values():
    boxes = tf.constant([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0], [5.0, 5.0, 3.0, 2.0]])
    np.testing.assert_allclose(box_ops.box_area(boxes).numpy(), [6.0, 0.0, 0.0])


def test_box_iou_matches_double_loop():
    rng = np.random.default_rng(0)
    boxes1 = _random_boxes(rng, (2, 9))
    boxes2 = _random_boxes(rng, (2, 11))
    special1 = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 9]], np.float32)
    special2 = np.array([[20, 20, 30, 30],   # disjoint
                         [2, 3, 6, 8],       # contained
                         [0, 0, 10, 10],     # identical
                         [5, 5, 5, 9],       # zero area: union 0 with its twin
                         [3, 3, 3, 3]], np.float32)
    boxes1[0, :4] = special1
    boxes2[0, :5] = special2
    got = box_ops.box_iou(boxes1, boxes2).numpy()
    assert got.shape == (2, 9, 11)
    want = np.array([[[_iou_pair(a, b) for b in boxes2[i]] for a in boxes1[i]] for i in range(2)])
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(got[0, 0, :5], [0.0, 20.0 / 100.0, 1.0, 0.0, 0.0], atol=1e-6)
    assert got[0, 3, 3] == 0.0


def test_box_iou_broadcasts_leading_dims():
    rng = np.random.default_rng(1)
    boxes1 = _random_boxes(rng, (1, 5))
    boxes2 = _random_boxes(rng, (3, 4))
    got = box_ops.box_iou(boxes1, boxes2).numpy()
    assert got.shape == (3, 5, 4)
    want = np.array([[[_iou_pair(a, b) for b in boxes2[i]] for a in boxes1[0]] for i in range(3)])
    np.testing.assert_allclose(got, want, atol=1e-6)


def _encode_reference(gt, anchors, weights):
    # torchvision BoxCoder.encode_single, written in its own xyxy form.
    wy, wx, wh, ww = weights
    ex_w = anchors[:, 3] - anchors[:, 1]
    ex_h = anchors[:, 2] - anchors[:, 0]
    ex_cx = anchors[:, 1] + 0.5 * ex_w
    ex_cy = anchors[:, 0] + 0.5 * ex_h
    gt_w = gt[:, 3] - gt[:, 1]
    gt_h = gt[:, 2] - gt[:, 0]
    gt_cx = gt[:, 1] + 0.5 * gt_w
    gt_cy = gt[:, 0] + 0.5 * gt_h
    return np.stack([wy * (gt_cy - ex_cy) / ex_h, wx * (gt_cx - ex_cx) / ex_w,
                     wh * np.log(gt_h / ex_h), ww * np.log(gt_w / ex_w)], axis=1)


def _decode_reference(deltas, anchors, weights, clamp):
    wy, wx, wh, ww = weights
    h = anchors[:, 2] - anchors[:, 0]
    w = anchors[:, 3] - anchors[:, 1]
    cy = anchors[:, 0] + 0.5 * h
    cx = anchors[:, 1] + 0.5 * w
    pcy = deltas[:, 0] / wy * h + cy
    pcx = deltas[:, 1] / wx * w + cx
    ph = np.exp(np.minimum(deltas[:, 2] / wh, clamp)) * h
    pw = np.exp(np.minimum(deltas[:, 3] / ww, clamp)) * w
    return np.stack([pcy - 0.5 * ph, pcx - 0.5 * pw, pcy + 0.5 * ph, pcx + 0.5 * pw], axis=1)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_matches_reference_and_decode_inverts(weights):
    rng = np.random.default_rng(2)
    gt = _random_boxes(rng, (50,))
    anchors = _random_boxes(rng, (50,))
    deltas = box_ops.encode_boxes(gt, anchors, weights).numpy()
    want = _encode_reference(gt, anchors, weights)
    np.testing.assert_allclose(deltas, want, rtol=1e-5, atol=1e-5)
    decoded = box_ops.decode_boxes(deltas, anchors, weights).numpy()
    np.testing.assert_allclose(decoded, gt, atol=1e-3)
    batched = box_ops.encode_boxes(gt.reshape(5, 10, 4), anchors.reshape(5, 10, 4), weights)
    np.testing.assert_allclose(batched.numpy().reshape(50, 4), deltas, atol=1e-6)


def test_decode_clamps_scale():
    rng = np.random.default_rng(3)
    anchors = _random_boxes(rng, (20,))
    deltas = rng.normal(0.0, 3.0, (20, 4)).astype(np.float32)
    deltas[:4, 2:] = 50.0  # far beyond the clamp
    weights = (10.0, 10.0, 5.0, 5.0)
    clamp = math.log(1000.0 / 16)
    got = box_ops.decode_boxes(deltas, anchors, weights).numpy()
    want = _decode_reference(deltas.astype(np.float64), anchors.astype(np.float64), weights, clamp)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    assert np.all(np.isfinite(got))
    heights = got[:4, 2] - got[:4, 0]
    np.testing.assert_allclose(heights, (anchors[:4, 2] - anchors[:4, 0]) * 1000.0 / 16, rtol=1e-5)


def test_clip_boxes_any_middle_dims():
    boxes = np.array([[-5.0, -3.0, 50.0, 70.0], [10.0, 20.0, 30.0, 40.0]], np.float32)
    boxes = np.broadcast_to(boxes, (2, 3, 2, 4))
    image_size = tf.constant([[40, 60], [100, 30]], tf.int32)
    got = box_ops.clip_boxes(boxes, image_size).numpy()
    assert got.shape == (2, 3, 2, 4)
    np.testing.assert_array_equal(got[0, 1], [[0, 0, 40, 60], [10, 20, 30, 40]])
    np.testing.assert_array_equal(got[1, 2], [[0, 0, 50, 30], [10, 20, 30, 30]])
    flat = box_ops.clip_boxes(boxes[:, 0], tf.cast(image_size, tf.float32)).numpy()
    np.testing.assert_array_equal(flat, got[:, 0])


def test_clip_boxes_rejects_unbatched_size():
    with pytest.raises(ValueError, match="image_size"):
        box_ops.clip_boxes(tf.zeros([1, 3, 4]), tf.constant([10, 10]))
