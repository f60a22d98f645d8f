"""The SavedModel's signatures pad each request to its largest resized image, rounded up to a
multiple of 32 (issue 14): an 800 x 1333 JPEG reaches the backbone as 800 x 1344, not as the
1344 square. (serving_tensor shares the padding code, ServingModule._detect.)"""

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mask_rcnn_tf.config import load_config
from mask_rcnn_tf.data.inputs import square_pad_size
from mask_rcnn_tf.export.serving_module import ServingModule
from mask_rcnn_tf.modeling.factory import build_model
from tests.shape_spy import BackboneSizes

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "shapes.yaml"
TINY = ["model.backbone.base_width=8", "model.fpn.num_channels=8",
        "model.rpn.pre_nms_top_n_test=50", "model.rpn.post_nms_top_n_test=20",
        "model.roi_heads.box_fc_dim=16", "model.roi_heads.mask_conv_dim=8",
        "model.roi_heads.mask_num_convs=1", "model.roi_heads.detections_per_image=5",
        "data.min_size=800", "data.max_size=1333"]


def _serving_with_spy():
    """ServingModule of a tiny model whose backbone records its input sizes in variables."""
    config = load_config(CONFIG, TINY)
    keras.utils.set_random_seed(0)
    model = build_model(config.model, image_size=64)
    spy = BackboneSizes(model)
    d = config.data
    serving = ServingModule(model, class_names=["circle", "square", "triangle"],
                            min_size=d.min_size, max_size=d.max_size,
                            pad_size=square_pad_size(d), mean=d.mean, std=d.std,
                            size_divisibility=d.size_divisibility)
    return serving, spy


def _jpeg(height, width):
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(image).numpy()


def test_signatures_pad_each_request_to_multiples_of_32(tmp_path):
    serving, spy = _serving_with_spy()
    labels = tmp_path / "labels.txt"
    labels.write_text("circle\nsquare\ntriangle\n")
    root, signatures = serving.saveable(str(labels))
    # Saved with the model: the loaded signatures record into the loaded copies.
    root.spy_variables = spy.variables
    tf.saved_model.save(root, str(tmp_path / "saved"), signatures=signatures)
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    signatures = loaded.signatures
    signatures["serving_default"](images=tf.constant([_jpeg(800, 1333)]))
    # 480 x 640 -> 800 x 1067 and its portrait twin: one request pads both to 1088 x 1088.
    out = signatures["serving_default"](images=tf.constant([_jpeg(480, 640), _jpeg(640, 480)]))
    assert out["image_sizes"].numpy().tolist() == [[480, 640], [640, 480]]
    assert spy.seen(loaded.spy_variables) == [[800, 1344], [1088, 1088]]
