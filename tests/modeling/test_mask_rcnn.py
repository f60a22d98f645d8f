"""The MaskRCNN model end to end: a tiny shapes model for training, images without objects and
inference outputs; the full R-50-FPN for its parameter count and the acceptance forward pass."""

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from mask_rcnn_tf.config import load_config
from mask_rcnn_tf.data.pipeline import preprocess_image
from mask_rcnn_tf.modeling.factory import build_model, count_parameters
from mask_rcnn_tf.modeling.mask_rcnn import LOSS_NAMES
from mask_rcnn_tf.ops.mask_ops import paste_masks

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SIZE = 64
TINY = [
    "model.backbone.base_width=16", "model.fpn.num_channels=16",
    "model.rpn.pre_nms_top_n_train=100", "model.rpn.pre_nms_top_n_test=50",
    "model.rpn.post_nms_top_n_train=50", "model.rpn.post_nms_top_n_test=30",
    "model.rpn.batch_size_per_image=32", "model.roi_heads.batch_size_per_image=16",
    "model.roi_heads.box_fc_dim=32", "model.roi_heads.mask_conv_dim=8",
    "model.roi_heads.mask_num_convs=1", "model.roi_heads.detections_per_image=10",
    # Untrained scores are low: a zero threshold lets detections through to check their form.
    "model.roi_heads.score_threshold=0.0",
]
# torchvision.models.detection.maskrcnn_resnet50_fpn(num_classes=91): sum of p.numel().
TORCHVISION_MASKRCNN_R50_FPN_PARAMETERS = 44_401_393


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    config = load_config(CONFIGS / "shapes.yaml", TINY)
    return config, build_model(config.model, image_size=SIZE)


def _batch(with_objects=True):
    """Two 64 x 64 inputs as data.pipeline yields them; the second image is 48 x 56 inside."""
    rng = np.random.default_rng(0)
    gt_boxes = np.zeros((2, 3, 4), np.float32)
    gt_classes = np.full((2, 3), -1, np.int32)
    gt_masks = np.zeros((2, 3, 16, 16), np.float32)
    if with_objects:
        gt_boxes[0, :2] = [[4, 4, 30, 30], [20, 30, 60, 62]]
        gt_boxes[1, 0] = [10, 10, 40, 50]
        gt_classes[0, :2] = [1, 3]
        gt_classes[1, 0] = 2
        gt_masks[gt_classes > 0] = rng.random((3, 16, 16)) > 0.3
    return {
        "images": rng.normal(size=(2, SIZE, SIZE, 3)).astype(np.float32),
        "image_sizes": np.array([[64, 64], [48, 56]], np.float32),
        "gt_boxes": gt_boxes,
        "gt_classes": gt_classes,
        "gt_masks": gt_masks,
    }


def test_one_training_step_gives_finite_losses_and_changes_weights(tiny):
    _, model = tiny
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01))
    before = [v.numpy().copy() for v in model.trainable_variables]
    history = model.fit(_batch(), batch_size=2, epochs=1, verbose=0).history
    for name in ("loss",) + LOSS_NAMES:
        assert len(history[name]) == 1 and np.isfinite(history[name][0]), (name, history)
        assert history[name][0] > 0, name
    unchanged = [v.path for v, old in zip(model.trainable_variables, before)
                 if np.array_equal(v.numpy(), old)]
    # P5 (stride 32, 128-pixel anchors on a 64-pixel image) reaches the losses only through
    # RPN anchors that are all background and rarely among the 32 sampled: its output conv
    # may get no gradient in one step. Every other weight must move.
    assert all("output_p5" in path for path in unchanged), unchanged


def test_mask_targets_binary_or_soft(tiny):
    config, model = tiny
    outputs = model(_batch(), training=True)
    foreground = outputs["mask_is_foreground"].numpy()
    binary = outputs["mask_targets"].numpy()[foreground]
    assert foreground.any() and set(np.unique(binary)) <= {0.0, 1.0}
    # torchvision trains on the resampled masks as they are: values between 0 and 1 on edges.
    soft_model = build_model(dataclasses.replace(config.model, roi_heads=dataclasses.replace(
        config.model.roi_heads, mask_target_threshold=None)), image_size=SIZE)
    soft_model.set_weights(model.get_weights())
    outputs = soft_model(_batch(), training=True)
    soft = outputs["mask_targets"].numpy()[outputs["mask_is_foreground"].numpy()]
    assert soft.min() >= 0.0 and soft.max() <= 1.0
    assert np.any((soft > 0.01) & (soft < 0.99))


