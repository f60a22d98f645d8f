"""pycocotools and faster-coco-eval give the same COCO numbers on the same detections."""

import numpy as np
import pytest

from mask_rcnn_tf.data.coco import load_coco
from mask_rcnn_tf.data.shapes import make_shapes
from mask_rcnn_tf.evaluation.coco_eval import CocoEvaluator

pytest.importorskip("faster_coco_eval")

SLOTS, MASK = 6, 14


def _detections(dataset, rng):
    """One batch per image: ground-truth boxes jittered by up to 20% (some with the wrong
    class), plus random false positives; box-crop masks with ~1/10 of the pixels off at
    random; random scores."""
    for record in dataset.records:
        n = len(record.boxes)
        boxes = np.zeros([1, SLOTS, 4], np.float32)
        size = np.array([record.height, record.width] * 2, np.float32)
        sides = record.boxes[:, 2:] - record.boxes[:, :2]
        jitter = rng.uniform(-0.2, 0.2, [n, 4]) * np.tile(sides, 2)
        boxes[0, :n] = np.clip(record.boxes + jitter, 0, size)
        extra = np.sort(rng.uniform(0, 1, [SLOTS - n, 2, 2]), axis=1).reshape(-1, 4) * size
        boxes[0, n:] = extra[:, [0, 2, 1, 3]]
        boxes[0] = np.maximum(boxes[0], boxes[0][:, [0, 1, 0, 1]] + [0, 0, 2, 2])
        classes = np.concatenate([record.classes, rng.integers(1, 4, SLOTS - n)])
        classes[rng.uniform(size=SLOTS) < 0.2] = rng.integers(1, 4)
        yield {
            "detection_boxes": boxes,
            "detection_scores": rng.uniform(0.05, 1, [1, SLOTS]).astype(np.float32),
            "detection_classes": classes[None].astype(np.int32),
            "num_detections": np.array([SLOTS - int(rng.integers(0, 2))]),
            "detection_masks": rng.uniform(0.2, 1.1, [1, SLOTS, MASK, MASK]).astype(np.float32),
            "image_ids": np.array([record.image_id]),
            "scales": np.array([1.0]),
            "original_sizes": np.array([[record.height, record.width]]),
        }


def test_faster_coco_eval_gives_the_same_numbers(tmp_path):
    make_shapes(tmp_path / "shapes", num_images=25, seed=11, image_size=96)
    dataset = load_coco(tmp_path / "shapes" / "annotations.json", tmp_path / "shapes" / "images")
    category_ids = [c for c, _ in dataset.categories]
    metrics = {}
    for backend in ("pycocotools", "faster_coco_eval"):
        evaluator = CocoEvaluator(dataset.coco, category_ids, verbose=False, backend=backend)
        for batch in _detections(dataset, np.random.default_rng(0)):
            evaluator.update(batch)
        metrics[backend] = evaluator.evaluate()
    reference = metrics["pycocotools"]
    assert 0.1 < reference["bbox"]["AP"] < 0.9 and 0.01 < reference["segm"]["AP"] < 0.9
    for iou_type in ("bbox", "segm"):
        for name, value in reference[iou_type].items():
            assert metrics["faster_coco_eval"][iou_type][name] == pytest.approx(value, abs=1e-4), \
                (iou_type, name)


def test_unknown_backend_is_refused(tmp_path):
    make_shapes(tmp_path / "shapes", num_images=2, seed=1, image_size=64)
    dataset = load_coco(tmp_path / "shapes" / "annotations.json", tmp_path / "shapes" / "images")
    with pytest.raises(ValueError, match="backend must be one of pycocotools, faster_coco_eval"):
        CocoEvaluator(dataset.coco, [1, 2, 3], backend="detectron")
