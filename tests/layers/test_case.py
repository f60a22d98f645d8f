"""run_layer_test: the checks every Keras layer of the project goes through (keras-hub style),
and np_conv2d, a NumPy PyTorch-Conv2d reference for layers that load torchvision weights.

Import them as `from tests.layers.test_case import run_layer_test, np_conv2d` (run pytest as
`python -m pytest` from the repository root, which puts the root on sys.path).
"""

import inspect
import json

import keras
import numpy as np
import tensorflow as tf


def run_layer_test(
    layer,
    inputs,
    expected_output_shapes,
    train_targets=None,
    expected_output_dtypes=None,
    deterministic=True,
):
    """Checks a layer's eager and symbolic outputs, config round trip and gradients.

    1. Eager call: output structure, shapes and dtypes.
    2. Symbolic call on keras.Input tensors of the same shapes: same shapes and dtypes.
    3. Serialization: the class is registered under package "mask_rcnn_tf"; get_config() is
       JSON-serializable, holds every named constructor argument and survives
       serialize/deserialize unchanged; the rebuilt layer has the same weights (count, shapes,
       trainable split) and, given the original's weights, the same outputs (when
       deterministic).
    4. Training: with training=True, the gradient of a squared-error loss on the float outputs
       reaches every trainable weight, is finite, and is non-zero for at least one weight.

    Args:
        layer: The keras.layers.Layer under test, built or not.
        inputs: The first call argument: a NumPy array, or a dict / list / tuple of them.
        expected_output_shapes: Shape tuple, or a structure of them mirroring the outputs
            (e.g. {"p2": (1, 16, 16, 8), ...}).
        train_targets: Structure like the outputs of arrays that the float outputs are
            regressed to in step 4; None regresses them to zero.
        expected_output_dtypes: Dtype name, or a structure mirroring the outputs; None means
            every output has the layer's compute dtype.
        deterministic: False skips comparing the rebuilt layer's outputs with the original's
            (layers that sample at random).

    Returns:
        The eager outputs, as a structure of NumPy arrays.
    """
    expected_shapes = _leaves(expected_output_shapes, _is_shape)
    if expected_output_dtypes is None or isinstance(expected_output_dtypes, str):
        dtype = expected_output_dtypes or layer.compute_dtype
        expected_dtypes = {path: dtype for path in expected_shapes}
    else:
        expected_dtypes = _leaves(expected_output_dtypes, lambda d: isinstance(d, str))

    eager = layer(inputs)
    _check_outputs("eager", eager, expected_shapes, expected_dtypes)

    symbolic_inputs = keras.tree.map_structure(
        lambda x: keras.Input(
            batch_shape=np.shape(x), dtype=keras.backend.standardize_dtype(x.dtype)
        ),
        inputs,
    )
    _check_outputs("symbolic", layer(symbolic_inputs), expected_shapes, expected_dtypes)

    _check_serialization(layer, inputs, eager, deterministic)
    _check_gradients(layer, inputs, train_targets)
    return keras.tree.map_structure(keras.ops.convert_to_numpy, eager)


def _is_shape(value):
    return isinstance(value, tuple) and all(d is None or isinstance(d, int) for d in value)


def _is_tensor(value):
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _leaves(structure, is_leaf):
    """Flattens a dict / list / tuple structure into {path: leaf}, paths like "/p2" or "/0"."""
    if is_leaf(structure):
        return {"": structure}
    if isinstance(structure, dict):
        items = structure.items()
    elif isinstance(structure, (list, tuple)):
        items = enumerate(structure)
    else:
        raise TypeError(f"run_layer_test: unexpected {type(structure).__name__} in a structure")
    flat = {}
    for key, value in items:
        for path, leaf in _leaves(value, is_leaf).items():
            flat[f"/{key}{path}"] = leaf
    return flat


def _check_outputs(mode, outputs, expected_shapes, expected_dtypes):
    flat = _leaves(outputs, _is_tensor)
    assert sorted(flat) == sorted(expected_shapes), (
        f"{mode}: output paths {sorted(flat)} != expected {sorted(expected_shapes)}"
    )
    for path, tensor in flat.items():
        assert tuple(tensor.shape) == expected_shapes[path], (
            f"{mode} output {path!r}: shape {tuple(tensor.shape)} != {expected_shapes[path]}"
        )
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        assert dtype == expected_dtypes[path], (
            f"{mode} output {path!r}: dtype {dtype} != {expected_dtypes[path]}"
        )


