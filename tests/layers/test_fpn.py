"""Tests for layers/fpn.py against a NumPy restatement of torchvision's FeaturePyramidNetwork."""

import keras
import numpy as np
import pytest

from mask_rcnn_tf.layers.fpn import FPN
from tests.layers.test_case import np_conv2d, run_layer_test


def random_features(sizes, channels, rng, batch=1):
    return {
        f"c{k}": rng.normal(size=(batch, h, w, c)).astype("float32")
        for k, (h, w), c in zip(range(2, 6), sizes, channels)
    }


def np_interpolate_nearest(x, size):
    """F.interpolate(x, size, mode="nearest"): out[i] = in[min(floor(i * in / out), in - 1)]."""
    h, w = x.shape[1:3]
    rows = np.minimum(np.floor(np.arange(size[0]) * np.float32(h / size[0])).astype(int), h - 1)
    cols = np.minimum(np.floor(np.arange(size[1]) * np.float32(w / size[1])).astype(int), w - 1)
    return x[:, rows][:, :, cols]


def np_fpn(params, features):
    """torchvision FeaturePyramidNetwork + LastLevelMaxPool forward, float64."""
    x = [features[f"c{k}"] for k in range(2, 6)]
    inner = [np_conv2d(x[i], params[f"inner.{i}.w"], bias=params[f"inner.{i}.b"]) for i in range(4)]
    last = inner[3]
    results = [np_conv2d(last, params["layer.3.w"], padding=1, bias=params["layer.3.b"])]
    for i in (2, 1, 0):
        last = inner[i] + np_interpolate_nearest(last, inner[i].shape[1:3])
        p = np_conv2d(last, params[f"layer.{i}.w"], padding=1, bias=params[f"layer.{i}.b"])
        results.insert(0, p)
    pyramid = {f"p{k}": r for k, r in zip(range(2, 6), results)}
    pyramid["p6"] = results[3][:, ::2, ::2]  # max_pool2d(kernel 1, stride 2)
    return pyramid


@pytest.mark.parametrize(
    "sizes",
    [
        [(18, 10), (9, 5), (5, 3), (3, 2)],  # ResNet maps of a 72 x 40 input: 2n and 2n - 1
        [(11, 7), (4, 3), (3, 2), (1, 1)],  # arbitrary sizes: general nearest resize
    ],
)
def test_fpn_matches_numpy_torchvision_reference(sizes):
    rng = np.random.default_rng(0)
    channels, out_channels = (4, 6, 8, 10), 5
    features = random_features(sizes, channels, rng, batch=2)
    params = {}
    for i, c in enumerate(channels):
        params[f"inner.{i}.w"] = rng.normal(0, 0.3, (out_channels, c, 1, 1))
        params[f"inner.{i}.b"] = rng.normal(0, 0.3, out_channels)
        params[f"layer.{i}.w"] = rng.normal(0, 0.3, (out_channels, out_channels, 3, 3))
        params[f"layer.{i}.b"] = rng.normal(0, 0.3, out_channels)
    fpn = FPN(out_channels)
    fpn.build({k: v.shape for k, v in features.items()})
    weights = {tuple(w.path.split("/")[-2:]): w for w in fpn.weights}
    assert len(weights) == len(params)
    for i in range(4):
        for torch_name, layer in (
            (f"inner.{i}", f"lateral_c{i + 2}"),
            (f"layer.{i}", f"output_p{i + 2}"),
        ):
            kernel = params[f"{torch_name}.w"].transpose(2, 3, 1, 0)  # OIHW -> HWIO
            weights[(layer, "kernel")].assign(kernel.astype("float32"))
            weights[(layer, "bias")].assign(params[f"{torch_name}.b"].astype("float32"))
    out = fpn(features)
    expected = np_fpn(params, features)
    assert sorted(out) == sorted(expected)
    for key, value in expected.items():
        got = keras.ops.convert_to_numpy(out[key])
        np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-5, err_msg=key)


def test_fpn_layer_contract():
    rng = np.random.default_rng(1)
    sizes = [(16, 12), (8, 6), (4, 3), (2, 2)]
    features = random_features(sizes, (8, 16, 32, 64), rng)
    expected = {f"p{k}": (1, h, w, 8) for k, (h, w) in zip(range(2, 6), sizes)}
    expected["p6"] = (1, 1, 1, 8)
    run_layer_test(FPN(8), features, expected)


def test_fpn_without_p6():
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1)]
    features = random_features(sizes, (4, 4, 4, 4), np.random.default_rng(2))
    out = FPN(4, use_p6=False)(features)
    assert sorted(out) == ["p2", "p3", "p4", "p5"]


