"""Tests for layers/norm.py and layers/resnet.py.

The references are written here from torchvision's definitions (models/resnet.py,
ops/misc.py FrozenBatchNorm2d): parameter names and shapes in torchvision's layout and a
float64 NumPy forward pass with PyTorch's padding, loaded into the Keras layer by name.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from mask_rcnn_tf.layers.norm import FrozenBatchNormalization, make_norm
from mask_rcnn_tf.layers.resnet import ResNet
from tests.layers.test_case import np_conv2d, run_layer_test

# torchvision's published parameter counts minus the 1000-class fc (in_features * 1000 + 1000).
TORCHVISION_BODY_PARAMS = {
    (18, 1, 64): 11_689_512 - (512 * 1000 + 1000),
    (50, 1, 64): 25_557_032 - (2048 * 1000 + 1000),
    (101, 1, 64): 44_549_160 - (2048 * 1000 + 1000),
    (101, 32, 8): 88_791_336 - (2048 * 1000 + 1000),  # resnext101_32x8d
}
BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}


# ---------------------------------------------------------------- torchvision reference


def torchvision_param_shapes(depth, groups=1, width_per_group=64, base_width=64):
    """{torchvision parameter name: shape} of resnet{depth} without fc, conv weights OIHW.

    base_width scales the stem and the stage planes (64, 128, 256, 512) by base_width / 64.
    """
    shapes = {}

    def conv(name, c_out, c_in, k, g=1):
        shapes[f"{name}.weight"] = (c_out, c_in // g, k, k)

    def bn(name, c):
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{suffix}"] = (c,)

    bottleneck = depth >= 50
    expansion = 4 if bottleneck else 1
    inplanes = base_width
    conv("conv1", inplanes, 3, 7)
    bn("bn1", inplanes)
    for i, n in enumerate(BLOCKS[depth]):
        planes = base_width * 2**i
        for b in range(n):
            p = f"layer{i + 1}.{b}"
            if bottleneck:
                width = int(planes * (width_per_group / 64.0)) * groups
                conv(f"{p}.conv1", width, inplanes, 1)
                bn(f"{p}.bn1", width)
                conv(f"{p}.conv2", width, width, 3, groups)
                bn(f"{p}.bn2", width)
                conv(f"{p}.conv3", planes * expansion, width, 1)
                bn(f"{p}.bn3", planes * expansion)
            else:
                conv(f"{p}.conv1", planes, inplanes, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            stride = 2 if (i > 0 and b == 0) else 1
            if stride != 1 or inplanes != planes * expansion:
                conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    return shapes


def keras_key(torch_name):
    """(layer name, weight name) in ResNet for a torchvision parameter name (documented map)."""
    module, param = torch_name.rsplit(".", 1)
    weight = {
        "weight": "kernel" if "conv" in module or module.endswith("downsample.0") else "gamma",
        "bias": "beta",
        "running_mean": "moving_mean",
        "running_var": "moving_variance",
    }[param]
    if module == "conv1":
        return "stem_conv", weight
    if module == "bn1":
        return "stem_norm", weight
    layer, block, rest = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", module).groups()
    rest = {"downsample.0": "downsample_conv", "downsample.1": "downsample_norm"}.get(
        rest, rest.replace("bn", "norm")
    )
    return f"res{int(layer) + 1}_block{block}_{rest}", weight


def random_torch_params(shapes, rng):
    params = {}
    for name, shape in shapes.items():
        if name.endswith(".weight") and len(shape) == 4:
            fan_in = np.prod(shape[1:])
            params[name] = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
        elif name.endswith(("running_var", ".weight")):
            params[name] = rng.uniform(0.5, 1.5, shape)
        else:
            params[name] = rng.normal(0, 0.1, shape)
    return params


def load_torch_params(resnet, params):
    """Assigns torchvision-named params to the built layer; every Keras weight must be hit."""
    weights = {tuple(w.path.split("/")[-2:]): w for w in resnet.weights}
    assigned = set()
    for name, value in params.items():
        key = keras_key(name)
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        weights[key].assign(value.astype("float32"))
        assigned.add(key)
    assert assigned == set(weights)


def np_max_pool_3x3_s2_p1(x):
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    h_out, w_out = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    windows = [
        x[:, dy : dy + 2 * (h_out - 1) + 1 : 2, dx : dx + 2 * (w_out - 1) + 1 : 2]
        for dy in range(3)
        for dx in range(3)
    ]
    return np.max(windows, axis=0)


def np_frozen_bn(x, params, name, eps=1e-5):
    p = {k: params[f"{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")}
    return (x - p["running_mean"]) / np.sqrt(p["running_var"] + eps) * p["weight"] + p["bias"]


def np_resnet(params, x, depth, groups, stride_in_1x1):
    """torchvision ResNet forward (frozen BN) in float64; returns {"c2".."c5"}."""
    relu = lambda t: np.maximum(t, 0)  # noqa: E731

    def conv_bn(t, conv, bn, stride, padding, groups=1):
        t = np_conv2d(t, params[f"{conv}.weight"], stride, padding, groups)
        return np_frozen_bn(t, params, bn)

    x = relu(conv_bn(x, "conv1", "bn1", 2, 3))
    x = np_max_pool_3x3_s2_p1(x)
    features = {}
    for i, n in enumerate(BLOCKS[depth]):
        for b in range(n):
            p = f"layer{i + 1}.{b}"
            stride = 2 if (i > 0 and b == 0) else 1
            if depth >= 50:
                s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
                out = relu(conv_bn(x, f"{p}.conv1", f"{p}.bn1", s1, 0))
                out = relu(conv_bn(out, f"{p}.conv2", f"{p}.bn2", s3, 1, groups))
                out = conv_bn(out, f"{p}.conv3", f"{p}.bn3", 1, 0)
            else:
                out = relu(conv_bn(x, f"{p}.conv1", f"{p}.bn1", stride, 1))
                out = conv_bn(out, f"{p}.conv2", f"{p}.bn2", 1, 1)
            identity = x
            if f"{p}.downsample.0.weight" in params:
                identity = conv_bn(x, f"{p}.downsample.0", f"{p}.downsample.1", stride, 0)
            x = relu(out + identity)
        features[f"c{i + 2}"] = x
    return features


def c_shapes(batch, size, channels):
    """Expected {"c2".."c5": shape} for a square input of `size` (a multiple of 32)."""
    return {f"c{k}": (batch, size // 2**k, size // 2**k, c) for k, c in zip(range(2, 6), channels)}


def conv_out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def expected_sizes(h, w):
    """Spatial sizes of C2..C5 by PyTorch's conv/pool output formula."""
    h, w = conv_out(h, 7, 2, 3), conv_out(w, 7, 2, 3)
    h, w = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
    sizes = [(h, w)]
    for _ in range(3):
        h, w = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
        sizes.append((h, w))
    return sizes


