"""train.init_weights onto another number of classes: what loads, what stays fresh, scopes, and
a resumed run ignoring the init file (tiny shapes models, no torch)."""

import logging
from pathlib import Path

import numpy as np
import pytest

from mask_rcnn_tf import cli
from mask_rcnn_tf.config import load_config
from mask_rcnn_tf.modeling.factory import build_model
from mask_rcnn_tf.weights.init import apply_init_weights, read_init_weights
from mask_rcnn_tf.weights.io import weight_key

SHAPES = Path(__file__).resolve().parents[2] / "configs" / "shapes.yaml"
TINY = ["data.min_size=64", "data.max_size=64", "model.backbone.base_width=8",
        "model.fpn.num_channels=16", "model.roi_heads.box_fc_dim=16",
        "model.roi_heads.mask_conv_dim=8", "train.batch_size=2", "train.steps=2",
        "train.steps_per_epoch=2", "train.warmup_steps=1"]
CLASS_SPECIFIC = {"box_head/class_logits/kernel", "box_head/class_logits/bias",
                  "box_head/box_deltas/kernel", "box_head/box_deltas/bias",
                  "mask_head/logits/kernel", "mask_head/logits/bias"}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A random 4-class TINY model saved as .weights.h5: (path, {weight key: value})."""
    model = build_model(load_config(SHAPES, TINY).model, image_size=64)
    rng = np.random.default_rng(0)
    for variable in model.weights:
        variable.assign(rng.normal(size=variable.shape).astype(np.float32))
    path = tmp_path_factory.mktemp("source") / "source.weights.h5"
    model.save_weights(path)
    return path, {weight_key(v): v.numpy() for v in model.weights}


def _target(path, *overrides):
    config = load_config(SHAPES, TINY + [f"train.init_weights={path}", *overrides])
    model = build_model(config.model, image_size=64)
    before = {weight_key(v): v.numpy() for v in model.weights}
    return model, config, before


def test_other_class_count_loads_all_but_the_class_specific_layers(source):
    path, values = source
    model, config, before = _target(path, "model.num_classes=7")
    report = apply_init_weights(model, read_init_weights(path, config), config)
    for variable in model.weights:
        key = weight_key(variable)
        if key in CLASS_SPECIFIC:
            np.testing.assert_array_equal(variable.numpy(), before[key])  # fresh
        else:
            np.testing.assert_array_equal(variable.numpy(), values[key])
    assert report["box_head"]["loaded"] == 4  # fc1, fc2
    assert set(report["box_head"]["fresh"]) == {k for k in CLASS_SPECIFIC
                                                if k.startswith("box_head")}
    assert set(report["mask_head"]["fresh"]) == {"mask_head/logits/kernel",
                                                 "mask_head/logits/bias"}
    assert report["backbone"]["fresh"] == [] and report["fpn"]["fresh"] == []


def test_trainable_batchnorm_file_starts_a_frozen_batchnorm_model(source):
    path, values = source
    model, config, _ = _target(path, "model.backbone.norm=frozen_bn")
    apply_init_weights(model, read_init_weights(path, config), config)
    for variable in model.weights:
        np.testing.assert_array_equal(variable.numpy(), values[weight_key(variable)])


@pytest.mark.parametrize("scope,loaded_parts", [("backbone", {"backbone"}),
                                                ("backbone+fpn", {"backbone", "fpn"})])
def test_scope_limits_the_parts_loaded(source, scope, loaded_parts):
    path, values = source
    model, config, before = _target(path, f"train.init_scope={scope}")
    report = apply_init_weights(model, read_init_weights(path, config), config)
    for variable in model.weights:
        key = weight_key(variable)
        expected = values[key] if key.split("/")[0] in loaded_parts else before[key]
        np.testing.assert_array_equal(variable.numpy(), expected)
    assert {part for part, entry in report.items() if entry["loaded"]} == loaded_parts


def test_other_head_width_is_an_error_and_nothing_is_assigned(source):
    path, _ = source
    model, config, before = _target(path, "model.roi_heads.box_fc_dim=32")
    with pytest.raises(ValueError, match="does not fit model 18-layer ResNet"):
        apply_init_weights(model, read_init_weights(path, config), config)
    for variable in model.weights:
        np.testing.assert_array_equal(variable.numpy(), before[weight_key(variable)])


@pytest.fixture(scope="module")
def shapes(tiny_shapes_split):
    return tiny_shapes_split


@pytest.mark.slow  # two short training runs
def test_resumed_run_ignores_init_weights(shapes, tmp_path, caplog):
    init = tmp_path / "init.weights.h5"
    build_model(load_config(SHAPES, TINY).model, image_size=64).save_weights(init)
    model_dir = tmp_path / "model"
    args = ["train", "--config", str(SHAPES), "--model-dir", str(model_dir), "--set", *TINY,
            *shapes, f"train.init_weights={init}"]
    with caplog.at_level(logging.INFO, logger="mask_rcnn_tf"):
        assert cli.main(args) == 0
    assert f"init weights {init} (model weights), init_scope all the file holds" in caplog.text
    assert "box_head: 8 loaded" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mask_rcnn_tf"):
        assert cli.main(args + ["train.steps=4"]) == 0
    assert f"train.init_weights {init} ignored: the run resumes from its own checkpoint" in (
        caplog.text)
    assert "init weights " not in caplog.text
