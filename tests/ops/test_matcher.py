"""match_boxes against a NumPy transcription of torchvision's Matcher (plus the "max > 0" rule)."""

import numpy as np
import pytest
import tensorflow as tf

from mask_rcnn_tf.ops.matcher import match_boxes


def _reference(iou, gt_valid, high, low, allow_low_quality):
    batch, _, num = iou.shape
    matched = np.zeros((batch, num), np.int32)
    labels = np.zeros((batch, num), np.int32)
    for b in range(batch):
        rows = np.flatnonzero(gt_valid[b])
        if rows.size == 0:
            continue
        quality = iou[b, rows]
        best = quality.max(axis=0)
        matched[b] = rows[quality.argmax(axis=0)]
        labels[b] = np.where(best >= high, 1, np.where(best < low, 0, -1))
        if allow_low_quality:
            for row in quality:
                if row.max() > 0:
                    labels[b, row == row.max()] = 1
    return matched, labels


def _random_case(seed, batch=4, num_gt=6, num_candidates=40):
    rng = np.random.default_rng(seed)
    # Coarse IoU values create ties, both between candidates and between gt rows.
    iou = (rng.integers(0, 11, (batch, num_gt, num_candidates)) / 10.0).astype(np.float32)
    iou *= rng.random((batch, num_gt, num_candidates)) < 0.5
    gt_valid = rng.random((batch, num_gt)) < 0.7
    gt_valid[0] = False                  # an image without ground truth
    gt_valid[1, :3] = True
    gt_valid[1, 3:] = False
    iou[1, 3:] = 1.0                     # padding rows must not win despite IoU 1
    iou[2, 0] = 0.0                      # a valid gt that overlaps nothing claims nothing
    gt_valid[2, 0] = True
    return iou, gt_valid


@pytest.mark.parametrize("high,low,allow", [(0.7, 0.3, True), (0.7, 0.3, False), (0.5, 0.5, False)])
def test_matches_torchvision_reference(high, low, allow):
    for seed in range(3):
        iou, gt_valid = _random_case(seed)
        matched, labels = match_boxes(iou, gt_valid, high, low, allow)
        want_matched, want_labels = _reference(iou, gt_valid, high, low, allow)
        np.testing.assert_array_equal(labels.numpy(), want_labels)
        np.testing.assert_array_equal(matched.numpy(), want_matched)
        assert np.all(labels.numpy()[0] == 0) and np.all(matched.numpy()[0] == 0)
        assert not np.isin(matched.numpy()[1], [3, 4, 5]).any()


def test_low_quality_hand_case():
    # gt 0 best overlaps candidates 1 and 2 (tie at 0.4): both become foreground; candidate 0 is
    # in the ignore band; candidate 3 keeps its own better gt 1 as matched_gt.
    iou = np.array([[[0.35, 0.4, 0.4, 0.4],
                     [0.0, 0.1, 0.2, 0.9]]], np.float32)
    matched, labels = match_boxes(iou, np.array([[True, True]]), 0.7, 0.3, True)
    np.testing.assert_array_equal(labels.numpy(), [[-1, 1, 1, 1]])
    np.testing.assert_array_equal(matched.numpy(), [[0, 0, 0, 1]])
    _, labels = match_boxes(iou, np.array([[True, True]]), 0.7, 0.3, False)
    np.testing.assert_array_equal(labels.numpy(), [[-1, -1, -1, 1]])


def test_graph_mode_and_no_gt_rows():
    iou, gt_valid = _random_case(7)
    run = tf.function(lambda i, v: match_boxes(i, v, 0.7, 0.3, True))
    matched, labels = run(tf.constant(iou), tf.constant(gt_valid))
    want_matched, want_labels = _reference(iou, gt_valid, 0.7, 0.3, True)
    np.testing.assert_array_equal(labels.numpy(), want_labels)
    np.testing.assert_array_equal(matched.numpy(), want_matched)
    matched, labels = match_boxes(
        np.zeros((2, 0, 5), np.float32), np.zeros((2, 0), bool), 0.7, 0.3, True)
    assert matched.shape == (2, 5) and not labels.numpy().any()


@pytest.mark.parametrize("allow", [True, False])
def test_invalid_candidates_are_left_out_of_the_matching(allow):
    # Reference: match each image's valid candidates alone (so a gt claims its best *valid*
    # candidate), then invalid ones get label -1 and matched_gt 0.
    for seed in range(3):
        iou, gt_valid = _random_case(seed)
        candidate_valid = np.random.default_rng(seed + 10).random(iou.shape[::2]) < 0.6
        matched, labels = match_boxes(iou, gt_valid, 0.7, 0.3, allow,
                                      candidate_valid=candidate_valid)
        for b in range(iou.shape[0]):
            columns = np.flatnonzero(candidate_valid[b])
            want_matched, want_labels = _reference(iou[b:b + 1][:, :, columns], gt_valid[b:b + 1],
                                                   0.7, 0.3, allow)
            np.testing.assert_array_equal(labels.numpy()[b, columns], want_labels[0])
            np.testing.assert_array_equal(matched.numpy()[b, columns], want_matched[0])
            assert np.all(labels.numpy()[b, ~candidate_valid[b]] == -1)
    _, labels = match_boxes(np.zeros((1, 0, 3), np.float32), np.zeros((1, 0), bool), 0.7, 0.3,
                            allow, candidate_valid=np.array([[True, False, True]]))
    np.testing.assert_array_equal(labels.numpy(), [[0, -1, 0]])


def test_bad_thresholds_raise():
    with pytest.raises(ValueError, match="low_threshold"):
        match_boxes(np.zeros((1, 1, 1), np.float32), np.ones((1, 1), bool), 0.3, 0.7, False)