# ---------------------------------------------------------------- norm.py


def test_frozen_batch_norm_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4, 5)).astype("float32")
    stats = {
        "gamma": rng.uniform(0.5, 2, 5),
        "beta": rng.normal(size=5),
        "moving_mean": rng.normal(size=5),
        "moving_variance": rng.uniform(0.01, 2, 5),
    }
    layer = FrozenBatchNormalization(epsilon=1e-3)
    layer.build(x.shape)
    assert [w.name for w in layer.weights] == list(stats)
    assert layer.trainable_weights == []
    for w in layer.weights:
        w.assign(stats[w.name].astype("float32"))
    expected = (x - stats["moving_mean"]) / np.sqrt(stats["moving_variance"] + 1e-3)
    expected = expected * stats["gamma"] + stats["beta"]
    out = run_layer_test(layer, x, x.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # Training mode must not use batch statistics.
    np.testing.assert_allclose(layer(x, training=True), expected, rtol=1e-5, atol=1e-5)


def test_frozen_batch_norm_mixed_bfloat16():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 2, 2, 4)).astype("float32")
    layer = FrozenBatchNormalization(dtype="mixed_bfloat16")
    layer.build(x.shape)
    assert all(w.dtype == "float32" for w in layer.weights)
    layer.moving_mean.assign(np.full(4, 0.5, "float32"))
    layer.moving_variance.assign(np.full(4, 4.0, "float32"))
    out = run_layer_test(layer, x, x.shape, expected_output_dtypes="bfloat16")
    expected = (x - 0.5) / np.sqrt(4.0 + 1e-5)
    np.testing.assert_allclose(out.astype("float32"), expected, rtol=1e-2, atol=1e-2)


