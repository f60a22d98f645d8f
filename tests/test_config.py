"""config.py: every shipped YAML loads, errors name the key and value, `--set` overrides parse
as YAML scalars and lists, cross-field checks, pad_size, and the defaults of the spec."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from mask_rcnn_tf.config import (Config, ConfigError, DataConfig, load_config, parse_overrides,
                                 to_dict)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _write(tmp_path, text):
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    config = load_config(path)
    assert isinstance(config, Config)
    # The file states every value it cares about: what it sets is what load_config returns.
    raw = yaml.safe_load(path.read_text())
    resolved = to_dict(config)
    for section, values in raw.items():
        for key, value in values.items():
            if isinstance(value, dict):
                for inner, inner_value in value.items():
                    assert resolved[section][key][inner] == inner_value, (section, key, inner)
            else:
                assert resolved[section][key] == value, (section, key)
    # to_dict -> YAML -> load gives the same config back.
    assert load_config(_write(tmp_path, yaml.safe_dump(resolved))) == config


def test_shipped_configs_are_found():
    assert {p.name for p in CONFIGS} >= {"shapes.yaml", "maskrcnn_r50_fpn_coco.yaml",
                                        "maskrcnn_r101_fpn_coco.yaml"}


def test_defaults_follow_the_spec():
    m = Config().model
    assert (m.rpn.pre_nms_top_n_train, m.rpn.pre_nms_top_n_test) == (2000, 1000)
    assert (m.rpn.post_nms_top_n_train, m.rpn.post_nms_top_n_test) == (2000, 1000)
    assert (m.rpn.nms_threshold, m.rpn.fg_iou_threshold, m.rpn.bg_iou_threshold) == (0.7, 0.7, 0.3)
    assert (m.rpn.batch_size_per_image, m.rpn.positive_fraction) == (256, 0.5)
    assert m.rpn.box_weights == (1.0, 1.0, 1.0, 1.0)
    assert m.anchors.sizes == (32.0, 64.0, 128.0, 256.0, 512.0)
    assert m.anchors.aspect_ratios == (0.5, 1.0, 2.0)
    h = m.roi_heads
    assert (h.fg_iou_threshold, h.batch_size_per_image, h.positive_fraction) == (0.5, 512, 0.25)
    assert h.box_weights == (10.0, 10.0, 5.0, 5.0)
    assert (h.box_roi_size, h.mask_roi_size, h.sampling_ratio) == (7, 14, 2)
    assert (h.score_threshold, h.nms_threshold, h.detections_per_image) == (0.05, 0.5, 100)
    d = Config().data
    assert (d.min_size, d.max_size) == (800, 1333)
    assert d.mean == (123.675, 116.28, 103.53) and d.std == (58.395, 57.12, 57.375)


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().model.num_classes = 3


@pytest.mark.parametrize("override, key", [
    (["model.rpn.nms_thresh=0.5"], "model.rpn.nms_thresh"),
    (["colour=red"], "colour"),
    (["data.train.labels=x.json"], "data.train.labels"),
])
def test_unknown_override_key_is_named(override, key):
    with pytest.raises(ConfigError, match=f"unknown config key {key}"):
        load_config(None, override)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = _write(tmp_path, "model:\n  roi_heads:\n    box_fc_dims: 512\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "model.roi_heads.box_fc_dims" in message
    assert "box_fc_dim" in message  # the valid keys are listed
    assert "\n" not in message


@pytest.mark.parametrize("override, key, value", [
    ("train.batch_size=abc", "train.batch_size", "'abc'"),
    ("train.batch_size=2.5", "train.batch_size", "2.5"),
    ("model.fpn.use_p6=1", "model.fpn.use_p6", "1"),
    ("train.learning_rate=true", "train.learning_rate", "True"),
    ("model.backbone.norm=3", "model.backbone.norm", "3"),
    ("model.anchors.sizes=16", "model.anchors.sizes", "16"),
    ("model.anchors.sizes=[16, 32, big, 128, 256]", "model.anchors.sizes[2]", "'big'"),
    ("model.rpn=5", "model.rpn", "5"),
])
def test_wrong_type_names_key_and_value(override, key, value):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert f"{key}: expected" in message and value in message, message
    assert "\n" not in message


def test_parse_overrides_yaml_values():
    tree = parse_overrides([
        "a.b=1", "a.c=2.5", "a.d=[1, 2.5, 3]", "e=true", "f=False", "g=null", "h=", "i=~",
        "j=some/path.json", "a.x.y=[]", "k=1e-4", "l=-5E3", "m=1.5e-3", "n=1e4x",
    ])
    assert tree == {"a": {"b": 1, "c": 2.5, "d": [1, 2.5, 3], "x": {"y": []}}, "e": True,
                    "f": False, "g": None, "h": None, "i": None, "j": "some/path.json",
                    "k": 1e-4, "l": -5000.0, "m": 1.5e-3, "n": "1e4x"}


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    # PyYAML's YAML 1.1 rules read 1e-4 as a string; the spec writes weight decay as 1e-4.
    path = _write(tmp_path, "train:\n  weight_decay: 1e-4\n  learning_rate: 2E-2\n")
    config = load_config(path, ["train.warmup_factor=1e-3"])
    assert config.train.weight_decay == 1e-4 and config.train.learning_rate == 0.02
    assert config.train.warmup_factor == 1e-3


def test_overrides_reach_the_config(tmp_path):
    path = _write(tmp_path, "train:\n  clipnorm: 5.0\n  batch_size: 4\n")
    config = load_config(path, [
        "train.clipnorm=null", "train.learning_rate=1", "model.fpn.use_p6=false",
        "model.anchors.sizes=[8, 16, 32, 64]", "train.milestones=[10, 20]",
        "data.train.annotations=a/b.json", "train.weight_decay=0.00005",
    ])
    t = config.train
    assert t.clipnorm is None and t.batch_size == 4  # file value kept where not overridden
    assert t.learning_rate == 1.0 and isinstance(t.learning_rate, float)
    assert t.milestones == (10, 20) and t.weight_decay == 5e-5
    assert config.model.fpn.use_p6 is False
    assert config.model.anchors.sizes == (8.0, 16.0, 32.0, 64.0)
    assert all(isinstance(s, float) for s in config.model.anchors.sizes)
    assert config.data.train.annotations == "a/b.json"


@pytest.mark.parametrize("override, message", [
    (["model.num_classes=1"], "model.num_classes must count background"),
    (["model.backbone.depth=42"], "model.backbone.depth must be 18, 34, 50, 101 or 152, got 42"),
    (["model.backbone.norm=ln"], "model.backbone.norm must be frozen_bn, bn or gn, got 'ln'"),
    (["model.fpn.use_p6=false"], r"model.anchors.sizes needs one size per level \(4\), got 5"),
    (["model.rpn.box_weights=[1, 1, 1]"], "model.rpn.box_weights needs 4 values"),
    (["model.roi_heads.positive_fraction=0"],
     r"model.roi_heads.positive_fraction must be in \(0, 1\]"),
    (["model.rpn.bg_iou_threshold=0.8"], "model.rpn.bg_iou_threshold must not exceed"),
    (["data.min_size=900", "data.max_size=800"],
     r"data.min_size \(900\) must be positive and <= data.max_size \(800\)"),
    (["data.flip_probability=1.5"], r"data.flip_probability must be in \[0, 1\], got 1.5"),
    (["train.optimizer=adam"], "train.optimizer must be sgd or adamw, got 'adam'"),
    (["train.mixed_precision=float16"], "train.mixed_precision must be"),
    (["train.learning_rate=0"], "train.learning_rate must be positive, got 0.0"),
    (["train.batch_size=0"], "train.batch_size"),
])
def test_cross_field_validation(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


@pytest.mark.parametrize("overrides, message", [
    (["model.num_classes"], "expected key=value"),
    (["model.num_classes=3", "model.num_classes.x=1"], "num_classes is not a section"),
    (["model.num_classes.x=1"], r"model.num_classes: expected an integer, got \{'x': 1\}"),
    (["train.milestones=[1, 2"], "cannot parse value"),
])
def test_malformed_overrides(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "model: [1, 2\n"))
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("max_size, pad", [(1333, 1344), (128, 128), (129, 160), (32, 32),
                                          (1, 32)])
def test_pad_size(max_size, pad):
    assert DataConfig(min_size=1, max_size=max_size).pad_size == pad


def test_input_and_evaluation_keys_of_issue_15():
    config = load_config(None, ["data.train.tfrecords=shards/train-*",
                                "data.service_address=127.0.0.1:5050",
                                "data.check_images=false", "eval.backend=faster_coco_eval",
                                "train.scale_schedule=false"])
    assert (config.data.train.tfrecords, config.data.service_address) == (
        "shards/train-*", "127.0.0.1:5050")
    assert (config.data.check_images, config.eval.backend, config.train.scale_schedule) == (
        False, "faster_coco_eval", False)
    defaults = Config()
    assert (defaults.data.check_images, defaults.eval.backend, defaults.train.scale_schedule,
            defaults.data.train.tfrecords, defaults.data.service_address) == (
        True, "pycocotools", True, None, None)
    with pytest.raises(ConfigError, match="eval.backend must be one of pycocotools, "
                                          "faster_coco_eval, got 'detectron'"):
        load_config(None, ["eval.backend=detectron"])
    with pytest.raises(ConfigError, match="data.service_address must be HOST:PORT"):
        load_config(None, ["data.service_address=dispatcher"])


@pytest.mark.parametrize("override, message", [
    (["data.pad_mode=circle"], "data.pad_mode must be batch or square, got 'circle'"),
    (["data.size_divisibility=48"],
     "data.size_divisibility must be a positive multiple of 32 .* got 48"),
    (["model.anchors.stride_rule=p6"], "model.anchors.stride_rule must be fixed or torchvision"),
    (["model.rpn.straddle_thresh=-1"], "model.rpn.straddle_thresh must be null or >= 0, got -1"),
])
def test_padding_and_anchor_keys_are_validated(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)
    defaults = load_config(None)
    assert (defaults.data.pad_mode, defaults.data.size_divisibility) == ("batch", 32)
    assert (defaults.model.anchors.stride_rule, defaults.model.rpn.straddle_thresh) == ("fixed", 0)
