"""RPNHead, BoxHead and MaskHead: the shared layer checks, then each output against a NumPy
re-computation from the layer's own weights (ordering of anchors, classes and deltas included)."""

import numpy as np
import pytest

from mask_rcnn_tf.layers.box_head import BoxHead
from mask_rcnn_tf.layers.mask_head import MaskHead
from mask_rcnn_tf.layers.rpn_head import RPNHead
from tests.layers.test_case import np_conv2d, run_layer_test


def _conv(x, kernel, bias, padding):
    """Keras Conv2D (kernel [k, k, C_in, C_out], HWIO) through the OIHW NumPy reference."""
    return np_conv2d(x, np.transpose(kernel, (3, 2, 0, 1)), padding=padding, bias=bias)


def _relu(x):
    return np.maximum(x, 0.0)


def test_rpn_head_layer_checks():
    rng = np.random.default_rng(0)
    features = [rng.normal(size=(2, 6, 5, 8)).astype("float32"),
                rng.normal(size=(2, 3, 3, 8)).astype("float32")]
    run_layer_test(
        RPNHead(num_anchors=3, num_channels=6), features,
        expected_output_shapes=([(2, 90), (2, 27)], [(2, 90, 4), (2, 27, 4)]))


def test_rpn_head_orders_cell_major_anchor_minor():
    rng = np.random.default_rng(1)
    num_anchors = 3
    head = RPNHead(num_anchors=num_anchors, num_channels=5)
    features = [rng.normal(size=(2, 4, 6, 7)).astype("float32"),
                rng.normal(size=(2, 2, 3, 7)).astype("float32")]
    head(features)
    # Small init (std 0.01) would make every output nearly equal: use weights of unit scale.
    head.set_weights([rng.normal(size=w.shape).astype("float32") for w in head.get_weights()])
    logits, deltas = head(features)
    conv_k, conv_b = head.conv.get_weights()
    obj_k, obj_b = head.objectness.get_weights()
    box_k, box_b = head.box_deltas.get_weights()
    for level, feature in enumerate(features):
        hidden = _relu(_conv(feature, conv_k, conv_b, padding=1))
        objectness = _conv(hidden, obj_k, obj_b, padding=0)  # [B, H, W, A]
        box = _conv(hidden, box_k, box_b, padding=0)  # [B, H, W, 4A], anchor-major, then 4
        batch, height, width, _ = feature.shape
        want_logits = np.zeros((batch, height * width * num_anchors))
        want_deltas = np.zeros((batch, height * width * num_anchors, 4))
        for b in range(batch):
            for i in range(height):
                for j in range(width):
                    for a in range(num_anchors):
                        row = (i * width + j) * num_anchors + a
                        want_logits[b, row] = objectness[b, i, j, a]
                        want_deltas[b, row] = box[b, i, j, 4 * a:4 * a + 4]
        assert logits[level].dtype == "float32" and deltas[level].dtype == "float32"
        np.testing.assert_allclose(logits[level].numpy(), want_logits, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(deltas[level].numpy(), want_deltas, rtol=1e-4, atol=1e-4)


def test_box_head_layer_checks():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(2, 3, 4, 4, 5)).astype("float32")
    run_layer_test(BoxHead(num_classes=4, fc_dim=16), features,
                   expected_output_shapes=((2, 3, 4), (2, 3, 4, 4)))


def test_box_head_matches_numpy():
    rng = np.random.default_rng(3)
    num_classes, fc_dim = 5, 12
    head = BoxHead(num_classes=num_classes, fc_dim=fc_dim)
    features = rng.normal(size=(2, 3, 4, 4, 6)).astype("float32")
    head(features)
    head.set_weights([rng.normal(size=w.shape).astype("float32") * 0.3
                      for w in head.get_weights()])
    logits, deltas = head(features)
    (k1, b1), (k2, b2) = head.fc1.get_weights(), head.fc2.get_weights()
    kc, bc = head.class_logits.get_weights()
    kd, bd = head.box_deltas.get_weights()
    x = features.astype(np.float64).reshape(2, 3, -1)  # row-major (P, P, C) flattening
    hidden = _relu(_relu(x @ k1 + b1) @ k2 + b2)
    want_deltas = np.zeros((2, 3, num_classes, 4))
    flat_deltas = hidden @ kd + bd
    for k in range(num_classes):
        want_deltas[:, :, k] = flat_deltas[:, :, 4 * k:4 * k + 4]
    assert logits.shape == (2, 3, num_classes) and deltas.shape == (2, 3, num_classes, 4)
    np.testing.assert_allclose(logits.numpy(), hidden @ kc + bc, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(deltas.numpy(), want_deltas, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("num_convs", [1, 2])
def test_mask_head_layer_checks(num_convs):
    rng = np.random.default_rng(4)
    features = rng.normal(size=(2, 3, 6, 6, 4)).astype("float32")
    run_layer_test(MaskHead(num_classes=3, conv_dim=5, num_convs=num_convs), features,
                   expected_output_shapes=(2, 3, 12, 12, 3))


def _np_transposed_conv_2x2_stride_2(x, kernel, bias):
    """Conv2DTranspose(kernel 2, stride 2), kernel [2, 2, C_out, C_in]:
    out[2i + di, 2j + dj, o] = sum_c x[i, j, c] kernel[di, dj, o, c] + bias[o]."""
    n, h, w, _ = x.shape
    out = np.zeros((n, 2 * h, 2 * w, kernel.shape[2]))
    for di in range(2):
        for dj in range(2):
            out[:, di::2, dj::2] = x @ kernel[di, dj].T
    return out + bias


def test_mask_head_matches_numpy():
    rng = np.random.default_rng(5)
    num_classes, conv_dim, size = 3, 4, 5
    head = MaskHead(num_classes=num_classes, conv_dim=conv_dim, num_convs=2)
    features = rng.normal(size=(2, 3, size, size, 6)).astype("float32")
    logits = head(features).numpy()
    assert logits.shape == (2, 3, 2 * size, 2 * size, num_classes)
    x = features.astype(np.float64).reshape(6, size, size, 6)
    for conv in head.convs:
        x = _relu(_conv(x, *conv.get_weights(), padding=1))
    x = _relu(_np_transposed_conv_2x2_stride_2(x, *head.upsample.get_weights()))
    want = _conv(x, *head.logits.get_weights(), padding=0)
    np.testing.assert_allclose(logits, want.reshape(logits.shape), rtol=1e-4, atol=1e-4)
