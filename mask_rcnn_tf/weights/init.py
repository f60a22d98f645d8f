"""`train.init_weights`: the weights a new run starts from, by part, with a report.

Files read (read_init_weights):

- a backbone file (weights/io.py; `mask-rcnn convert-torchvision` of an ImageNet classifier);
- a Keras Applications ResNet50 / ResNet101 weights file (weights/keras_applications.py);
- a `.weights.h5` of a whole model, written by `mask-rcnn train` or by `convert-torchvision`
  of a Mask R-CNN / Keypoint R-CNN, whatever its number of classes or keypoints.

`train.init_scope` picks the parts set (apply_init_weights): backbone, backbone+fpn, or all;
null, every part the file holds. Inside those parts every weight must be in the file with its
shape, except the class-specific layers (CLASS_SPECIFIC: box classifier and regressor, mask
predictor, keypoint predictor), which keep their fresh initialization when their shape differs
(another model.num_classes or number of keypoints): fine-tuning COCO weights onto another
dataset. Anything else missing, extra or mis-shaped is an error, and nothing is assigned.
"""

import dataclasses
import logging
import os

import numpy as np

from mask_rcnn_tf.weights.io import (
    BACKBONE_ATTRIBUTES,
    PARTS,
    mismatch_summary,
    one_line,
    read_backbone_file,
    strict_load_weights,
    weight_key,
)

logger = logging.getLogger("mask_rcnn_tf.weights")

SCOPES = {"backbone": ("backbone",), "backbone+fpn": ("backbone", "fpn"), "all": PARTS}
# "<part>/<layer>" of the layers whose shape follows model.num_classes or the keypoint count.
CLASS_SPECIFIC = ("box_head/class_logits", "box_head/box_deltas", "mask_head/logits",
                  "keypoint_head/kps_score_lowres")
_BATCH_NORMS = ("frozen_bn", "bn")
# Side of the dummy image that builds the model a .weights.h5 file is read into.
_BUILD_SIZE = 128
_MAX_LISTED = 6


@dataclasses.dataclass(frozen=True)
class InitWeights:
    """Tensors read from an init file.

    Attributes:
      path: the file.
      kind: what it is, for the log ("backbone file", "Keras Applications ResNet50", ...).
      tensors: dict of weight key ("<part>/<layer>/<variable>") -> float32 array.
      parts: the parts of PARTS the file holds, in PARTS order.
      attributes: a backbone's architecture and preprocessing (backbone files), else {}.
    """

    path: str
    kind: str
    tensors: dict
    parts: tuple
    attributes: dict


def _error(path, message):
    return ValueError(f"train.init_weights: {path}: {message}")


def _is_model_file(path):
    """True for a Keras .weights.h5 of a MaskRCNN (top-level groups per part)."""
    import h5py

    with h5py.File(path, "r") as f:
        return "backbone" in f and "vars" in f


def _head_sizes(path):
    """(num_classes, num_keypoints) of a MaskRCNN .weights.h5, read from its predictors' biases."""
    import h5py

    sizes = {}

    def visit(name, obj):
        for label, suffix in (("classes", "class_logits/vars/1"),
                              ("keypoints", "kps_score_lowres/vars/1")):
            if name.endswith(suffix) and hasattr(obj, "shape"):
                sizes[label] = int(obj.shape[0])

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return sizes.get("classes"), sizes.get("keypoints", 0)


def _model_file_tensors(path, model_config):
    """Tensors of a MaskRCNN .weights.h5 whose heads may differ from `model_config`'s: the file
    is loaded into the config's model rebuilt with the file's class and keypoint counts."""
    from mask_rcnn_tf.modeling.factory import build_model

    num_classes, num_keypoints = _head_sizes(path)
    if num_classes is None:
        raise _error(path, "a .weights.h5 without a box classifier: not a Mask R-CNN")
    keypoints = dataclasses.replace(model_config.keypoints, num_keypoints=num_keypoints)
    # Frozen and trainable BatchNorm hold the same four tensors but are other Keras classes,
    # which load_weights tells apart: a COCO model (frozen) may start a "bn" run, and back.
    norms = [model_config.backbone.norm] + [
        n for n in _BATCH_NORMS if n != model_config.backbone.norm and
        model_config.backbone.norm in _BATCH_NORMS]
    errors = []
    for norm in norms:
        source_config = dataclasses.replace(
            model_config, num_classes=num_classes, keypoints=keypoints,
            backbone=dataclasses.replace(model_config.backbone, norm=norm))
        source = build_model(source_config, image_size=_BUILD_SIZE)
        try:
            strict_load_weights(source, path)
            return {weight_key(v): np.asarray(v.numpy(), np.float32) for v in source.weights}
        except (ValueError, OSError, KeyError) as error:
            errors.append(error)
    raise _error(path, f"does not fit model {model_config.backbone.depth}-layer "
                       f"{'ResNeXt' if model_config.backbone.groups > 1 else 'ResNet'} "
                       f"of this config (another architecture, depth or width?): "
                       f"{one_line(errors[0])[:200]}")