def test_fpn_dynamic_sizes():
    fpn = FPN(4)
    channels = {f"c{k}": c for k, c in zip(range(2, 6), (3, 5, 6, 7))}
    inputs = {k: keras.Input(shape=(None, None, c), name=k) for k, c in channels.items()}
    model = keras.Model(inputs, fpn(inputs))
    assert all(tuple(t.shape) == (None, None, None, 4) for t in model.outputs)
    sizes = [(9, 14), (5, 7), (3, 4), (2, 2)]
    out = model(random_features(sizes, (3, 5, 6, 7), np.random.default_rng(6)))
    assert [tuple(out[f"p{k}"].shape[1:3]) for k in range(2, 7)] == sizes + [(1, 1)]


def test_fpn_group_norm_drops_conv_bias():
    rng = np.random.default_rng(3)
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1)]
    features = random_features(sizes, (4, 8, 16, 32), rng)
    fpn = FPN(8, norm="gn", norm_groups=4)
    expected = {f"p{k}": (1, h, w, 8) for k, (h, w) in zip(range(2, 6), sizes)}
    expected["p6"] = (1, 1, 1, 8)
    run_layer_test(fpn, features, expected)
    names = {tuple(w.path.split("/")[-2:]) for w in fpn.weights}
    for k in range(2, 6):
        assert (f"lateral_c{k}", "bias") not in names and (f"output_p{k}", "bias") not in names
        assert {(f"lateral_c{k}_norm", "gamma"), (f"output_p{k}_norm", "beta")} <= names
    assert len(fpn.weights) == 8 + 8 * 2  # 8 kernels, 8 norms with gamma and beta


def test_fpn_frozen_norms_fold_into_their_convs():
    rng = np.random.default_rng(7)
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1)]
    features = random_features(sizes, (4, 8, 16, 32), rng)
    fpn = FPN(8, norm="frozen_bn")
    fpn(features)
    for w in fpn.weights:
        if w.path.endswith(("gamma", "moving_variance")):
            w.assign(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
        elif w.path.endswith(("beta", "moving_mean")):
            w.assign(rng.normal(size=w.shape).astype("float32"))
    before = {k: keras.ops.convert_to_numpy(v) for k, v in fpn(features).items()}
    assert fpn.fold_frozen_norms() == 8
    after = fpn(features)
    for key, value in before.items():
        np.testing.assert_allclose(keras.ops.convert_to_numpy(after[key]), value, rtol=1e-4,
                                   atol=1e-4 * np.abs(value).max(), err_msg=key)
    assert FPN(8).fold_frozen_norms() == 0  # convs with bias and no norm: nothing to fold


def test_fpn_mixed_bfloat16():
    rng = np.random.default_rng(4)
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1)]
    features = random_features(sizes, (4, 8, 16, 32), rng)
    expected = {f"p{k}": (1, h, w, 8) for k, (h, w) in zip(range(2, 6), sizes)}
    expected["p6"] = (1, 1, 1, 8)
    fpn = FPN(8, dtype="mixed_bfloat16")
    run_layer_test(fpn, features, expected, expected_output_dtypes="bfloat16")
    assert all(w.dtype == "float32" for w in fpn.weights)


def test_fpn_parameter_count_resnet50():
    in_channels, out = (256, 512, 1024, 2048), 256
    lateral = sum(c * out + out for c in in_channels)
    output = 4 * (3 * 3 * out * out + out)
    assert lateral + output == 3_344_384  # torchvision resnet_fpn_backbone("resnet50").fpn
    fpn = FPN(out)
    fpn.build({f"c{k}": (1, 64 // 2**k, 64 // 2**k, c) for k, c in zip(range(2, 6), in_channels)})
    assert fpn.count_params() == 3_344_384


def test_fpn_init_is_kaiming_uniform_a1():
    fpn = FPN(256)
    fpn.build({f"c{k}": (1, 8, 8, c) for k, c in zip(range(2, 6), (256, 512, 1024, 2048))})
    weights = {w.path.split("/", 1)[1]: keras.ops.convert_to_numpy(w) for w in fpn.weights}
    for name, fan_in in (("lateral_c5/kernel", 2048), ("output_p2/kernel", 9 * 256)):
        bound = np.sqrt(3.0 / fan_in)
        values = weights[name]
        assert np.abs(values).max() <= bound * (1 + 1e-6)  # float32 rounding of the bound
        assert np.abs(values).max() > 0.99 * bound
        assert abs(values.std() / (bound / np.sqrt(3.0)) - 1) < 0.02
    assert all(not v.any() for n, v in weights.items() if n.endswith("bias"))


def test_fpn_bad_arguments():
    with pytest.raises(ValueError, match="'conv'"):
        FPN(p6_mode="conv")
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1)]
    features = random_features(sizes, (4, 4, 4, 4), np.random.default_rng(5))
    del features["c3"]
    with pytest.raises(ValueError, match="c3"):
        FPN(4)(features)