def test_folded_frozen_batch_norm_is_a_bias_add_after_a_scaled_kernel():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 6, 6, 4)).astype("float32")
    conv = keras.layers.Conv2D(5, 3, padding="same", use_bias=False, groups=1)
    norm = FrozenBatchNormalization()
    norm.build((2, 6, 6, 5))
    for w, value in zip(norm.weights, (rng.uniform(0.5, 2, 5), rng.normal(size=5),
                                       rng.normal(size=5), rng.uniform(0.1, 2, 5))):
        w.assign(value.astype("float32"))
    before = keras.ops.convert_to_numpy(norm(conv(x)))
    norm.fold_into(conv)
    assert norm.folded
    after = keras.ops.convert_to_numpy(norm(conv(x)))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    graph = tf.function(lambda t: norm(conv(t))).get_concrete_function(
        tf.TensorSpec((None, None, None, 4))).graph
    ops_used = {op.type for op in graph.get_operations()}
    assert "BiasAdd" in ops_used and "Mul" not in ops_used
    with pytest.raises(ValueError, match="folded already"):
        norm.fold_into(conv)
    biased = keras.layers.Conv2D(5, 1, use_bias=True)
    biased.build((1, 2, 2, 4))
    with pytest.raises(ValueError, match="use_bias=True"):
        _built_norm(5).fold_into(biased)


def _built_norm(channels):
    norm = FrozenBatchNormalization()
    norm.build((1, 1, 1, channels))
    return norm


def test_make_norm_kinds():
    frozen = make_norm("frozen_bn", "a")
    assert isinstance(frozen, FrozenBatchNormalization)
    assert (frozen.epsilon, frozen.name) == (1e-5, "a")
    bn = make_norm("bn", "b", synchronized=True)
    assert isinstance(bn, keras.layers.BatchNormalization)
    assert (bn.epsilon, bn.momentum, bn.synchronized, bn.name) == (1e-5, 0.9, True, "b")
    gn = make_norm("gn", "c", groups=4)
    assert isinstance(gn, keras.layers.GroupNormalization)
    assert (gn.groups, gn.epsilon, gn.name) == (4, 1e-5, "c")
    with pytest.raises(ValueError, match="'layer_norm'"):
        make_norm("layer_norm", "d")


# ---------------------------------------------------------------- resnet.py


@pytest.mark.parametrize(
    "depth, channels", [(18, (64, 128, 256, 512)), (50, (128, 256, 512, 1024))]
)
def test_resnet_output_shapes(depth, channels):
    # Depth 50 runs at base_width 32 (half widths) to keep the test fast.
    base_width = 64 if depth == 18 else 32
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    expected = c_shapes(1, 64, channels)
    run_layer_test(ResNet(depth, base_width=base_width), x, expected)


def test_resnet_dynamic_and_odd_input_sizes():
    resnet = ResNet(18, base_width=16)
    symbolic = resnet(keras.Input(shape=(None, None, 3)))
    assert [tuple(symbolic[f"c{k}"].shape) for k in range(2, 6)] == [
        (None, None, None, c) for c in (16, 32, 64, 128)
    ]
    out = resnet(np.zeros((1, 72, 40, 3), "float32"))
    assert [tuple(out[f"c{k}"].shape[1:3]) for k in range(2, 6)] == expected_sizes(72, 40)


