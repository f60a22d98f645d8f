"""DetectionGenerator against a NumPy restatement of torchvision's postprocess_detections:
softmax, drop the background column, class-specific decode (weights 10, 10, 5, 5), clip, drop
small boxes and low scores, greedy NMS per class, top D over all classes."""

import math

import numpy as np
import pytest

from mask_rcnn_tf.layers.detections import DetectionGenerator

WEIGHTS = (10.0, 10.0, 5.0, 5.0)
CLAMP = math.log(1000.0 / 16)


def _np_decode(deltas, rois):
    """deltas [..., 4] (dy, dx, dh, dw) weighted; rois [..., 4] yxyx -> boxes [..., 4] yxyx."""
    h = rois[..., 2] - rois[..., 0]
    w = rois[..., 3] - rois[..., 1]
    cy = rois[..., 0] + 0.5 * h + deltas[..., 0] / WEIGHTS[0] * h
    cx = rois[..., 1] + 0.5 * w + deltas[..., 1] / WEIGHTS[1] * w
    half_h = 0.5 * np.exp(np.minimum(deltas[..., 2] / WEIGHTS[2], CLAMP)) * h
    half_w = 0.5 * np.exp(np.minimum(deltas[..., 3] / WEIGHTS[3], CLAMP)) * w
    return np.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=-1)


def _np_iou(box, boxes):
    ih = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iw = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ih * iw
    union = ((box[2] - box[0]) * (box[3] - box[1])
             + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)
    return inter / union


def _np_detections(logits, deltas, rois, valid, image_size, score_threshold, nms_threshold,
                   max_detections, min_size):
    """One image: returns (boxes [n, 4], scores [n], classes [n] in 1..K-1), n <= D."""
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = exp / exp.sum(axis=-1, keepdims=True)
    candidates = []
    for k in range(1, logits.shape[-1]):
        boxes = _np_decode(deltas[:, k], rois)
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, image_size[0])
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, image_size[1])
        keep = (valid & (probs[:, k] > score_threshold)
                & (boxes[:, 2] - boxes[:, 0] >= min_size) & (boxes[:, 3] - boxes[:, 1] >= min_size))
        order = [i for i in np.argsort(-probs[:, k]) if keep[i]]
        while order:
            best, order = order[0], order[1:]
            candidates.append((probs[best, k], boxes[best], k))
            if order:
                order = [i for i, iou in zip(order, _np_iou(boxes[best], boxes[order]))
                         if iou <= nms_threshold]
    candidates.sort(key=lambda c: -c[0])
    candidates = candidates[:max_detections]
    return (np.array([c[1] for c in candidates]).reshape(-1, 4),
            np.array([c[0] for c in candidates]), np.array([c[2] for c in candidates], int))


def _random_inputs(rng, batch=2, num=40, num_classes=4):
    # RoIs around a few centres so that many overlap and NMS has work to do.
    centres = rng.uniform(10, 90, (batch, 4, 2))[:, rng.integers(0, 4, num)]
    sizes = rng.uniform(8, 40, (batch, num, 2))
    rois = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=-1).astype(np.float32)
    logits = rng.normal(0, 2, (batch, num, num_classes)).astype(np.float32)
    deltas = rng.normal(0, 1, (batch, num, num_classes, 4)).astype(np.float32)
    valid = rng.random((batch, num)) > 0.2
    return logits, deltas, rois, valid


@pytest.mark.parametrize("score_threshold, nms_threshold, max_detections", [
    (0.05, 0.5, 15),  # more candidates than D: the top-D cut matters
    (0.3, 0.3, 100),  # fewer: padding rows
])
def test_matches_numpy_reference(score_threshold, nms_threshold, max_detections):
    rng = np.random.default_rng(0)
    logits, deltas, rois, valid = _random_inputs(rng)
    image_sizes = np.array([[100, 100], [70, 85]], np.float32)
    layer = DetectionGenerator(score_threshold, nms_threshold, max_detections, WEIGHTS, 1e-2)
    out = {k: np.asarray(v) for k, v in layer(logits, deltas, rois, valid, image_sizes).items()}
    assert out["detection_boxes"].shape == (2, max_detections, 4)
    assert out["detection_scores"].shape == out["detection_classes"].shape == (2, max_detections)
    assert out["detection_classes"].dtype == np.int32 and out["num_detections"].dtype == np.int32
    for b in range(2):
        boxes, scores, classes = _np_detections(
            logits[b].astype(np.float64), deltas[b].astype(np.float64),
            rois[b].astype(np.float64), valid[b], image_sizes[b], score_threshold,
            nms_threshold, max_detections, 1e-2)
        n = len(scores)
        assert n > 0
        assert out["num_detections"][b] == n
        np.testing.assert_allclose(out["detection_scores"][b, :n], scores, rtol=1e-5)
        np.testing.assert_array_equal(out["detection_classes"][b, :n], classes)
        np.testing.assert_allclose(out["detection_boxes"][b, :n], boxes, rtol=1e-4, atol=1e-3)
        assert not out["detection_scores"][b, n:].any()
        assert not out["detection_classes"][b, n:].any()


def test_background_column_and_invalid_rois_are_ignored():
    rois = np.array([[[10, 10, 50, 50], [60, 60, 90, 90], [0, 0, 30, 30]]], np.float32)
    logits = np.array([[
        [10.0, 0.0, 0.0],  # background: foreground probabilities ~4.5e-5
        [0.0, 0.0, 5.0],  # class 2
        [0.0, 9.0, 0.0],  # class 1, but the RoI is invalid
    ]], np.float32)
    deltas = np.zeros((1, 3, 3, 4), np.float32)
    valid = np.array([[True, True, False]])
    # A zero threshold: nothing but the valid flag and the background column remove rows.
    layer = DetectionGenerator(0.0, 0.5, 5, WEIGHTS, 1e-2)
    out = layer(logits, deltas, rois, valid, np.array([[100, 100]], np.float32))
    num = int(out["num_detections"][0])
    classes = out["detection_classes"].numpy()[0, :num]
    boxes = out["detection_boxes"].numpy()[0, :num]
    # Rows 0 (both classes, tiny scores) and 1 (both classes): 4 detections, none from row 2.
    assert num == 4
    np.testing.assert_array_equal(classes[0], 2)
    np.testing.assert_allclose(boxes[0], [60, 60, 90, 90])
    assert set(classes.tolist()) == {1, 2}
    assert not np.any(np.all(np.isclose(boxes, [0, 0, 30, 30]), axis=-1))
    assert out["detection_scores"].numpy()[0, 0] == pytest.approx(np.exp(5) / (np.exp(5) + 2))


def test_get_config_round_trip():
    layer = DetectionGenerator(0.05, 0.5, 100, WEIGHTS, 1e-2)
    clone = DetectionGenerator.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
