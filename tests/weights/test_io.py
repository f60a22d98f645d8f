"""Reading a model's .weights.h5: a file that only partly fits the model is an error, never a
model left half random (Keras itself only warns about the parts it skips)."""

from pathlib import Path

import numpy as np
import pytest

from mask_rcnn_tf.config import load_config
from mask_rcnn_tf.modeling.factory import build_model
from mask_rcnn_tf.weights.io import load_model_weights

SHAPES = Path(__file__).resolve().parents[2] / "configs" / "shapes.yaml"
TINY = ["data.min_size=64", "data.max_size=64", "model.backbone.base_width=8",
        "model.fpn.num_channels=16", "model.roi_heads.box_fc_dim=16",
        "model.roi_heads.mask_conv_dim=8"]


def _model(*overrides):
    return build_model(load_config(SHAPES, TINY + list(overrides)).model, image_size=64)


def test_a_file_of_other_normalization_layers_is_refused_not_half_loaded(tmp_path):
    # Trainable and frozen BatchNorm are different Keras classes: Keras skips the backbone's
    # nested blocks with a warning and would keep their random weights.
    source = _model()
    path = tmp_path / "bn.weights.h5"
    source.save_weights(path)
    target = _model("model.backbone.norm=frozen_bn")
    with pytest.raises(ValueError, match=r"bn\.weights\.h5.*Skipping nested container"):
        load_model_weights(target, weights=str(path))


def test_a_fitting_file_loads_every_tensor(tmp_path):
    source = _model()
    rng = np.random.default_rng(0)
    for variable in source.weights:
        variable.assign(rng.normal(size=variable.shape).astype(np.float32))
    path = tmp_path / "model.weights.h5"
    source.save_weights(path)
    target = _model()
    load_model_weights(target, weights=str(path))
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
