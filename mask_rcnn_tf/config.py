"""Typed experiment configuration: frozen dataclasses, YAML loading, `--set` overrides, validation.

Every hyper-parameter of the project lives here with its default (the values of
`MASK_RCNN_SPEC.md`, torchvision first). Only `modeling/factory.py`, `data/` and `training/` read
it; layers and ops take plain arguments.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot (1e-4, 5E3) as numbers, as
    YAML 1.2 does; PyYAML's YAML 1.1 rules would make `weight_decay: 1e-4` a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the key and the value."""


# tf.distribute strategies of `train.strategy` (see training/strategy.py).
STRATEGY_NAMES = ("auto", "one_device", "mirrored", "multi_worker")
# Parts of the model `train.init_weights` may set (weights/init.py); None: all the file holds.
INIT_SCOPES = (None, "backbone", "backbone+fpn", "all")

# COCO metric implementations of `eval.backend` (see evaluation/coco_eval.py).
EVAL_BACKENDS = ("pycocotools", "faster_coco_eval")


@dataclass(frozen=True)
class BackboneConfig:
    depth: int = 50
    groups: int = 1
    width_per_group: int = 64
    base_width: int = 64
    norm: str = "frozen_bn"  # frozen_bn | bn | gn
    norm_groups: int = 32
    synchronized_bn: bool = False
    stride_in_1x1: bool = False  # False: stride on the 3x3 conv (torchvision); True: MSRA
    freeze_at: int = 2  # 0 nothing, 1 stem, 2 stem + res2, ...


@dataclass(frozen=True)
class FPNConfig:
    num_channels: int = 256
    use_p6: bool = True
    norm: str | None = None  # None (convs with bias, torchvision) | bn | gn


@dataclass(frozen=True)
class AnchorConfig:
    sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)  # one per level P2..P6
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    offset: float = 0.0
    # fixed: level l's anchors 2**l pixels apart; torchvision: padded input side // cells per
    # level, per axis, as torchvision's AnchorGenerator (61, not 64, on P6 of an 800 side).
    stride_rule: str = "fixed"


@dataclass(frozen=True)
class RPNConfig:
    pre_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000
    post_nms_top_n_test: int = 1000
    nms_threshold: float = 0.7
    min_size: float = 1e-3
    fg_iou_threshold: float = 0.7
    bg_iou_threshold: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    box_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    smooth_l1_beta: float = 1.0 / 9.0
    # Training ignores anchors reaching more than this many pixels past the image's valid
    # (unpadded) area, so none is sampled from padding (Detectron's and maskrcnn-benchmark's
    # RPN.STRADDLE_THRESH, default 0); null keeps every anchor, as torchvision does.
    straddle_thresh: float | None = 0.0


@dataclass(frozen=True)
class RoIHeadsConfig:
    fg_iou_threshold: float = 0.5
    bg_iou_threshold: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    add_gt_as_proposals: bool = True
    box_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    smooth_l1_beta: float = 1.0 / 9.0
    box_roi_size: int = 7
    mask_roi_size: int = 14
    sampling_ratio: int = 2
    aligned: bool = True
    canonical_size: float = 224.0
    canonical_level: int = 4
    box_fc_dim: int = 1024
    mask_conv_dim: int = 256
    mask_num_convs: int = 4
    # Mask targets (the ground-truth mask resampled into each RoI) are binarized at this
    # probability, as in the paper and detectron2; null keeps them soft, as torchvision does.
    mask_target_threshold: float | None = 0.5
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    min_box_size: float = 1e-2


@dataclass(frozen=True)
class KeypointConfig:
    num_keypoints: int = 0  # 0: no keypoint branch
    roi_size: int = 14
    conv_dim: int = 512
    num_convs: int = 8


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int = 81  # including background (class 0)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)


@dataclass(frozen=True)
class SplitConfig:
    annotations: str | None = None
    images: str | None = None
    # Glob of shards written by `mask-rcnn make-tfrecords` ("PREFIX-*", bucket paths too): when
    # set, the input streams these instead of reading annotations + images (evaluation still
    # reads `annotations` for the ground truth).
    tfrecords: str | None = None


@dataclass(frozen=True)
class DataConfig:
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    min_size: int = 800
    max_size: int = 1333
    max_instances: int = 100
    mask_crop_size: int = 112
    flip_probability: float = 0.5
    mean: tuple[float, ...] = (123.675, 116.28, 103.53)  # RGB, 0-255 scale
    std: tuple[float, ...] = (58.395, 57.12, 57.375)
    # Channel order the network sees: "rgb" (torchvision) or "bgr" (Caffe-style weights such as
    # Keras Applications' ResNet50, with mean [103.939, 116.779, 123.68] and std [1, 1, 1]).
    # mean and std are given in this order.
    channel_order: str = "rgb"
    shuffle_buffer: int = 1024
    # For keypoint datasets: the index each keypoint takes under a horizontal flip.
    keypoint_flip_map: tuple[int, ...] = ()
    # Check every image's header (opens, size as listed) in parallel before training or
    # evaluating on annotations + images; false skips it (files are then only checked to exist).
    check_images: bool = True
    # HOST:PORT of a tf.data service dispatcher: training preprocessing runs on its workers.
    service_address: str | None = None
    # batch: each batch is padded to its largest resized image, rounded up to a multiple of
    # size_divisibility (torchvision, Detectron2); square: every image to pad_size x pad_size,
    # one static shape (for accelerators that want it).
    pad_mode: str = "batch"
    size_divisibility: int = 32

    @property
    def pad_size(self) -> int:
        """Side of the square every image is padded to with pad_mode square: max_size rounded
        up to a multiple of the largest stride (32)."""
        return int(math.ceil(self.max_size / 32) * 32)


