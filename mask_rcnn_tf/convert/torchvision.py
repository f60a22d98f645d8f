"""torchvision Mask R-CNN state dicts -> this model's weights.

Maps every tensor of a torchvision `maskrcnn_resnet50_fpn` (v1) state dict, or of any
torchvision Mask R-CNN whose ResNet/ResNeXt-FPN matches the config, onto a built MaskRCNN; the
keypoint head of `keypointrcnn_resnet50_fpn` too, when the model has one (torchvision's
Keypoint R-CNN has no mask branch: convert it with allow_missing=("mask_head",)).
Names follow the tables in layers/resnet.py and layers/fpn.py; the heads map as

    torchvision (prefix roi_heads. / rpn.head.)   this model
    rpn.head.conv.0.0 (old: conv)                 rpn_head/conv
    rpn.head.cls_logits                           rpn_head/objectness
    rpn.head.bbox_pred                            rpn_head/box_deltas   (dx,dy,dw,dh -> dy,dx,dh,dw)
    box_head.fc6, fc7                             box_head/fc1, fc2     (fc6 input C,H,W -> H,W,C)
    box_predictor.cls_score, bbox_pred            box_head/class_logits, box_deltas
    mask_head.{i}.0 (old: mask_fcn{i+1})          mask_head/conv{i+1}
    mask_predictor.conv5_mask, mask_fcn_logits    mask_head/upsample, logits
    keypoint_head.{2 i}                           keypoint_head/conv_fcn{i+1}
    keypoint_predictor.kps_score_lowres           keypoint_head/kps_score_lowres

Kernels: Conv2d [C_out, C_in, kh, kw] and ConvTranspose2d [C_in, C_out, kh, kw] both become
Keras' [kh, kw, C_in, C_out] / [kh, kw, C_out, C_in] by the same transpose (2, 3, 1, 0); Linear
[out, in] is transposed. torchvision boxes are [x1, y1, x2, y2]; here only the order of the
delta outputs changes. Reading a .pth file needs torch, imported only inside
`read_torch_checkpoint`; everything else is NumPy.
"""

import os
import re

import numpy as np

from mask_rcnn_tf.weights.io import PARTS, mismatch_summary

# BatchNorm2d's step counter (present when torchvision builds its backbone without
# FrozenBatchNorm2d) carries no weight.
_IGNORED_SUFFIXES = (".num_batches_tracked",)
# Old names still found in torchvision's published checkpoints; torchvision renames them on load.
_LEGACY_NAMES = (
    (re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$"),
     r"backbone.fpn.\1_blocks.\2.0.\3"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
    (re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$"),
     lambda m: f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}"),
)
_NORM_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
               "moving_variance": "running_var"}
# Delta order per anchor / class: ours (dy, dx, dh, dw) reads torchvision's (dx, dy, dw, dh)
# at these positions.
_DELTA_ORDER = np.array([1, 0, 3, 2])
# Names an error message shows per list of misfitting weights.
MAX_LISTED = 12
# torchvision's COCO models have 91 outputs indexed by COCO category id (0 background, 11 ids
# unused); this project numbers the 80 categories 1..80 in id order (data/coco.py).
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90)


