"""The keypoint branch inside MaskRCNN: its loss in training, images without objects, and
detection_keypoints at inference (a tiny stick-figure model)."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from mask_rcnn_tf.config import load_config
from mask_rcnn_tf.modeling.factory import build_model
from tests.modeling.test_mask_rcnn import SIZE, TINY

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
KEYPOINTS = ["model.keypoints.conv_dim=8", "model.keypoints.num_convs=1"]


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    config = load_config(CONFIGS / "figures.yaml", TINY + KEYPOINTS)
    return config, build_model(config.model, image_size=SIZE)


def _batch(with_objects=True):
    rng = np.random.default_rng(0)
    gt_boxes = np.zeros((2, 2, 4), np.float32)
    gt_classes = np.full((2, 2), -1, np.int32)
    gt_masks = np.zeros((2, 2, 16, 16), np.float32)
    gt_keypoints = np.zeros((2, 2, 7, 3), np.float32)
    if with_objects:
        gt_boxes[0, 0] = [4, 4, 40, 30]
        gt_boxes[1, 0] = [10, 20, 60, 50]
        gt_classes[:, 0] = 1
        gt_masks[:, 0] = 1.0
        for b in range(2):
            y1, x1, y2, x2 = gt_boxes[b, 0]
            gt_keypoints[b, 0, :, 0] = rng.uniform(x1, x2, 7)
            gt_keypoints[b, 0, :, 1] = rng.uniform(y1, y2, 7)
            gt_keypoints[b, 0, :, 2] = 2
    return {
        "images": rng.normal(size=(2, SIZE, SIZE, 3)).astype(np.float32),
        "image_sizes": np.array([[64, 64], [64, 64]], np.float32),
        "gt_boxes": gt_boxes, "gt_classes": gt_classes, "gt_masks": gt_masks,
        "gt_keypoints": gt_keypoints,
    }


def test_keypoint_loss_is_trained(tiny):
    _, model = tiny
    assert "keypoint_loss" in model.loss_names
    batch = _batch()
    with tf.GradientTape() as tape:
        outputs = model(batch, training=True)
        loss = model.compute_losses(outputs)["keypoint_loss"]
    # Untrained heatmaps are near uniform: the loss is about log(56 * 56).
    assert 0.5 * np.log(56 * 56) < float(loss) < 2 * np.log(56 * 56)
    assert np.asarray(outputs["keypoint_valid"]).any()
    grads = tape.gradient(loss, model.keypoint_head.trainable_variables)
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
    assert any(np.abs(g.numpy()).sum() > 0 for g in grads)


def test_no_objects_give_zero_keypoint_loss(tiny):
    _, model = tiny
    outputs = model(_batch(with_objects=False), training=True)
    assert float(model.compute_losses(outputs)["keypoint_loss"]) == 0.0


def test_inference_returns_keypoints_inside_their_boxes(tiny):
    config, model = tiny
    outputs = model(_batch(), training=False)
    detections = config.model.roi_heads.detections_per_image
    keypoints = outputs["detection_keypoints"].numpy()
    assert keypoints.shape == (2, detections, 7, 3)
    boxes = outputs["detection_boxes"].numpy()
    for b in range(2):
        n = int(outputs["num_detections"][b])
        assert n > 0
        x, y = keypoints[b, :n, :, 0], keypoints[b, :n, :, 1]
        assert np.all(x >= boxes[b, :n, None, 1] - 1e-3) and np.all(x <= boxes[b, :n, None, 3] + 1e-3)
        assert np.all(y >= boxes[b, :n, None, 0] - 1e-3) and np.all(y <= boxes[b, :n, None, 2] + 1e-3)


def test_one_fit_step_reports_the_keypoint_loss(tiny):
    _, model = tiny
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    batch = {key: value[:1] for key, value in _batch().items()}
    history = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    assert np.isfinite(history.history["keypoint_loss"][0])