def read_init_weights(path, config):
    """Reads an init file (see the module docstring) and checks it against the run's config.

    Args:
      path: str, train.init_weights.
      config: Config of the run: a .weights.h5 is read through its model's architecture; a
        backbone's architecture must match model.backbone; train.init_scope must ask for parts
        that the file and the model both have.

    Returns:
      InitWeights.

    Raises:
      FileNotFoundError: no file at path.
      ValueError: not a weights file this project reads, one of another architecture, or a
        scope that does not fit; the message names the file.
    """
    model_config = config.model
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"train.init_weights: {path}: file not found (an ImageNet "
                                "backbone is made by mask-rcnn convert-torchvision, see README "
                                "\"Start from pretrained weights\")")
    try:
        backbone = read_backbone_file(path)
    except OSError:
        raise _error(path, "not a weights file (not HDF5): expected a backbone file from "
                           "convert-torchvision, a Keras Applications ResNet .h5 or a "
                           ".weights.h5") from None
    attributes = {}
    if backbone is not None:
        tensors, attributes = backbone
        kind = f"backbone file ({attributes.get('source', 'unknown source')})"
    elif _is_model_file(path):
        tensors, kind = _model_file_tensors(path, model_config), "model weights"
    else:
        from mask_rcnn_tf.weights.keras_applications import keras_resnet_tensors

        try:
            tensors, attributes = keras_resnet_tensors(path)
        except ValueError as error:
            raise ValueError(f"train.init_weights: {error}") from None
        kind = attributes["source"]
    parts = tuple(part for part in PARTS if any(k.startswith(part + "/") for k in tensors))
    init = InitWeights(path, kind, tensors, parts, attributes)
    _check_scope(init, config)
    if "backbone" in scoped_parts(init, config):
        _check_backbone(init, config)
    return init


def scoped_parts(init, config):
    """The parts train.init_scope sets from `init`."""
    scope = config.train.init_scope
    return init.parts if scope is None else SCOPES[scope]


def _check_scope(init, config):
    model_parts = [p for p in PARTS
                   if p != "keypoint_head" or config.model.keypoints.num_keypoints]
    scope = config.train.init_scope
    parts = scoped_parts(init, config)
    lacking = [p for p in parts if p not in init.parts and p in model_parts]
    if lacking:
        raise _error(init.path, f"holds only {'+'.join(init.parts)}, but train.init_scope="
                                f"{scope} asks for {', '.join(lacking)} too: set "
                                f"train.init_scope={'backbone' if init.parts == ('backbone',) else 'backbone+fpn'}")
    extra = [p for p in parts if p in init.parts and p not in model_parts]
    if extra:
        raise _error(init.path, f"holds {', '.join(extra)} weights that the model has not: "
                                "set train.init_scope to the parts to load")


def _check_backbone(init, config):
    """Errors on a backbone of another architecture; warns on other preprocessing."""
    b, d = config.model.backbone, config.data
    for name in BACKBONE_ATTRIBUTES:
        if name in init.attributes and init.attributes[name] != getattr(b, name):
            raise _error(init.path, f"holds a backbone with {name}={init.attributes[name]}, "
                                    f"but model.backbone.{name}={getattr(b, name)}")
    expected = {k: init.attributes[k] for k in ("channel_order", "mean", "std")
                if k in init.attributes}
    actual = {"channel_order": d.channel_order, "mean": d.mean, "std": d.std}
    differs = [k for k, v in expected.items()
               if (tuple(np.round(v, 3)) if k != "channel_order" else v)
               != (tuple(np.round(actual[k], 3)) if k != "channel_order" else actual[k])]
    if differs:
        logger.warning("init weights %s were trained with %s; the data config has %s",
                       init.path, {k: expected[k] for k in differs},
                       {k: actual[k] for k in differs})


def apply_init_weights(model, init, config):
    """Sets `model`'s weights from `init` within `train.init_scope`; logs what was loaded.

    Args:
      model: a built MaskRCNN (under the run's strategy scope).
      init: InitWeights (read_init_weights, which checked the scope and the backbone).
      config: Config of the run (model architecture, data preprocessing, train.init_scope).

    Returns:
      dict part -> {"loaded": int, "fresh": [weight keys left at their initialization]} for
      every part of the model; parts outside the scope list all their weights as fresh.

    Raises:
      ValueError: in the parts set, a weight is missing, extra or mis-shaped (other than the
        class-specific layers); nothing is assigned then.
    """
    scope = config.train.init_scope
    parts = scoped_parts(init, config)
    pairs, report, missing, mismatched = [], {}, [], []
    used = set()
    for part in PARTS:
        layer = getattr(model, part, None)
        if layer is None:
            continue
        report[part] = {"loaded": 0, "fresh": []}
        for variable in layer.weights:
            key = weight_key(variable)
            shape = tuple(int(d) for d in variable.shape)
            if part not in parts:
                report[part]["fresh"].append(key)
            elif key not in init.tensors:
                missing.append(key)
            elif init.tensors[key].shape != shape:
                used.add(key)
                if key.rsplit("/", 1)[0] in CLASS_SPECIFIC:
                    report[part]["fresh"].append(key)
                else:
                    mismatched.append(f"{key} {init.tensors[key].shape} -> {shape}")
            else:
                used.add(key)
                pairs.append((variable, init.tensors[key]))
                report[part]["loaded"] += 1
    unexpected = sorted(k for k in init.tensors if k.split("/")[0] in parts and k not in used)
    if missing or unexpected or mismatched:
        raise _error(init.path, "does not fit the model (another architecture or depth?): "
                                + mismatch_summary(missing, unexpected, mismatched, _MAX_LISTED))
    for variable, value in pairs:
        variable.assign(value)
    _log_report(init, scope, report)
    return report


def _log_report(init, scope, report):
    logger.info("init weights %s (%s), init_scope %s:", init.path, init.kind,
                scope or "all the file holds")
    for part, entry in report.items():
        fresh = entry["fresh"]
        if not entry["loaded"]:
            logger.info("  %s: 0 loaded, all %d left fresh", part, len(fresh))
        elif fresh:
            logger.info("  %s: %d loaded, %d left fresh (shape follows num_classes/keypoints): "
                        "%s", part, entry["loaded"], len(fresh),
                        ", ".join(k.split("/", 1)[1] for k in fresh))
        else:
            logger.info("  %s: %d loaded", part, entry["loaded"])