@pytest.mark.parametrize(
    "depth, groups, width_per_group, stride_in_1x1",
    [(18, 1, 64, False), (50, 4, 8, False), (50, 4, 8, True)],
)
def test_resnet_matches_numpy_torchvision_reference(depth, groups, width_per_group, stride_in_1x1):
    """Random torchvision-layout weights, loaded by name, give torchvision's C2..C5."""
    rng = np.random.default_rng(depth + stride_in_1x1)
    base_width = 16
    shapes = torchvision_param_shapes(depth, groups, width_per_group, base_width)
    params = random_torch_params(shapes, rng)
    # 40 x 56 makes odd maps (5 x 7 at C4), where asymmetric "same" padding would differ.
    x = rng.normal(size=(2, 40, 56, 3))
    resnet = ResNet(
        depth,
        groups=groups,
        width_per_group=width_per_group,
        stride_in_1x1=stride_in_1x1,
        base_width=base_width,
    )
    resnet.build(x.shape)
    load_torch_params(resnet, params)
    expected = np_resnet(params, x, depth, groups, stride_in_1x1)
    # The exported model folds each frozen norm into its conv: it must give the same maps.
    for folded in (False, True):
        if folded:
            assert resnet.fold_frozen_norms() == len(
                [name for name in params if name.endswith("running_mean")])
        out = resnet(x.astype("float32"))
        for key, value in expected.items():
            got = keras.ops.convert_to_numpy(out[key])
            assert got.shape == value.shape, key
            atol = 1e-4 * np.abs(value).max()
            np.testing.assert_allclose(got, value, rtol=1e-4, atol=atol,
                                       err_msg=f"{key}, folded={folded}")


def test_stride_in_1x1_moves_the_stride():
    for stride_in_1x1, (s1, s3) in ((False, (1, 2)), (True, (2, 1))):
        resnet = ResNet(50, stride_in_1x1=stride_in_1x1, base_width=16)
        out = resnet(np.zeros((1, 64, 64, 3), "float32"))
        assert out["c3"].shape == (1, 8, 8, 128)
        layers = {layer.name: layer for layer in resnet._flatten_layers(include_self=False)}
        for stage in (3, 4, 5):
            assert layers[f"res{stage}_block0_conv1"].strides == (s1, s1)
            assert layers[f"res{stage}_block0_conv2"].strides == (s3, s3)
            assert layers[f"res{stage}_block1_conv1"].strides == (1, 1)
            assert layers[f"res{stage}_block1_conv2"].strides == (1, 1)


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 5])
def test_freeze_at_marks_weights_non_trainable(freeze_at):
    resnet = ResNet(18, norm="bn", freeze_at=freeze_at, base_width=16)
    resnet.build((1, 32, 32, 3))
    frozen = (["stem_"] if freeze_at >= 1 else []) + [f"res{s}_" for s in range(2, freeze_at + 1)]
    expected = {
        w.path
        for w in resnet.weights
        if w.name in ("kernel", "gamma", "beta")
        and not w.path.split("/")[-2].startswith(tuple(frozen))
    }
    assert {w.path for w in resnet.trainable_weights} == expected
    assert len(resnet.trainable_weights) + len(resnet.non_trainable_weights) == len(resnet.weights)


def test_frozen_stage_batch_norm_keeps_statistics():
    resnet = ResNet(18, norm="bn", freeze_at=2, base_width=16)
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(2, 32, 32, 3)).astype("float32")
    resnet.build(x.shape)
    means = {w.path: w for w in resnet.weights if w.name == "moving_mean"}
    before = {path: keras.ops.convert_to_numpy(w).copy() for path, w in means.items()}
    resnet(x, training=True)
    for path, w in means.items():
        changed = not np.array_equal(before[path], keras.ops.convert_to_numpy(w))
        frozen = path.split("/")[-2].startswith(("stem_", "res2_"))
        assert changed != frozen, path