def test_images_without_objects(tiny):
    _, model = tiny
    data = _batch(with_objects=False)
    with tf.GradientTape() as tape:
        loss_values = model.compute_losses(model(data, training=True))
        total = tf.add_n(list(loss_values.values()))
    for name in ("box_loss", "mask_loss", "rpn_box_loss"):
        assert float(loss_values[name]) == 0.0, name
    for name in ("rpn_objectness_loss", "box_class_loss"):
        assert np.isfinite(float(loss_values[name])) and float(loss_values[name]) > 0, name
    assert np.isfinite(float(total))
    grads = tape.gradient(total, model.trainable_variables)
    for variable, grad in zip(model.trainable_variables, grads):
        if grad is not None:
            assert np.all(np.isfinite(grad.numpy())), variable.path


def test_inference_outputs(tiny):
    config, model = tiny
    data = _batch()
    outputs = {k: v.numpy() for k, v in
               model({"images": data["images"], "image_sizes": data["image_sizes"]},
                     training=False).items()}
    num_det = config.model.roi_heads.detections_per_image
    mask_size = 2 * config.model.roi_heads.mask_roi_size
    assert outputs["detection_boxes"].shape == (2, num_det, 4)
    assert outputs["detection_scores"].shape == (2, num_det)
    assert outputs["detection_classes"].shape == (2, num_det)
    assert outputs["detection_classes"].dtype == np.int32
    assert outputs["num_detections"].shape == (2,)
    assert outputs["detection_masks"].shape == (2, num_det, mask_size, mask_size)
    num_classes = config.model.num_classes
    for b, (height, width) in enumerate(data["image_sizes"]):
        n = outputs["num_detections"][b]
        assert 0 < n <= num_det
        boxes = outputs["detection_boxes"][b, :n]
        assert np.all(boxes >= 0)
        assert np.all(boxes[:, [0, 2]] <= height) and np.all(boxes[:, [1, 3]] <= width)
        assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
        classes = outputs["detection_classes"][b]
        assert np.all((classes[:n] >= 1) & (classes[:n] <= num_classes - 1))
        assert not classes[n:].any()
        scores = outputs["detection_scores"][b, :n]
        assert np.all(np.diff(scores) <= 0) and np.all((scores > 0) & (scores <= 1))
    masks = outputs["detection_masks"]
    assert np.all((masks >= 0) & (masks <= 1))


def test_parameter_count_matches_torchvision():
    config = load_config(CONFIGS / "maskrcnn_r50_fpn_coco.yaml", ["model.num_classes=91"])
    count = count_parameters(build_model(config.model, image_size=128))
    print(f"maskrcnn_r50_fpn (91 classes): {count:,} parameters")
    assert count == TORCHVISION_MASKRCNN_R50_FPN_PARAMETERS


def test_acceptance_forward_pass_r50_fpn():
    keras.utils.set_random_seed(0)
    config = load_config(CONFIGS / "maskrcnn_r50_fpn_coco.yaml",
                         ["model.roi_heads.score_threshold=0.0"])
    model = build_model(config.model)
    d = config.data
    image = np.random.default_rng(0).integers(0, 256, (800, 1216, 3), dtype=np.uint8)
    padded, resized_size, _ = preprocess_image(image, min_size=d.min_size, max_size=d.max_size,
                                               pad_size=d.pad_size, mean=d.mean, std=d.std)
    np.testing.assert_array_equal(resized_size.numpy(), [800, 1216])  # already at scale 1
    image_sizes = tf.cast(resized_size, tf.float32)[None]
    outputs = model({"images": padded[None], "image_sizes": image_sizes}, training=False)
    print(f"maskrcnn_r50_fpn_coco: {count_parameters(model):,} parameters")
    n = int(outputs["num_detections"][0])
    assert 0 < n <= 100
    boxes = outputs["detection_boxes"].numpy()[0, :n]
    assert np.all(np.isfinite(boxes)) and np.all(boxes >= 0)
    assert np.all(boxes[:, [0, 2]] <= 800) and np.all(boxes[:, [1, 3]] <= 1216)
    classes = outputs["detection_classes"].numpy()[0, :n]
    assert np.all((classes >= 1) & (classes <= 80))
    pasted = paste_masks(outputs["detection_masks"][:, :n], outputs["detection_boxes"][:, :n],
                         (800, 1216))
    assert tuple(pasted.shape) == (1, n, 800, 1216)