def _check_serialization(layer, inputs, eager, deterministic):
    registered = keras.saving.get_registered_name(type(layer))
    assert registered.startswith("mask_rcnn_tf>"), (
        f"{type(layer).__name__} is not registered under package 'mask_rcnn_tf': {registered}"
    )
    config = layer.get_config()
    json.dumps(config)
    arguments = [
        p.name
        for p in inspect.signature(type(layer).__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    missing = [name for name in arguments if name not in config]
    assert not missing, f"{type(layer).__name__}.get_config() lacks constructor arguments {missing}"
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is type(layer)
    assert clone.get_config() == config

    clone(inputs)
    assert [tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in layer.weights]
    assert len(clone.trainable_weights) == len(layer.trainable_weights)
    assert len(clone.non_trainable_weights) == len(layer.non_trainable_weights)
    if deterministic:
        clone.set_weights(layer.get_weights())
        clone_outputs = clone(inputs)
        # Same weights and config must give the same numbers: catches constructor arguments
        # that change the computation but are missing from get_config().
        for path, tensor in _leaves(eager, _is_tensor).items():
            np.testing.assert_allclose(
                keras.ops.convert_to_numpy(_leaves(clone_outputs, _is_tensor)[path]),
                keras.ops.convert_to_numpy(tensor),
                rtol=1e-5,
                atol=1e-5,
                err_msg=f"rebuilt layer output {path!r}",
            )


def _check_gradients(layer, inputs, train_targets):
    with tf.GradientTape() as tape:
        outputs = _leaves(layer(inputs, training=True), _is_tensor)
        targets = {} if train_targets is None else _leaves(train_targets, _is_tensor)
        loss = tf.constant(0.0)
        for path, output in outputs.items():
            if not output.dtype.is_floating:
                continue
            output = tf.cast(output, tf.float32)
            target = targets.get(path, tf.zeros_like(output))
            loss += tf.reduce_mean(tf.square(output - tf.cast(target, tf.float32)))
    weights = layer.trainable_weights
    grads = tape.gradient(loss, weights)
    assert np.isfinite(float(loss)), f"training loss is {float(loss)}"
    for weight, grad in zip(weights, grads):
        assert grad is not None, f"no gradient reaches trainable weight {weight.path}"
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(grad))), (
            f"non-finite gradient for {weight.path}"
        )
    if weights:
        nonzero = [np.any(keras.ops.convert_to_numpy(g) != 0) for g in grads]
        assert any(nonzero), "all gradients are zero"


def np_conv2d(x, w, stride=1, padding=0, groups=1, bias=None):
    """Reference PyTorch Conv2d in NumPy (float64), for layer tests that load torch weights.

    Args:
        x: [B, H, W, C_in] (NHWC, as the layers).
        w: [C_out, C_in / groups, k, k], PyTorch's OIHW layout.
        stride: Stride of both axes.
        padding: Zeros added on every side (PyTorch's symmetric padding).
        groups: Grouped-convolution groups.
        bias: [C_out] or None.

    Returns:
        [B, (H + 2 padding - k) // stride + 1, (W + 2 padding - k) // stride + 1, C_out].
    """
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    b, h, wd, _ = x.shape
    c_out, c_in_g, k, _ = w.shape
    h_out, w_out = (h - k) // stride + 1, (wd - k) // stride + 1
    out = np.zeros((b, h_out, w_out, c_out))
    c_out_g = c_out // groups
    for g in range(groups):
        xg = x[..., g * c_in_g : (g + 1) * c_in_g]
        wg = w[g * c_out_g : (g + 1) * c_out_g]
        for dy in range(k):
            for dx in range(k):
                rows = slice(dy, dy + stride * (h_out - 1) + 1, stride)
                cols = slice(dx, dx + stride * (w_out - 1) + 1, stride)
                out[..., g * c_out_g : (g + 1) * c_out_g] += xg[:, rows, cols] @ wg[:, :, dy, dx].T
    return out if bias is None else out + bias
