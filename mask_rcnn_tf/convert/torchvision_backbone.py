"""torchvision ImageNet classification checkpoints -> a backbone file (weights/io.py).

`resnet50`, `resnet101` (V1 and V2 weights: the same tensors), `resnext101_32x8d` and the other
torchvision ResNets: keys conv1, bn1, layer1..layer4, fc. The architecture is read from the
tensors (blocks per stage, bottleneck or basic, groups and width of the 3x3 convs, stem width),
the classifier `fc` is dropped, and the file records what the weights expect: stride on the 3x3
conv (`model.backbone.stride_in_1x1: false`) and torchvision's RGB normalization (the data
config's defaults).
"""

import logging
import os
import re

import numpy as np

from mask_rcnn_tf.convert.torchvision import (
    _NORM_NAMES,
    MAX_LISTED,
    CheckpointError,
    _backbone_key,
    _conv,
)
from mask_rcnn_tf.weights.io import mismatch_summary, write_backbone_file

logger = logging.getLogger("mask_rcnn_tf.convert")

# blocks per stage -> depth, for torchvision's resnet18 .. resnet152 and ResNeXt.
_DEPTHS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): (34, 50), (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
_CLASSIFIER = ("fc.weight", "fc.bias")
TORCHVISION_PREPROCESSING = {"channel_order": "rgb", "mean": (123.675, 116.28, 103.53),
                             "std": (58.395, 57.12, 57.375)}


def is_classification_checkpoint(state_dict):
    """True for a torchvision ResNet classifier's state dict (conv1, layer1.., fc)."""
    return ("conv1.weight" in state_dict and "layer1.0.conv1.weight" in state_dict
            and not any(key.startswith("backbone.") for key in state_dict))


def backbone_architecture(state_dict, source):
    """ResNet constructor arguments read from a classification state dict.

    Returns:
      dict depth, groups, width_per_group, base_width (layers/resnet.py ResNet arguments).

    Raises:
      CheckpointError: the stages do not form a torchvision ResNet.
    """
    blocks = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for key in state_dict
                   if (m := re.match(rf"layer{stage}\.(\d+)\.", key))}
        blocks.append(len(indices))
    bottleneck = "layer1.0.conv3.weight" in state_dict
    depth = _DEPTHS.get(tuple(blocks))
    if isinstance(depth, tuple):
        depth = depth[1] if bottleneck else depth[0]
    if depth is None:
        raise CheckpointError(f"{source}: blocks per stage {blocks} are not a torchvision "
                              "ResNet (18, 34, 50, 101 or 152)")
    base_width = int(state_dict["conv1.weight"].shape[0])
    groups, width_per_group = 1, 64
    if bottleneck:
        conv2 = state_dict["layer1.0.conv2.weight"]  # [width, width / groups, 3, 3]
        groups = int(conv2.shape[0]) // int(conv2.shape[1])
        width_per_group = int(conv2.shape[1]) * 64 // base_width
    return dict(depth=depth, groups=groups, width_per_group=width_per_group,
                base_width=base_width)


def classification_backbone_tensors(state_dict, source):
    """Maps a torchvision ResNet classifier onto this project's backbone, checking every tensor.

    Args:
      state_dict: dict of torchvision key -> NumPy array (read_torch_checkpoint).
      source: the checkpoint's path, for messages.

    Returns:
      (tensors, attributes): dict of weight key ("backbone/<layer>/<variable>") -> float32
      array in Keras layout; the backbone file's attributes (architecture, stride_in_1x1=False,
      torchvision's normalization, source).

    Raises:
      CheckpointError: tensors missing, left over or mis-shaped.
    """
    from mask_rcnn_tf.layers.resnet import ResNet

    architecture = backbone_architecture(state_dict, source)
    resnet = ResNet(norm="frozen_bn", freeze_at=0, stride_in_1x1=False, name="backbone",
                    **architecture)
    resnet.build((1, None, None, 3))
    tensors, missing, mismatched, used = {}, [], [], set(_CLASSIFIER)
    for variable in resnet.weights:
        layer, name = variable.path.split("/")[-2:]
        prefix = _backbone_key(layer)
        key = f"{prefix}.weight" if name == "kernel" else f"{prefix}.{_NORM_NAMES.get(name)}"
        if key not in state_dict:
            missing.append(key)
            continue
        used.add(key)
        value = np.asarray(state_dict[key], np.float32)
        value = _conv(value) if name == "kernel" else value
        if value.shape != tuple(variable.shape):
            mismatched.append(f"{key} {value.shape} -> {layer}/{name} {tuple(variable.shape)}")
            continue
        tensors[f"backbone/{layer}/{name}"] = value
    unexpected = sorted(k for k in state_dict
                        if k not in used and not k.endswith(".num_batches_tracked"))
    if missing or unexpected or mismatched:
        raise CheckpointError(f"{source}: not a torchvision ResNet classifier: "
                              + mismatch_summary(missing, unexpected, mismatched, MAX_LISTED),
                              missing, unexpected, mismatched)
    dropped = [key for key in _CLASSIFIER if key in state_dict]
    logger.info("%s: ResNet-%d (groups %d, width per group %d) ImageNet classifier: %d backbone "
                "tensors kept, classifier %s dropped", source, architecture["depth"],
                architecture["groups"], architecture["width_per_group"], len(tensors),
                " and ".join(dropped) or "(none)")
    attributes = dict(architecture, stride_in_1x1=False, source=f"torchvision {source}",
                      **TORCHVISION_PREPROCESSING)
    return tensors, attributes


def convert_classification_checkpoint(state_dict, source, output):
    """Writes the backbone file of a torchvision classifier to `output` (atomically).

    Returns:
      dict "output", "kind": "backbone", "tensors" (count) and the architecture.
    """
    from mask_rcnn_tf.io_utils import atomic_path

    tensors, attributes = classification_backbone_tensors(state_dict, source)
    with atomic_path(os.fspath(output)) as temp_path:
        write_backbone_file(temp_path, tensors, attributes)
    return {"output": os.fspath(output), "kind": "backbone", "tensors": len(tensors),
            **{k: attributes[k] for k in ("depth", "groups", "width_per_group")}}
