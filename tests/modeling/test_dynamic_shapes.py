"""The model on [B, None, None, 3] inputs: one traced graph serves every input size in Keras
fit and in detection (evaluate, predict), and `mask-rcnn predict`'s path pads an image only to
a multiple of 32 (800 x 1333 reaches the backbone as 800 x 1344)."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from mask_rcnn_tf.config import load_config
from mask_rcnn_tf.evaluation.evaluate import detection_function
from mask_rcnn_tf.evaluation.predict import predict_images
from mask_rcnn_tf.modeling.factory import build_model
from tests.shape_spy import BackboneSizes

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "shapes.yaml"
TINY = [
    "model.backbone.base_width=8", "model.fpn.num_channels=8",
    "model.rpn.pre_nms_top_n_train=50", "model.rpn.pre_nms_top_n_test=50",
    "model.rpn.post_nms_top_n_train=20", "model.rpn.post_nms_top_n_test=20",
    "model.rpn.batch_size_per_image=32", "model.roi_heads.batch_size_per_image=16",
    "model.roi_heads.box_fc_dim=16", "model.roi_heads.mask_conv_dim=8",
    "model.roi_heads.mask_num_convs=1", "model.roi_heads.detections_per_image=5",
    "model.roi_heads.score_threshold=0.0",
]
SIZES = [(64, 64), (64, 96), (96, 64)]


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    config = load_config(CONFIG, TINY)
    return config, build_model(config.model, image_size=64)


def _training_batches():
    rng = np.random.default_rng(1)
    for height, width in SIZES:
        boxes = np.zeros((2, 2, 4), np.float32)
        boxes[:, 0] = [8, 8, 40, 36]
        classes = np.array([[1, -1], [2, -1]], np.int32)
        yield {"images": rng.normal(size=(2, height, width, 3)).astype(np.float32),
               "image_sizes": np.array([[height, width], [height - 8, width - 16]], np.float32),
               "gt_boxes": boxes, "gt_classes": classes,
               "gt_masks": (rng.random((2, 2, 8, 8)) > 0.5).astype(np.float32)}


def test_fit_traces_one_train_step_for_every_input_size(tiny):
    _, model = tiny
    traces = []
    train_step = model.train_step

    def counting_train_step(data):
        traces.append(data["images"].shape.as_list())
        return train_step(data)

    model.train_step = counting_train_step
    spec = {"images": tf.TensorSpec([2, None, None, 3], tf.float32),
            "image_sizes": tf.TensorSpec([2, 2], tf.float32),
            "gt_boxes": tf.TensorSpec([2, 2, 4], tf.float32),
            "gt_classes": tf.TensorSpec([2, 2], tf.int32),
            "gt_masks": tf.TensorSpec([2, 2, 8, 8], tf.float32)}
    data = tf.data.Dataset.from_generator(_training_batches, output_signature=spec)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    history = model.fit(data, epochs=1, verbose=0).history
    assert traces == [[2, None, None, 3]]
    assert np.isfinite(history["loss"][0])


def test_detection_traces_once_and_matches_eager_runs(tiny):
    _, model = tiny
    detect = detection_function(model)
    rng = np.random.default_rng(2)
    for height, width in SIZES:
        images = rng.normal(size=(1, height, width, 3)).astype(np.float32)
        sizes = np.array([[height, width]], np.float32)
        traced = detect(images, sizes)
        eager = model({"images": images, "image_sizes": sizes}, training=False)
        np.testing.assert_allclose(traced["detection_boxes"], eager["detection_boxes"],
                                   atol=1e-3)
        np.testing.assert_array_equal(traced["detection_classes"], eager["detection_classes"])
    assert detect.experimental_get_tracing_count() == 1


def test_predict_pads_each_image_to_a_multiple_of_32(tmp_path):
    config = load_config(CONFIG, TINY + ["data.min_size=800", "data.max_size=1333"])
    keras.utils.set_random_seed(0)
    model = build_model(config.model, image_size=64)
    spy = BackboneSizes(model)
    rng = np.random.default_rng(3)
    images = {f"{h}x{w}.png": rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
              for h, w in ((800, 1333), (480, 640), (640, 480))}
    predict_images(model, config, images, tmp_path,
                   categories=[(1, "circle"), (2, "square"), (3, "triangle")])
    # 800 x 1333 stays 800 x 1333 -> 800 x 1344; 480 x 640 -> 800 x 1067 -> 800 x 1088.
    assert spy.seen() == [[800, 1344], [800, 1088], [1088, 800]]
