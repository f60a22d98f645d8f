"""keypoint_loss against a NumPy softmax cross-entropy over the S * S positions, averaged over
the valid keypoints of the whole batch; near zero when the logits peak at the targets, zero
without valid keypoints, blind to invalid entries."""

import numpy as np
import tensorflow as tf

from mask_rcnn_tf.modeling.losses import keypoint_loss

SIZE = 5


def _np_keypoint_loss(logits, target_index, valid):
    """mean over valid (b, r, k) of -log softmax(logits[b, r, :, :, k].ravel())[target]."""
    total, count = 0.0, 0
    for b, r, k in zip(*np.nonzero(valid)):
        heatmap = logits[b, r, :, :, k].astype(np.float64).ravel()
        shifted = heatmap - heatmap.max()
        log_probs = shifted - np.log(np.exp(shifted).sum())
        total -= log_probs[target_index[b, r, k]]
        count += 1
    return total / max(count, 1)


def _inputs(seed, batch=2, num_rois=3, num_keypoints=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, num_rois, SIZE, SIZE, num_keypoints)).astype(np.float32)
    target_index = rng.integers(0, SIZE * SIZE, (batch, num_rois, num_keypoints)).astype(np.int32)
    # Different counts per image, so a mean of per-image means would differ.
    valid = np.zeros((batch, num_rois, num_keypoints), bool)
    valid[0] = True
    valid[1, 0, :2] = True
    return logits, target_index, valid


def test_matches_numpy_reference():
    logits, target_index, valid = _inputs(0)
    loss = keypoint_loss(logits, target_index, valid)
    assert loss.dtype == tf.float32 and loss.shape == ()
    np.testing.assert_allclose(float(loss), _np_keypoint_loss(logits, target_index, valid),
                               rtol=1e-5)


def test_uniform_logits_give_log_positions():
    _, target_index, valid = _inputs(1)
    loss = keypoint_loss(np.zeros((2, 3, SIZE, SIZE, 4), np.float32), target_index, valid)
    np.testing.assert_allclose(float(loss), np.log(SIZE * SIZE), rtol=1e-6)


def test_near_zero_when_logits_peak_at_targets():
    _, target_index, valid = _inputs(2)
    one_hot = tf.one_hot(target_index, SIZE * SIZE, on_value=30.0, off_value=0.0).numpy()
    logits = np.transpose(one_hot.reshape(2, 3, 4, SIZE, SIZE), (0, 1, 3, 4, 2))
    assert float(keypoint_loss(logits, target_index, valid)) < 1e-9
    # One position off: the loss jumps to about the peak height.
    wrong = (target_index + 1) % (SIZE * SIZE)
    np.testing.assert_allclose(float(keypoint_loss(logits, wrong, valid)), 30.0, rtol=1e-4)


def test_invalid_entries_are_ignored():
    logits, target_index, valid = _inputs(3)
    changed_logits = np.where(valid[:, :, None, None, :], logits, 100.0 * logits)
    changed_targets = np.where(valid, target_index, 0)
    np.testing.assert_allclose(float(keypoint_loss(changed_logits, changed_targets, valid)),
                               float(keypoint_loss(logits, target_index, valid)), rtol=1e-6)


def test_no_valid_keypoint_gives_zero_loss_and_zero_gradient():
    logits, target_index, _ = _inputs(4)
    logits = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = keypoint_loss(logits, target_index, np.zeros(target_index.shape, bool))
    grad = tape.gradient(loss, logits)
    assert float(loss) == 0.0
    assert np.all(grad.numpy() == 0.0)
