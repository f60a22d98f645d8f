"""Keras Applications ResNet50 / ResNet101 weights -> this model's backbone tensors.

Reads the file `keras.applications.ResNet50(include_top=False)` downloads
(resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5, legacy HDF5 by layer) or a Keras 3
`.weights.h5` saved from such a model, by loading it into the Keras Applications model itself.
That network is the MSRA ResNet (stride on the first 1x1 conv of a block: the config needs
`model.backbone.stride_in_1x1: true`), trained on Caffe-style input (BGR, mean [103.939,
116.779, 123.68], no std: `data.channel_order: bgr`, PREPROCESSING).

Layer names map as (s = 2..5 stage, b = 1.. block, i = 1..3):

    Keras Applications              this model (layers/resnet.py)
    conv1_conv, conv1_bn            stem_conv, stem_norm
    conv{s}_block{b}_{i}_conv/_bn   res{s}_block{b-1}_conv{i} / _norm{i}
    conv{s}_block{b}_0_conv/_bn     res{s}_block{b-1}_downsample_conv / _norm

Its convs carry a bias and its BatchNorm uses epsilon 1.001e-5; ours have no conv bias and
epsilon 1e-5. Both fold exactly into the norm: gamma (c + b - m) / sqrt(v + 1.001e-5) + beta is
gamma (c - m') / sqrt(v' + 1e-5) + beta with m' = m - b and v' = v + 1.001e-5 - 1e-5.
"""

import re

import numpy as np

from mask_rcnn_tf.weights.io import one_line, strict_load_weights

# depth -> the Keras Applications constructor name.
_MODELS = {50: "ResNet50", 101: "ResNet101"}
_OUR_EPSILON = 1e-5
PREPROCESSING = {"channel_order": "bgr", "mean": (103.939, 116.779, 123.68),
                 "std": (1.0, 1.0, 1.0)}


def _our_layer(name):
    """Our (conv layer, norm layer) names for a Keras Applications conv layer name, or None."""
    if name == "conv1_conv":
        return "stem_conv", "stem_norm"
    match = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_conv", name)
    if not match:
        return None
    stage, block, index = int(match.group(1)), int(match.group(2)) - 1, int(match.group(3))
    if index == 0:
        return (f"res{stage}_block{block}_downsample_conv",
                f"res{stage}_block{block}_downsample_norm")
    return f"res{stage}_block{block}_conv{index}", f"res{stage}_block{block}_norm{index}"


def _load_keras_resnet(path):
    """(depth, keras.Model) of the Keras Applications ResNet the file fits, or raise."""
    import keras

    errors = []
    for depth, name in _MODELS.items():
        model = getattr(keras.applications, name)(weights=None, include_top=False)
        try:
            strict_load_weights(model, path)
            return depth, model
        except (ValueError, OSError, KeyError) as error:
            errors.append(f"{name}: {one_line(error)[:120]}")
    raise ValueError(f"{path}: not a backbone file, a Mask R-CNN .weights.h5 or a Keras "
                     f"Applications ResNet50/ResNet101 weights file ({'; '.join(errors)})")


def keras_resnet_tensors(path):
    """Backbone tensors of a Keras Applications ResNet50/101 weights file.

    Args:
      path: str, the .h5 (legacy, as downloaded) or .weights.h5 file.

    Returns:
      (tensors, attributes): dict of weight key ("backbone/<layer>/<variable>") -> float32
      array in our layout (conv bias folded into the norm's moving_mean, epsilon into its
      moving_variance); attributes as a backbone file carries them (depth, groups,
      width_per_group, base_width, stride_in_1x1=True, channel_order, mean, std, source).

    Raises:
      ValueError: the file fits neither ResNet50 nor ResNet101.
    """
    depth, model = _load_keras_resnet(path)
    tensors = {}
    for layer in model.layers:
        names = _our_layer(layer.name)
        if names is None:
            continue
        conv_name, norm_name = names
        kernel, bias = (np.asarray(w, np.float32) for w in layer.get_weights())
        norm = model.get_layer(layer.name[:-len("conv")] + "bn")
        gamma, beta, mean, variance = (np.asarray(w, np.float32) for w in norm.get_weights())
        tensors[f"backbone/{conv_name}/kernel"] = kernel
        tensors[f"backbone/{norm_name}/gamma"] = gamma
        tensors[f"backbone/{norm_name}/beta"] = beta
        tensors[f"backbone/{norm_name}/moving_mean"] = mean - bias
        tensors[f"backbone/{norm_name}/moving_variance"] = (
            variance + np.float32(norm.epsilon - _OUR_EPSILON))
    attributes = dict(depth=depth, groups=1, width_per_group=64, base_width=64,
                      stride_in_1x1=True, source=f"Keras Applications {_MODELS[depth]}",
                      **PREPROCESSING)
    return tensors, attributes
