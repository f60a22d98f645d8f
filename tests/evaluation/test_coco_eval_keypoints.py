"""Keypoint AP through CocoEvaluator: the model's continuous frame, rescaling, OKS sigmas."""

import numpy as np
import pytest

from mask_rcnn_tf.data.coco import load_coco
from mask_rcnn_tf.data.figures import OKS_SIGMA, make_figures
from mask_rcnn_tf.evaluation.coco_eval import CocoEvaluator, detections_to_coco


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("figures") / "data"
    make_figures(output_dir, num_images=6, seed=11)
    return load_coco(output_dir / "annotations.json", output_dir / "images")


def _outputs(dataset, record, scale, keypoint_noise=0.0, rng=None):
    """The ground truth of one image as model outputs in a frame resized by `scale`."""
    n = len(record.classes)
    keypoints = record.keypoints.copy()
    if keypoint_noise:
        keypoints[..., :2] += rng.normal(0, keypoint_noise, keypoints[..., :2].shape)
    keypoints[..., :2] *= scale
    keypoints[..., 2] = 1.0  # per-keypoint scores: COCOeval ignores them
    return {
        "detection_boxes": (record.boxes * scale)[None],
        "detection_scores": np.ones([1, n], np.float32),
        "detection_classes": record.classes[None],
        "detection_keypoints": keypoints[None],
        "num_detections": np.array([n]),
        "image_ids": np.array([record.image_id]),
        "scales": np.array([scale], np.float32),
        "original_sizes": np.array([[record.height, record.width]]),
    }


def _keypoint_ap(dataset, noise=0.0):
    evaluator = CocoEvaluator(dataset.coco, [1], iou_types=("keypoints",), verbose=False,
                              keypoint_sigmas=[OKS_SIGMA] * 7)
    rng = np.random.default_rng(0)
    for record in dataset.records:
        evaluator.update(_outputs(dataset, record, 1.5, noise, rng))
    return evaluator.evaluate()["keypoints"]


def test_ground_truth_scores_one_and_noise_lowers_it(figures):
    metrics = _keypoint_ap(figures)
    assert list(metrics) == ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm",
                             "ARl"]
    assert metrics["AP"] == pytest.approx(1.0)
    assert _keypoint_ap(figures, noise=3.0)["AP"] < 0.9


def test_results_are_in_coco_pixel_index_frame(figures):
    record = figures.records[0]
    results = detections_to_coco(_outputs(figures, record, 2.0), [1])
    raw = figures.coco.loadAnns(figures.coco.getAnnIds(imgIds=[record.image_id]))
    for result, annotation in zip(results, raw):
        got = np.array(result["keypoints"]).reshape(7, 3)[:, :2]
        want = np.array(annotation["keypoints"]).reshape(7, 3)[:, :2]
        np.testing.assert_allclose(got, want, atol=1e-3)


def test_keypoints_need_sigmas(figures):
    with pytest.raises(ValueError, match="keypoint_sigmas"):
        CocoEvaluator(figures.coco, [1], iou_types=("keypoints",))