def test_synchronized_bn_reaches_every_norm():
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    resnet = ResNet(18, norm="bn", synchronized_bn=True, freeze_at=0, base_width=16)
    expected = c_shapes(2, 32, (16, 32, 64, 128))
    run_layer_test(resnet, x, expected)
    norms = [layer for layer in resnet._flatten_layers(include_self=False) if "norm" in layer.name]
    assert len(norms) == 20  # stem + 8 blocks x 2 + 3 downsample shortcuts
    assert all(isinstance(n, keras.layers.BatchNormalization) and n.synchronized for n in norms)


def test_group_norm_variant():
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    resnet = ResNet(50, norm="gn", norm_groups=8, freeze_at=0, base_width=16)
    expected = c_shapes(1, 64, (64, 128, 256, 512))
    run_layer_test(resnet, x, expected)
    norms = [layer for layer in resnet._flatten_layers(include_self=False) if "norm" in layer.name]
    assert norms
    assert all(isinstance(n, keras.layers.GroupNormalization) and n.groups == 8 for n in norms)


def test_mixed_bfloat16_matches_float32():
    keras.utils.set_random_seed(0)  # fixed weights: bfloat16 error is ~1% of the range here
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    mixed = ResNet(18, base_width=16, dtype="mixed_bfloat16")
    expected = c_shapes(1, 64, (16, 32, 64, 128))
    out = run_layer_test(mixed, x, expected, expected_output_dtypes="bfloat16")
    assert all(w.dtype == "float32" for w in mixed.weights)
    full = ResNet(18, base_width=16)
    full.build(x.shape)
    full.set_weights(mixed.get_weights())
    ref = keras.ops.convert_to_numpy(full(x)["c5"])
    np.testing.assert_allclose(out["c5"].astype("float32"), ref, atol=0.05 * np.abs(ref).max())


@pytest.mark.parametrize("depth, groups, width_per_group", list(TORCHVISION_BODY_PARAMS))
def test_parameter_counts_match_torchvision(depth, groups, width_per_group):
    shapes = torchvision_param_shapes(depth, groups, width_per_group)
    conv = sum(np.prod(s) for n, s in shapes.items() if len(s) == 4)
    bn_channels = sum(s[0] for n, s in shapes.items() if n.endswith("running_mean"))
    # torchvision's parameters are the conv weights and the BN weight/bias.
    assert conv + 2 * bn_channels == TORCHVISION_BODY_PARAMS[(depth, groups, width_per_group)]
    resnet = ResNet(depth, groups=groups, width_per_group=width_per_group)
    resnet.build((1, 64, 64, 3))
    kernels = [w for w in resnet.weights if w.name == "kernel"]
    assert sum(np.prod(w.shape) for w in kernels) == conv
    assert len(kernels) == sum(len(s) == 4 for s in shapes.values())
    assert resnet.count_params() == conv + 4 * bn_channels


def test_base_width_scales_parameter_count():
    shapes = torchvision_param_shapes(50, base_width=32)
    resnet = ResNet(50, base_width=32)
    resnet.build((1, 64, 64, 3))
    assert resnet.count_params() == sum(np.prod(s) for s in shapes.values())


def test_conv_init_is_kaiming_normal_fan_out():
    resnet = ResNet(50, base_width=32)
    resnet.build((1, 64, 64, 3))
    kernel = next(w for w in resnet.weights if w.path.endswith("res5_block0_conv3/kernel"))
    values = keras.ops.convert_to_numpy(kernel)
    assert values.shape == (1, 1, 256, 1024)
    std = np.sqrt(2.0 / 1024)  # fan_out = 1024 output channels x 1 x 1
    assert abs(values.std() / std - 1) < 0.02
    # Untruncated, as torchvision: about 4.6% of a normal lies beyond 2 sigma.
    assert 0.035 < np.mean(np.abs(values) > 2 * std) < 0.06


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"depth": 20}, "depth"),
        ({"depth": 18, "groups": 32}, "groups"),
        ({"depth": 34, "stride_in_1x1": True}, "stride_in_1x1"),
        ({"freeze_at": 6}, "freeze_at"),
        ({"norm": "batch"}, "'batch'"),
    ],
)
def test_invalid_arguments_raise(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ResNet(**kwargs)
