"""The five losses against NumPy formulas written from their definitions, with batch-wide
normalisers (floored at one), plus: minimal when predictions equal targets, larger when they
differ, blind to rows that are invalid or not foreground."""

import numpy as np
import pytest

from mask_rcnn_tf.modeling import losses

BETA = 1.0 / 9.0


def _np_smooth_l1(diff, beta):
    a = np.abs(diff)
    if beta < 1e-5:
        return a
    return np.where(a < beta, 0.5 * a**2 / beta, a - 0.5 * beta)


def _np_bce(logits, labels):
    """-z log(sigmoid(x)) - (1 - z) log(1 - sigmoid(x))."""
    p = 1.0 / (1.0 + np.exp(-logits))
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def _np_softmax_ce(logits, classes):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(log_probs, classes[..., None], axis=-1)[..., 0]


def _valid(shape):
    # Different counts per image, so a mean of per-image means would differ from the
    # batch-wide normaliser.
    valid = np.zeros(shape, bool)
    valid[0, :shape[1] - 1] = True
    valid[1, :shape[1] // 3] = True
    return valid


def _f32(x):
    return np.asarray(x, np.float32)


def _value(tensor):
    return float(np.asarray(tensor))


def test_smooth_l1():
    diff = np.array([-2.0, -0.1, 0.0, 0.05, 0.11, 3.0], np.float32)
    np.testing.assert_allclose(losses.smooth_l1(diff, BETA).numpy(), _np_smooth_l1(diff, BETA),
                               rtol=1e-6)
    # Hand values at beta 1/9: 0.05 < beta -> 0.5 * 0.0025 * 9; 3 -> 3 - 1/18.
    assert losses.smooth_l1(diff, BETA).numpy()[3] == pytest.approx(0.01125)
    assert losses.smooth_l1(diff, BETA).numpy()[5] == pytest.approx(3 - 1 / 18, rel=1e-6)
    np.testing.assert_allclose(losses.smooth_l1(diff, 0.0).numpy(), np.abs(diff))


def test_rpn_objectness_loss():
    rng = np.random.default_rng(0)
    logits = _f32(rng.normal(0, 2, (2, 12)))
    labels = _f32(rng.random((2, 12)) < 0.4)
    valid = _valid((2, 12))
    want = _np_bce(logits.astype(np.float64), labels)[valid].sum() / valid.sum()
    got = _value(losses.rpn_objectness_loss(logits, labels, valid))
    assert got == pytest.approx(want, rel=1e-5)
    # Invalid rows do not count.
    noisy = np.where(valid, logits, _f32(rng.normal(0, 5, logits.shape)))
    assert _value(losses.rpn_objectness_loss(noisy, labels, valid)) == pytest.approx(got, rel=1e-6)
    # Confident and right: almost zero; confident and wrong: large.
    right = _f32(20 * (2 * labels - 1))
    assert _value(losses.rpn_objectness_loss(right, labels, valid)) < 1e-3
    assert _value(losses.rpn_objectness_loss(-right, labels, valid)) > 10
    # Nothing valid: zero, not NaN.
    assert _value(losses.rpn_objectness_loss(logits, labels, np.zeros_like(valid))) == 0.0


def test_rpn_box_loss():
    rng = np.random.default_rng(1)
    deltas = _f32(rng.normal(0, 0.5, (2, 12, 4)))
    targets = _f32(rng.normal(0, 0.5, (2, 12, 4)))
    labels = _f32(rng.random((2, 12)) < 0.5)
    valid = _valid((2, 12))
    per_row = _np_smooth_l1(deltas.astype(np.float64) - targets, BETA).sum(-1)
    want = (per_row * labels)[valid].sum() / valid.sum()  # over sampled anchors, not positives
    got = _value(losses.rpn_box_loss(deltas, targets, labels, valid, BETA))
    assert got == pytest.approx(want, rel=1e-5)
    # Rows that are background or invalid do not count.
    ignored = ~((labels > 0) & valid)
    moved = deltas + _f32(ignored[..., None] * rng.normal(0, 3, deltas.shape))
    assert _value(losses.rpn_box_loss(moved, targets, labels, valid, BETA)) == pytest.approx(
        got, rel=1e-6)
    assert _value(losses.rpn_box_loss(targets, targets, labels, valid, BETA)) == 0.0
    assert _value(losses.rpn_box_loss(targets + 1, targets, labels, valid, BETA)) > got
    assert _value(losses.rpn_box_loss(deltas, targets, np.zeros_like(labels), valid, BETA)) == 0.0


def test_box_class_loss():
    rng = np.random.default_rng(2)
    logits = _f32(rng.normal(0, 2, (2, 10, 5)))
    classes = rng.integers(0, 5, (2, 10)).astype(np.int32)
    valid = _valid((2, 10))
    want = _np_softmax_ce(logits.astype(np.float64), classes)[valid].sum() / valid.sum()
    got = _value(losses.box_class_loss(logits, classes, valid))
    assert got == pytest.approx(want, rel=1e-5)
    noisy = np.where(valid[..., None], logits, _f32(rng.normal(0, 5, logits.shape)))
    assert _value(losses.box_class_loss(noisy, classes, valid)) == pytest.approx(got, rel=1e-6)
    right = _f32(20 * np.eye(5)[classes])
    assert _value(losses.box_class_loss(right, classes, valid)) < 1e-3
    assert _value(losses.box_class_loss(right, (classes + 1) % 5, valid)) > 10


def test_box_regression_loss():
    rng = np.random.default_rng(3)
    num_classes = 4
    deltas = _f32(rng.normal(0, 0.5, (2, 10, num_classes, 4)))
    targets = _f32(rng.normal(0, 0.5, (2, 10, 4)))
    valid = _valid((2, 10))
    foreground = valid & (rng.random((2, 10)) < 0.5)
    classes = np.where(foreground, rng.integers(1, num_classes, (2, 10)), 0).astype(np.int32)
    own = np.take_along_axis(deltas, classes[..., None, None], axis=2)[:, :, 0]
    per_row = _np_smooth_l1(own.astype(np.float64) - targets, BETA).sum(-1)
    want = per_row[foreground].sum() / valid.sum()  # normalised by all sampled RoIs
    got = _value(losses.box_regression_loss(deltas, classes, targets, foreground, valid, BETA))
    assert got == pytest.approx(want, rel=1e-5)
    # Only the own-class deltas of foreground rows count.
    exact = deltas.copy()
    exact[foreground] = np.where(np.eye(num_classes, dtype=bool)[classes[foreground]][..., None],
                                 targets[foreground][:, None], exact[foreground])
    assert _value(losses.box_regression_loss(exact, classes, targets, foreground, valid,
                                             BETA)) == 0.0
    other = exact + np.where(foreground[..., None, None]
                             & ~np.eye(num_classes, dtype=bool)[classes][..., None], 5.0, 0.0)
    other = other + np.where(~foreground[..., None, None], 5.0, 0.0)
    assert _value(losses.box_regression_loss(_f32(other), classes, targets, foreground, valid,
                                             BETA)) == 0.0
    assert _value(losses.box_regression_loss(exact + 1, classes, targets, foreground, valid,
                                             BETA)) > 0.1
    # No foreground at all (an image without objects): exactly zero.
    none = np.zeros_like(foreground)
    assert _value(losses.box_regression_loss(deltas, np.zeros_like(classes), targets, none,
                                             valid, BETA)) == 0.0


def test_mask_loss():
    rng = np.random.default_rng(4)
    num_classes, size = 3, 6
    logits = _f32(rng.normal(0, 2, (2, 5, size, size, num_classes)))
    targets = _f32(rng.random((2, 5, size, size)) < 0.5)
    foreground = np.array([[True, True, True, False, False], [True, False, False, False, False]])
    classes = np.where(foreground, rng.integers(1, num_classes, (2, 5)), 0).astype(np.int32)
    own = np.take_along_axis(logits, classes[:, :, None, None, None], axis=-1)[..., 0]
    per_roi = _np_bce(own.astype(np.float64), targets).mean(axis=(2, 3))
    want = per_roi[foreground].sum() / foreground.sum()  # normalised by foreground RoIs
    got = _value(losses.mask_loss(logits, classes, targets, foreground))
    assert got == pytest.approx(want, rel=1e-5)
    # Confident and right on the own channel; other channels and rows anything.
    right = logits.copy()
    own_channel = np.eye(num_classes, dtype=bool)[classes][:, :, None, None, :]
    right = np.where(own_channel, 20 * (2 * targets[..., None] - 1), right)
    assert _value(losses.mask_loss(_f32(right), classes, targets, foreground)) < 1e-3
    wrong = np.where(own_channel, -20 * (2 * targets[..., None] - 1), right)
    assert _value(losses.mask_loss(_f32(wrong), classes, targets, foreground)) > 10
    background_noise = np.where(foreground[:, :, None, None, None], right, 50.0)
    assert _value(losses.mask_loss(_f32(background_noise), classes, targets, foreground)) < 1e-3
    assert _value(losses.mask_loss(logits, classes, targets, np.zeros_like(foreground))) == 0.0
