"""NMS against a NumPy greedy reference (torchvision semantics: suppress IoU > threshold,
keep score > score_threshold)."""

import numpy as np
import tensorflow as tf

from mask_rcnn_tf.ops.nms import nms_padded, per_class_nms


def _iou_one_to_many(box, boxes):
    iy = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ix = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iy * ix
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def _greedy_nms(boxes, scores, iou_threshold, score_threshold):
    """Indices kept, by descending score."""
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] > score_threshold]
    keep = []
    while order:
        best, order = order[0], order[1:]
        keep.append(best)
        if order:
            ious = _iou_one_to_many(boxes[best], boxes[order])
            order = [i for i, iou in zip(order, ious) if iou <= iou_threshold]
    return keep


def _clustered_boxes(rng, shape, extent=200.0):
    # Boxes jittered around a few centres, so that many overlap strongly.
    centres = rng.uniform(0, extent, (8, 2))
    pick = centres[rng.integers(0, 8, shape)]
    cy = pick[..., 0] + rng.normal(0, 6, shape)
    cx = pick[..., 1] + rng.normal(0, 6, shape)
    h = rng.uniform(10, 50, shape)
    w = rng.uniform(10, 50, shape)
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1).astype(np.float32)


def test_nms_padded_matches_greedy_reference():
    rng = np.random.default_rng(0)
    boxes = _clustered_boxes(rng, (2, 300))
    boxes[1, 0] = [-20.0, -30.0, -1.0, -2.0]  # all coordinates negative: still a valid box
    scores = rng.random((2, 300)).astype(np.float32)
    scores[1, 0] = 0.999
    for max_output, iou_threshold, score_threshold in [(20, 0.5, float("-inf")), (400, 0.7, 0.3)]:
        indices, valid = nms_padded(boxes, scores, max_output, iou_threshold, score_threshold)
        assert indices.shape == valid.shape == (2, max_output)
        for b in range(2):
            want = _greedy_nms(boxes[b], scores[b], iou_threshold, score_threshold)[:max_output]
            np.testing.assert_array_equal(valid.numpy()[b], np.arange(max_output) < len(want))
            np.testing.assert_array_equal(indices.numpy()[b, :len(want)], want)
            assert not indices.numpy()[b, len(want):].any()
        assert indices.numpy()[1, 0] == 0


def test_nms_padded_in_graph():
    rng = np.random.default_rng(1)
    boxes = _clustered_boxes(rng, (3, 50))
    scores = rng.random((3, 50)).astype(np.float32)
    run = tf.function(lambda b, s: nms_padded(b, s, 10, 0.5))
    indices, valid = run(tf.constant(boxes), tf.constant(scores))
    assert indices.shape == (3, 10)
    for b in range(3):
        want = _greedy_nms(boxes[b], scores[b], 0.5, float("-inf"))[:10]
        np.testing.assert_array_equal(indices.numpy()[b][valid.numpy()[b]], want)


def _per_class_reference(boxes, scores, max_detections, iou_threshold, score_threshold):
    found = []
    for k in range(scores.shape[1]):
        for i in _greedy_nms(boxes[:, k], scores[:, k], iou_threshold, score_threshold):
            found.append((scores[i, k], k, boxes[i, k]))
    found.sort(key=lambda item: -item[0])
    return found[:max_detections]


def test_per_class_nms_matches_reference():
    rng = np.random.default_rng(2)
    batch, num, classes = 2, 60, 4
    boxes = _clustered_boxes(rng, (batch, num, classes))
    scores = rng.random((batch, num, classes)).astype(np.float32)
    scores[1] *= 0.1  # second image: nearly everything under the threshold
    for max_detections in (10, 200):
        out = per_class_nms(boxes, scores, max_detections, 0.5, 0.05)
        assert out["boxes"].shape == (batch, max_detections, 4)
        assert out["classes"].dtype == tf.int32 and out["num_detections"].dtype == tf.int32
        for b in range(batch):
            want = _per_class_reference(boxes[b], scores[b], max_detections, 0.5, 0.05)
            count = len(want)
            assert out["num_detections"].numpy()[b] == count
            np.testing.assert_allclose(out["scores"].numpy()[b, :count], [w[0] for w in want])
            np.testing.assert_array_equal(out["classes"].numpy()[b, :count], [w[1] for w in want])
            np.testing.assert_allclose(out["boxes"].numpy()[b, :count],
                                       np.array([w[2] for w in want]).reshape(-1, 4))
            assert np.all(out["classes"].numpy()[b, count:] == -1)
            assert not out["scores"].numpy()[b, count:].any()
            assert not out["boxes"].numpy()[b, count:].any()


def test_per_class_nms_keeps_overlapping_boxes_of_different_classes():
    box = np.array([10.0, 10.0, 50.0, 50.0], np.float32)
    boxes = np.broadcast_to(box, (1, 2, 2, 4)).copy()
    scores = np.array([[[0.9, 0.05], [0.8, 0.7]]], np.float32)
    out = per_class_nms(boxes, scores, 5, 0.5, 0.05)
    # Class 0 keeps its best copy; class 1 keeps its own; 0.05 is not > 0.05.
    assert out["num_detections"].numpy()[0] == 2
    np.testing.assert_array_equal(out["classes"].numpy()[0], [0, 1, -1, -1, -1])
    np.testing.assert_allclose(out["scores"].numpy()[0, :2], [0.9, 0.7])
