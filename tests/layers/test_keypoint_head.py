"""KeypointHead: the shared layer checks, then the transposed conv, the upsampling and the whole
head against NumPy re-implementations of torch's ConvTranspose2d(4, stride=2, padding=1) and
interpolate(scale_factor=2, mode="bilinear", align_corners=False) from their formulas."""

import numpy as np

from mask_rcnn_tf.layers.keypoint_head import KeypointHead
from tests.layers.test_case import np_conv2d, run_layer_test


def _relu(x):
    return np.maximum(x, 0.0)


def _torch_conv_transpose(x, weight, bias, stride, padding):
    """torch ConvTranspose2d: input pixel (i, j) adds x[i, j] . weight[:, :, dy, dx] to output
    (i * stride - padding + dy, j * stride - padding + dx).

    Args: x [N, H, W, C_in]; weight [C_in, C_out, k, k] (torch layout); bias [C_out].
    Returns: [N, (H - 1) stride - 2 padding + k, (W - 1) stride - 2 padding + k, C_out].
    """
    n, h, w, _ = x.shape
    k = weight.shape[2]
    full = np.zeros((n, (h - 1) * stride + k, (w - 1) * stride + k, weight.shape[1]))
    for i in range(h):
        for j in range(w):
            full[:, i * stride:i * stride + k, j * stride:j * stride + k] += np.einsum(
                "nc,coyx->nyxo", x[:, i, j], weight)
    return full[:, padding:full.shape[1] - padding, padding:full.shape[2] - padding] + bias


def _torch_upsample_weights(in_size, scale):
    """[in_size * scale, in_size] bilinear weights, align_corners=False: output o samples
    source s = (o + 0.5) / scale - 0.5, clamped at 0; the upper neighbour is clamped to the
    last cell."""
    out_size = in_size * scale
    source = np.maximum((np.arange(out_size) + 0.5) / scale - 0.5, 0.0)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, in_size - 1)
    fraction = source - low
    weights = np.zeros((out_size, in_size))
    np.add.at(weights, (np.arange(out_size), low), 1.0 - fraction)
    np.add.at(weights, (np.arange(out_size), high), fraction)
    return weights


def _torch_upsample_2x(x):
    wy = _torch_upsample_weights(x.shape[1], 2)
    wx = _torch_upsample_weights(x.shape[2], 2)
    return np.einsum("oh,nhwc,pw->nopc", wy, x, wx)


def _to_torch_transposed(kernel):
    """Keras Conv2DTranspose kernel [k, k, C_out, C_in] -> torch weight [C_in, C_out, k, k]."""
    return np.transpose(kernel, (3, 2, 0, 1))


def test_keypoint_head_layer_checks():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 3, 4, 4, 5)).astype("float32")
    run_layer_test(KeypointHead(num_keypoints=3, conv_dim=6, num_convs=2), features,
                   expected_output_shapes=(2, 3, 16, 16, 3), expected_output_dtypes="float32")


def test_names_defaults_and_paper_sizes():
    head = KeypointHead(num_keypoints=7, conv_dim=4)
    logits = head(np.zeros((1, 2, 14, 14, 3), np.float32))
    assert logits.shape == (1, 2, 56, 56, 7)
    config = head.get_config()
    assert (config["conv_dim"], config["num_convs"]) == (4, 8)
    assert [conv.name for conv in head.convs] == [f"conv_fcn{i}" for i in range(1, 9)]
    assert head.kps_score_lowres.name == "kps_score_lowres"
    assert head.kps_score_lowres.kernel.shape == (4, 4, 7, 4)
    assert KeypointHead(num_keypoints=17).get_config()["conv_dim"] == 512


def test_transposed_conv_is_torch_padding_1():
    rng = np.random.default_rng(1)
    head = KeypointHead(num_keypoints=3, conv_dim=4, num_convs=1)
    head(np.zeros((1, 1, 5, 5, 2), np.float32))
    layer = head.kps_score_lowres
    kernel = rng.normal(size=layer.kernel.shape).astype(np.float32)
    bias = rng.normal(size=layer.bias.shape).astype(np.float32)
    layer.set_weights([kernel, bias])
    x = rng.normal(size=(2, 5, 5, 4)).astype(np.float32)
    got = layer(x).numpy()
    want = _torch_conv_transpose(x.astype(np.float64), _to_torch_transposed(kernel), bias,
                                 stride=2, padding=1)
    assert got.shape == want.shape == (2, 10, 10, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_head_matches_numpy():
    rng = np.random.default_rng(2)
    num_keypoints, conv_dim, size, channels = 3, 4, 5, 6
    head = KeypointHead(num_keypoints=num_keypoints, conv_dim=conv_dim, num_convs=2)
    features = rng.normal(size=(2, 3, size, size, channels)).astype("float32")
    head(features)
    # Zero-initialized biases would hide a bias mix-up: use random weights and biases.
    head.set_weights([rng.normal(size=w.shape).astype("float32") * 0.5
                      for w in head.get_weights()])
    logits = head(features).numpy()
    assert logits.shape == (2, 3, 4 * size, 4 * size, num_keypoints)
    x = features.astype(np.float64).reshape(6, size, size, channels)
    for conv in head.convs:
        kernel, bias = conv.get_weights()
        x = _relu(np_conv2d(x, np.transpose(kernel, (3, 2, 0, 1)), padding=1, bias=bias))
    kernel, bias = head.kps_score_lowres.get_weights()
    x = _torch_conv_transpose(x, _to_torch_transposed(kernel), bias, stride=2, padding=1)
    want = _torch_upsample_2x(x)
    np.testing.assert_allclose(logits, want.reshape(logits.shape), rtol=1e-4, atol=1e-4)
