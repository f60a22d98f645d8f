"""ProposalGenerator on hand-built RPN outputs for two levels; every expected box by hand.

Level 0 (4 anchors)                                logit  delta
  a0 [10, 10, 50, 50]                                 3
  a1 [12, 12, 52, 52]   IoU(a0) = 1444/1756 = 0.82    2      suppressed by a0 (same level)
  a2 [60, 60, 60.5, 80] height 0.5 < min_size 1       5      dropped although the best score
  a3 [80, 80, 120, 120]                               1      dx = 0.25: x moves by 10 ->
                                                             [80, 90, 120, 130] before clipping
Level 1 (3 anchors)
  b0 [11, 11, 51, 51]   IoU(a0) = 1521/1679 = 0.91   2.5     kept: other level
  b1 [-10, -10, 30, 30]                               0      clipped to [0, 0, 30, 30]
  b2 [0, 0, 20, 20]     IoU(b1 clipped) = 0.44       -1
"""

import numpy as np
import pytest

from mask_rcnn_tf.layers.proposals import ProposalGenerator

LOGITS = [np.array([3.0, 2.0, 5.0, 1.0], np.float32), np.array([2.5, 0.0, -1.0], np.float32)]
ANCHORS = [
    np.array([[10, 10, 50, 50], [12, 12, 52, 52], [60, 60, 60.5, 80], [80, 80, 120, 120]],
             np.float32),
    np.array([[11, 11, 51, 51], [-10, -10, 30, 30], [0, 0, 20, 20]], np.float32),
]
# Image 0 is 100 x 100. Image 1 is 40 high and 60 wide: a3 clips to an empty box there.
IMAGE_SIZES = np.array([[100, 100], [40, 60]], np.float32)


def _inputs():
    deltas = [np.zeros((4, 4), np.float32), np.zeros((3, 4), np.float32)]
    deltas[0][3, 1] = 0.25
    batch = len(IMAGE_SIZES)
    return ([np.tile(level[None], (batch, 1)) for level in LOGITS],
            [np.tile(d[None], (batch, 1, 1)) for d in deltas])


def _generator(post_nms_top_n_test=7):
    return ProposalGenerator(
        pre_nms_top_n_train=3, pre_nms_top_n_test=10, post_nms_top_n_train=3,
        post_nms_top_n_test=post_nms_top_n_test, nms_threshold=0.7, min_size=1.0,
        box_weights=(1.0, 1.0, 1.0, 1.0))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _check(outputs, image, want_boxes, want_logits, num_rows):
    boxes, scores, valid = (np.asarray(t) for t in outputs)
    assert boxes.shape == (2, num_rows, 4) and scores.shape == valid.shape == (2, num_rows)
    n = len(want_boxes)
    np.testing.assert_array_equal(valid[image], np.arange(num_rows) < n)
    np.testing.assert_allclose(boxes[image, :n], want_boxes, atol=1e-4)
    np.testing.assert_allclose(scores[image, :n], _sigmoid(want_logits), rtol=1e-5)


@pytest.mark.parametrize("image, want_boxes, want_logits", [
    (0, [[10, 10, 50, 50], [11, 11, 51, 51], [80, 90, 100, 100], [0, 0, 30, 30], [0, 0, 20, 20]],
     [3, 2.5, 1, 0, -1]),
    (1, [[10, 10, 40, 50], [11, 11, 40, 51], [0, 0, 30, 30], [0, 0, 20, 20]],
     [3, 2.5, 0, -1]),
])
def test_per_level_nms_clip_min_size_and_padding(image, want_boxes, want_logits):
    logits, deltas = _inputs()
    # R = 7 rows (all candidates), fewer survive: the rest are flagged invalid.
    _check(_generator()(logits, deltas, ANCHORS, IMAGE_SIZES), image, want_boxes, want_logits, 7)


def test_keeps_top_r_by_score():
    logits, deltas = _inputs()
    outputs = _generator(post_nms_top_n_test=4)(logits, deltas, ANCHORS, IMAGE_SIZES)
    _check(outputs, 0, [[10, 10, 50, 50], [11, 11, 51, 51], [80, 90, 100, 100], [0, 0, 30, 30]],
           [3, 2.5, 1, 0], 4)
    # Image 1 has exactly four survivors: all rows valid.
    _check(outputs, 1, [[10, 10, 40, 50], [11, 11, 40, 51], [0, 0, 30, 30], [0, 0, 20, 20]],
           [3, 2.5, 0, -1], 4)


def test_training_uses_train_top_n():
    logits, deltas = _inputs()
    # Level 0 keeps its top 3 logits (a2, a0, a1) before NMS, so a3 (logit 1) never competes,
    # although it would beat b1 (logit 0) for the 3 rows kept after merging the levels.
    outputs = _generator()(logits, deltas, ANCHORS, IMAGE_SIZES, training=True)
    _check(outputs, 0, [[10, 10, 50, 50], [11, 11, 51, 51], [0, 0, 30, 30]], [3, 2.5, 0], 3)
    _check(outputs, 1, [[10, 10, 40, 50], [11, 11, 40, 51], [0, 0, 30, 30]], [3, 2.5, 0], 3)


def test_get_config_round_trip():
    generator = _generator()
    clone = ProposalGenerator.from_config(generator.get_config())
    assert clone.get_config() == generator.get_config()