@dataclass(frozen=True)
class TrainConfig:
    # Images per replica; the global batch is batch_size x replicas (GPUs, or hosts x GPUs).
    batch_size: int = 16
    strategy: str = "auto"  # auto | one_device | mirrored | multi_worker
    # With scale_lr, learning_rate is the rate for reference_batch_size images per step (null:
    # for batch_size, i.e. one replica). The run multiplies it by k = global batch / reference
    # and divides warmup_steps by k (the warm-up then spans the same number of images); steps
    # and milestones: see scale_schedule.
    reference_batch_size: int | None = None
    scale_lr: bool = True
    # With scale_lr and an explicit reference_batch_size: steps and milestones are quoted for
    # the reference batch and stretch by 1 / k (the same number of images; Detectron2's
    # REFERENCE_WORLD_SIZE), as warm-up does. False keeps them as optimizer steps.
    scale_schedule: bool = True
    steps: int = 90000
    steps_per_epoch: int = 1000
    optimizer: str = "sgd"  # sgd | adamw
    learning_rate: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"  # step | cosine
    warmup_steps: int = 1000
    warmup_factor: float = 0.001
    milestones: tuple[int, ...] = (60000, 80000)
    gamma: float = 0.1
    clipnorm: float | None = None
    mixed_precision: str = "float32"  # float32 | mixed_bfloat16 | mixed_float16
    keep_checkpoints: int = 3
    eval_every_epochs: int = 0  # 0: no evaluation during training
    seed: int = 0
    # Weights a new run starts from (weights/init.py): a backbone file (convert-torchvision of
    # an ImageNet classifier), a Keras Applications ResNet50/101 .h5, a .weights.h5 written by
    # train or convert-torchvision. Ignored when the run resumes from its own checkpoint.
    init_weights: str | None = None
    # backbone | backbone+fpn | all; null: every part the file holds.
    init_scope: str | None = None


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 1
    mask_threshold: float = 0.5
    score_threshold_draw: float = 0.5
    keypoint_oks_sigmas: tuple[float, ...] = ()  # per-keypoint OKS sigmas for keypoint AP
    # COCO metric implementation: pycocotools | faster_coco_eval (same numbers, optional extra).
    backend: str = "pycocotools"


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _coerce(value, annotation, key: str):
    """Checks `value` against a field's type (after YAML parsing) and converts lists to tuples."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key)
    raise ConfigError(f"{key}: unsupported type {annotation}")


def _build(cls, values, prefix: str = ""):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]} (valid keys under "
            f"{prefix or 'the top level'}: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value):
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict:
    """`["a.b=1", "c=x"]` -> nested dict; values are parsed as YAML scalars or lists."""
    tree: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r} ({err})") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Reads a YAML experiment file, applies `key=value` overrides, validates and returns a Config."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            tree = yaml.load(path.read_text(), Loader=_Loader) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})".replace("\n", " ")) from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        config = _build(Config, _merge(tree, parse_overrides(overrides)))
    except ConfigError as err:
        # Name the file only if it is wrong by itself; otherwise a --set value is the culprit.
        try:
            _build(Config, tree)
        except ConfigError as file_err:
            raise ConfigError(f"{path}: {file_err}") from None
        raise ConfigError(f"--set: {err}") from None
    validate(config)
    return config


def to_dict(config: Config) -> dict:
    """Plain nested dict (tuples as lists) for writing back to YAML."""

    def convert(value):
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [convert(v) for v in value]
        return value

    return convert(config)


def validate(config: Config) -> None:
    """Cross-field checks that a type check alone cannot make."""
    m, d, t = config.model, config.data, config.train
    checks = [
        (m.num_classes >= 2, f"model.num_classes must count background plus at least one class, got {m.num_classes}"),
        (m.backbone.depth in (18, 34, 50, 101, 152), f"model.backbone.depth must be 18, 34, 50, 101 or 152, got {m.backbone.depth}"),
        (m.backbone.norm in ("frozen_bn", "bn", "gn"), f"model.backbone.norm must be frozen_bn, bn or gn, got {m.backbone.norm!r}"),
        (m.fpn.norm in (None, "bn", "gn"), f"model.fpn.norm must be null, bn or gn, got {m.fpn.norm!r}"),
        (0 <= m.backbone.freeze_at <= 5, f"model.backbone.freeze_at must be in 0..5, got {m.backbone.freeze_at}"),
        (len(m.anchors.sizes) == (5 if m.fpn.use_p6 else 4), f"model.anchors.sizes needs one size per level ({5 if m.fpn.use_p6 else 4}), got {len(m.anchors.sizes)}"),
        (len(m.rpn.box_weights) == 4, "model.rpn.box_weights needs 4 values"),
        (len(m.roi_heads.box_weights) == 4, "model.roi_heads.box_weights needs 4 values"),
        (0 < m.rpn.positive_fraction <= 1, f"model.rpn.positive_fraction must be in (0, 1], got {m.rpn.positive_fraction}"),
        (0 < m.roi_heads.positive_fraction <= 1, f"model.roi_heads.positive_fraction must be in (0, 1], got {m.roi_heads.positive_fraction}"),
        (m.rpn.bg_iou_threshold <= m.rpn.fg_iou_threshold, "model.rpn.bg_iou_threshold must not exceed fg_iou_threshold"),
        (m.rpn.pre_nms_top_n_test >= 1 and m.rpn.post_nms_top_n_test >= 1, "model.rpn top-n values must be positive"),
        (m.roi_heads.sampling_ratio >= 1, "model.roi_heads.sampling_ratio must be >= 1"),
        (m.keypoints.num_keypoints == 0 or (len(d.keypoint_flip_map) == len(config.eval.keypoint_oks_sigmas) == m.keypoints.num_keypoints), f"data.keypoint_flip_map and eval.keypoint_oks_sigmas need one entry per keypoint ({m.keypoints.num_keypoints}), got {len(d.keypoint_flip_map)} and {len(config.eval.keypoint_oks_sigmas)}"),
        (sorted(d.keypoint_flip_map) == list(range(len(d.keypoint_flip_map))), f"data.keypoint_flip_map must be a permutation of 0..K-1, got {list(d.keypoint_flip_map)}"),
        (d.service_address is None or ":" in d.service_address, f"data.service_address must be HOST:PORT of a tf.data service dispatcher, got {d.service_address!r}"),
        (len(d.mean) == 3 and len(d.std) == 3, "data.mean and data.std need 3 values (RGB)"),
        (d.channel_order in ("rgb", "bgr"), f"data.channel_order must be rgb or bgr, got {d.channel_order!r}"),
        (t.init_scope in INIT_SCOPES, f"train.init_scope must be null, {', '.join(s for s in INIT_SCOPES if s)}, got {t.init_scope!r}"),
        (0 < d.min_size <= d.max_size, f"data.min_size ({d.min_size}) must be positive and <= data.max_size ({d.max_size})"),
        (m.anchors.stride_rule in ("fixed", "torchvision"), f"model.anchors.stride_rule must be fixed or torchvision, got {m.anchors.stride_rule!r}"),
        (m.rpn.straddle_thresh is None or m.rpn.straddle_thresh >= 0, f"model.rpn.straddle_thresh must be null or >= 0, got {m.rpn.straddle_thresh}"),
        (d.pad_mode in ("batch", "square"), f"data.pad_mode must be batch or square, got {d.pad_mode!r}"),
        (d.size_divisibility >= 1 and d.size_divisibility % 32 == 0, f"data.size_divisibility must be a positive multiple of 32 (the largest feature stride), got {d.size_divisibility}"),
        (0.0 <= d.flip_probability <= 1.0, f"data.flip_probability must be in [0, 1], got {d.flip_probability}"),
        (config.eval.backend in EVAL_BACKENDS, f"eval.backend must be one of {', '.join(EVAL_BACKENDS)}, got {config.eval.backend!r}"),
        (t.optimizer in ("sgd", "adamw"), f"train.optimizer must be sgd or adamw, got {t.optimizer!r}"),
        (t.schedule in ("step", "cosine"), f"train.schedule must be step or cosine, got {t.schedule!r}"),
        (t.mixed_precision in ("float32", "mixed_bfloat16", "mixed_float16"), f"train.mixed_precision must be float32, mixed_bfloat16 or mixed_float16, got {t.mixed_precision!r}"),
        (t.strategy in STRATEGY_NAMES, f"train.strategy must be one of {', '.join(STRATEGY_NAMES)}, got {t.strategy!r}"),
        (t.reference_batch_size is None or t.reference_batch_size >= 1, f"train.reference_batch_size must be positive or null, got {t.reference_batch_size}"),
        (t.batch_size >= 1 and t.steps >= 1 and t.steps_per_epoch >= 1, "train.batch_size, train.steps and train.steps_per_epoch must be positive"),
        (t.learning_rate > 0, f"train.learning_rate must be positive, got {t.learning_rate}"),
        (t.schedule != "cosine" or t.steps > t.warmup_steps, f"train.steps ({t.steps}) must exceed train.warmup_steps ({t.warmup_steps}) for the cosine schedule"),
        (all(0 < a < b for a, b in zip(t.milestones, t.milestones[1:] + (math.inf,))), f"train.milestones must be increasing positive steps, got {list(t.milestones)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