class CheckpointError(ValueError):
    """The checkpoint cannot be read or does not fit the model.

    Attributes:
        missing: model weights (Keras paths) with no checkpoint tensor.
        unexpected: checkpoint keys that no model weight takes.
        mismatched: "key (shape) -> weight (shape)" for tensors of the wrong shape.
    """

    def __init__(self, message, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


def _conv(tensor):
    return np.transpose(tensor, (2, 3, 1, 0))


def _dense(tensor):
    return np.transpose(tensor)


def _identity(tensor):
    return tensor


def _delta_rows(tensor):
    """Reorders the leading axis, groups of 4 (dx, dy, dw, dh), to (dy, dx, dh, dw)."""
    groups = tensor.shape[0] // 4
    order = (np.arange(groups)[:, None] * 4 + _DELTA_ORDER[None, :]).reshape(-1)
    return tensor[order]


def _class_rows(classes, group=1):
    """Transform keeping the leading-axis rows of the given classes (groups of `group` rows)."""
    if classes is None:
        return _identity
    rows = (np.asarray(classes)[:, None] * group + np.arange(group)[None, :]).reshape(-1)

    def transform(tensor):
        if rows.max() >= tensor.shape[0]:
            raise ValueError(f"class index {rows.max() // group} out of range")
        return tensor[rows]

    return transform


def _then(first, second):
    return lambda tensor: second(first(tensor))


def _backbone_key(layer):
    """torchvision key prefix of a ResNet sublayer name (layers/resnet.py), or None."""
    if layer == "stem_conv":
        return "conv1"
    if layer == "stem_norm":
        return "bn1"
    match = re.fullmatch(r"res(\d)_block(\d+)_(conv|norm)(\d)", layer)
    if match:
        stage, block, kind, index = match.groups()
        kind = "conv" if kind == "conv" else "bn"
        return f"layer{int(stage) - 1}.{block}.{kind}{index}"
    match = re.fullmatch(r"res(\d)_block(\d+)_downsample_(conv|norm)", layer)
    if match:
        stage, block, kind = match.groups()
        return f"layer{int(stage) - 1}.{block}.downsample.{0 if kind == 'conv' else 1}"
    return None


def _fpn_key(layer):
    match = re.fullmatch(r"(lateral_c|output_p)(\d)", layer)
    if not match:
        return None
    blocks = "inner_blocks" if match.group(1) == "lateral_c" else "layer_blocks"
    return f"{blocks}.{int(match.group(2)) - 2}.0"


def _fc6(pooled_size):
    """Keras fc1 kernel from torchvision fc6 [out, C * P * P], flattened C, H, W."""

    def transform(tensor):
        out_dim, in_dim = tensor.shape
        channels = in_dim // (pooled_size * pooled_size)
        tensor = tensor.reshape(out_dim, channels, pooled_size, pooled_size)
        return tensor.transpose(2, 3, 1, 0).reshape(in_dim, out_dim)

    return transform


def _head_rules(box_pool_size, classes):
    """(component, layer) -> (torchvision key prefix, kernel transform, bias transform)."""
    per_class = _class_rows(classes)
    per_class_box = _then(_class_rows(classes, 4), _delta_rows)
    return {
        ("rpn_head", "conv"): ("rpn.head.conv.0.0", _conv, _identity),
        ("rpn_head", "objectness"): ("rpn.head.cls_logits", _conv, _identity),
        ("rpn_head", "box_deltas"): (
            "rpn.head.bbox_pred", _then(_delta_rows, _conv), _delta_rows),
        ("box_head", "fc1"): ("roi_heads.box_head.fc6", _fc6(box_pool_size), _identity),
        ("box_head", "fc2"): ("roi_heads.box_head.fc7", _dense, _identity),
        ("box_head", "class_logits"): (
            "roi_heads.box_predictor.cls_score", _then(per_class, _dense), per_class),
        ("box_head", "box_deltas"): (
            "roi_heads.box_predictor.bbox_pred", _then(per_class_box, _dense), per_class_box),
        ("mask_head", "upsample"): ("roi_heads.mask_predictor.conv5_mask", _conv, _identity),
        ("mask_head", "logits"): (
            "roi_heads.mask_predictor.mask_fcn_logits", _then(per_class, _conv), per_class),
        ("keypoint_head", "kps_score_lowres"): (
            "roi_heads.keypoint_predictor.kps_score_lowres", _conv, _identity),
    }


def _rule(component, layer, variable, head_rules):
    """(torchvision key, transform) for one Keras weight, or None if it has no counterpart."""
    if component in ("backbone", "fpn"):
        if component == "backbone":
            prefix = _backbone_key(layer)
            prefix = prefix and f"backbone.body.{prefix}"
        else:
            prefix = _fpn_key(layer)
            prefix = prefix and f"backbone.fpn.{prefix}"
        if prefix is None:
            return None
        if variable == "kernel":
            return f"{prefix}.weight", _conv
        if variable == "bias":
            return f"{prefix}.bias", _identity
        if variable in _NORM_NAMES:
            return f"{prefix}.{_NORM_NAMES[variable]}", _identity
        return None
    conv = re.fullmatch(r"conv(\d+)", layer)
    keypoint_conv = re.fullmatch(r"conv_fcn(\d+)", layer)
    if component == "mask_head" and conv:
        prefix, kernel_fn, bias_fn = (
            f"roi_heads.mask_head.{int(conv.group(1)) - 1}.0", _conv, _identity)
    elif component == "keypoint_head" and keypoint_conv:
        # An nn.Sequential of (Conv2d, ReLU) pairs: the convs sit at even indices.
        prefix, kernel_fn, bias_fn = (
            f"roi_heads.keypoint_head.{2 * (int(keypoint_conv.group(1)) - 1)}", _conv, _identity)
    else:
        found = head_rules.get((component, layer))
        if found is None:
            return None
        prefix, kernel_fn, bias_fn = found
    if variable == "kernel":
        return f"{prefix}.weight", kernel_fn
    if variable == "bias":
        return f"{prefix}.bias", bias_fn
    return None


def _canonical_keys(state_dict):
    """Strips a DistributedDataParallel "module." prefix and renames legacy keys."""
    keys = list(state_dict)
    strip = bool(keys) and all(k.startswith("module.") for k in keys)
    renamed = {}
    for key, value in state_dict.items():
        new = key[len("module."):] if strip else key
        for pattern, replacement in _LEGACY_NAMES:
            new = pattern.sub(replacement, new)
        renamed[new] = value
    return renamed


def torchvision_weights(model, state_dict, source="state dict", classes=None, allow_missing=()):
    """Maps a torchvision Mask R-CNN state dict onto `model`'s weights, checking every tensor.

    Args:
        model: a built MaskRCNN (modeling/factory.py build_model with image_size) whose config
            matches the checkpoint (depth, groups, FPN width, num_classes, head widths).
        state_dict: mapping of torchvision key -> NumPy array (or array-like), e.g. from
            read_torch_checkpoint; "module." prefixes and the legacy names of torchvision's
            published checkpoints are accepted, BatchNorm num_batches_tracked is ignored.
        source: name of the checkpoint for error messages (its file path).
        classes: None keeps every class output; else the torchvision class indices to keep,
            in order, background (0) first, e.g. (0,) + COCO_CATEGORY_IDS for 81 classes
            numbered as this project numbers COCO.
        allow_missing: components ("mask_head", "keypoint_head") that may have no tensor at
            all in the checkpoint; their weights keep their values. A component the
            checkpoint has only in part is still an error.

    Returns:
        list of (keras.Variable, NumPy array) pairs, one per model weight, in Keras layout.

    Raises:
        CheckpointError: some model weight has no tensor, some tensor has no weight, or
            shapes differ; the message lists them (the exception carries the full lists).
    """
    tensors = _canonical_keys(state_dict)
    if classes is not None and (len(classes) < 2 or classes[0] != 0):
        raise ValueError(f"classes must start with background 0 and keep a class, got {classes}")
    head_rules = _head_rules(int(model.box_roi_align.output_size), classes)
    pairs, missing, mismatched, used = [], [], [], set()
    for component in PARTS:
        layer = getattr(model, component, None)
        if layer is None:
            continue
        rules = []
        for variable in layer.weights:
            parts = variable.path.split("/")
            rules.append((variable, _rule(component, parts[-2], parts[-1], head_rules),
                          f"{component}/{parts[-2]}/{parts[-1]}"))
        if component in allow_missing and not any(
                rule and rule[0] in tensors for _, rule, _ in rules):
            continue
        for variable, rule, label in rules:
            if rule is None or rule[0] not in tensors:
                missing.append(rule[0] if rule else label)
                continue
            key, transform = rule
            used.add(key)
            tensor = np.asarray(tensors[key], np.float32)
            expected = tuple(int(d) for d in variable.shape)
            try:
                value = transform(tensor)
            except ValueError:
                value = None
            if value is None or tuple(value.shape) != expected:
                mismatched.append(f"{key} {tuple(tensor.shape)} -> {label} {expected}")
                continue
            pairs.append((variable, value))
    unexpected = sorted(k for k in tensors
                        if k not in used and not k.endswith(_IGNORED_SUFFIXES))
    if missing or unexpected or mismatched:
        hint = ""
        if not pairs and not mismatched:
            hint = "not a torchvision Mask R-CNN state dict? "
        raise CheckpointError(
            f"{source}: {hint}checkpoint does not fit the model: "
            + mismatch_summary(missing, unexpected, mismatched, MAX_LISTED),
            missing, unexpected, mismatched)
    return pairs


def assign_torchvision_weights(model, state_dict, source="state dict", classes=None,
                               allow_missing=()):
    """Loads a torchvision Mask R-CNN state dict into `model` (see torchvision_weights).

    Nothing is assigned unless every tensor fits. Returns the number of weights assigned.
    """
    pairs = torchvision_weights(model, state_dict, source, classes, allow_missing)
    for variable, value in pairs:
        variable.assign(value)
    return len(pairs)


def read_torch_checkpoint(path):
    """Reads a .pth file into a dict of float32 NumPy arrays (needs torch).

    Accepts a bare state dict or torchvision's training checkpoints ({"model": state_dict,
    "optimizer": ...}). Loads with torch.load(weights_only=True): no code in the file runs.

    Args:
        path: str or os.PathLike of the .pth file.

    Returns:
        dict of torchvision key -> NumPy array.

    Raises:
        FileNotFoundError: no file at path.
        CheckpointError: the file is truncated, not a torch checkpoint, or holds no state
            dict; or torch is not installed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading a .pth file needs PyTorch: pip install torch (the CPU build is "
            f"enough)") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        reason = " ".join(str(error).split())[:200]
        raise CheckpointError(
            f"{path}: cannot read as a PyTorch checkpoint (truncated or not a .pth file?): "
            f"{type(error).__name__}: {reason}") from None
    if isinstance(loaded, dict):
        for key in ("model", "state_dict"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not loaded or not all(
            isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(
            f"{path}: holds {type(loaded).__name__}, not a state dict of tensors "
            f"(save model.state_dict())")
    return {key: value.detach().to(torch.float32).numpy() if value.is_floating_point()
            else value.numpy() for key, value in loaded.items()}
