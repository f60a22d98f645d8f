"""rpn_targets and sample_rois against a NumPy restatement of the labelling rules: anchors / RoIs
labelled from their IoU with the valid ground truth, balanced sampling with foreground first,
box targets = the box coder's encoding of the matched ground-truth box."""

import collections

import numpy as np
import pytest

from mask_rcnn_tf.ops import targets


def _np_iou(boxes1, boxes2):
    """[N, 4] x [M, 4] yxyx -> [N, M]."""
    b1, b2 = boxes1[:, None], boxes2[None]
    ih = np.clip(np.minimum(b1[..., 2], b2[..., 2]) - np.maximum(b1[..., 0], b2[..., 0]), 0, None)
    iw = np.clip(np.minimum(b1[..., 3], b2[..., 3]) - np.maximum(b1[..., 1], b2[..., 1]), 0, None)
    inter = ih * iw
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    union = area1 + area2 - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _np_encode(boxes, anchors, weights):
    """torchvision BoxCoder.encode in y-first order: (dy, dx, dh, dw)."""
    def centre_size(b):
        h, w = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        return b[:, 0] + 0.5 * h, b[:, 1] + 0.5 * w, h, w
    cy, cx, h, w = centre_size(np.asarray(boxes, np.float64))
    acy, acx, ah, aw = centre_size(np.asarray(anchors, np.float64))
    wy, wx, wh, ww = weights
    return np.stack([wy * (cy - acy) / ah, wx * (cx - acx) / aw,
                     wh * np.log(h / ah), ww * np.log(w / aw)], axis=-1)


def _np_labels(candidates, gt_boxes, gt_valid, fg, bg, low_quality):
    """Labels (1 / 0 / -1) and best valid gt row of each candidate, for one image."""
    labels = np.zeros(len(candidates), int)
    matched = np.zeros(len(candidates), int)
    valid_rows = np.flatnonzero(gt_valid)
    if not len(valid_rows):
        return labels, matched
    iou = _np_iou(candidates, gt_boxes[valid_rows])  # [N, V]
    best = iou.max(axis=1)
    matched = valid_rows[iou.argmax(axis=1)]
    labels = np.where(best >= fg, 1, np.where(best < bg, 0, -1))
    if low_quality:
        for v in range(len(valid_rows)):
            top = iou[:, v].max()
            if top > 0:
                labels[iou[:, v] == top] = 1
    return labels, matched


# ---------------------------------------------------------------------------- rpn_targets

def _anchor_grid():
    """16-pixel anchors every 2 pixels and 32-pixel anchors every 4, over a 96 x 96 image."""
    anchors = []
    for size, stride in ((16, 2), (32, 4)):
        starts = np.arange(0, 96 - size + 1, stride, dtype=np.float32)
        y, x = np.meshgrid(starts, starts, indexing="ij")
        anchors.append(np.stack([y, x, y + size, x + size], -1).reshape(-1, 4))
    return np.concatenate(anchors)


RPN_ARGS = dict(fg_iou_threshold=0.7, bg_iou_threshold=0.3, num_samples=32,
                positive_fraction=0.25, box_weights=(1.0, 1.0, 1.0, 1.0))
MAX_POS = 8  # int(32 * 0.25)


def _rpn_gt():
    gt_boxes = np.zeros((3, 3, 4), np.float32)
    gt_valid = np.zeros((3, 3), bool)
    # Image 0: two objects on the anchor grids (5 positives each: 10 > MAX_POS), and a padding
    # row holding a box identical to an anchor, far from both: it must match nothing.
    gt_boxes[0, 0] = [20, 20, 36, 36]
    gt_boxes[0, 1] = [48, 40, 80, 72]
    gt_boxes[0, 2] = [0, 70, 16, 86]
    gt_valid[0, :2] = True
    # Image 1: one object off the grids (positives from the 0.7 rule and its best anchors).
    gt_boxes[1, 0] = [10, 61, 41, 90]
    gt_valid[1, 0] = True
    # Image 2: no objects at all.
    return gt_boxes, gt_valid


def test_rpn_targets_match_numpy_rules():
    anchors = _anchor_grid()
    gt_boxes, gt_valid = _rpn_gt()
    out = {k: np.asarray(v) for k, v in
           targets.rpn_targets(anchors, gt_boxes, gt_valid, seed=3, **RPN_ARGS).items()}
    assert out["indices"].shape == out["labels"].shape == out["valid"].shape == (3, 32)
    assert out["box_targets"].shape == (3, 32, 4)
    assert np.all(np.isfinite(out["box_targets"]))
    for b in range(3):
        labels, matched = _np_labels(anchors, gt_boxes[b], gt_valid[b], 0.7, 0.3, True)
        num_pos = min(int((labels == 1).sum()), MAX_POS)
        num_neg = min(int((labels == 0).sum()), 32 - num_pos)
        want_labels = np.array([1.0] * num_pos + [0.0] * (32 - num_pos))
        np.testing.assert_array_equal(out["valid"][b], np.arange(32) < num_pos + num_neg)
        np.testing.assert_array_equal(out["labels"][b], want_labels)
        idx = out["indices"][b, :num_pos + num_neg]
        assert len(set(idx.tolist())) == len(idx), "sampled twice"
        np.testing.assert_array_equal(labels[idx], want_labels[:len(idx)])
        pos = idx[:num_pos]
        want_targets = np.zeros((32, 4))
        want_targets[:num_pos] = _np_encode(gt_boxes[b][matched[pos]], anchors[pos],
                                            RPN_ARGS["box_weights"])
        np.testing.assert_allclose(out["box_targets"][b], want_targets, rtol=1e-5, atol=1e-5)
    # Image 0 has more positives than the cap, image 1 fewer, image 2 none.
    assert out["labels"][0].sum() == MAX_POS
    assert 0 < out["labels"][1].sum() < MAX_POS


def test_rpn_targets_padding_gt_is_never_matched():
    anchors = np.array([[0, 0, 16, 16], [0, 16, 16, 32], [16, 0, 32, 16], [16, 16, 32, 32],
                        [40, 40, 56, 56], [60, 60, 76, 76]], np.float32)
    # Row 0 is padding but holds a box identical to anchor 5; row 1 overlaps anchor 0 by
    # 256 / 288 = 0.89 and anchor 1 by 32 / 512. Six samples, all may be positive: every
    # labelled anchor is drawn.
    gt_boxes = np.array([[[60, 60, 76, 76], [0, 0, 16, 18]]], np.float32)
    gt_valid = np.array([[False, True]])
    args = dict(RPN_ARGS, num_samples=6, positive_fraction=1.0)
    out = targets.rpn_targets(anchors, gt_boxes, gt_valid, seed=0, **args)
    np.testing.assert_array_equal(out["labels"].numpy(), [[1, 0, 0, 0, 0, 0]])
    assert out["indices"].numpy()[0, 0] == 0
    assert sorted(out["indices"].numpy()[0, 1:].tolist()) == [1, 2, 3, 4, 5]
    want = np.zeros((1, 6, 4), np.float32)
    want[0, 0] = [0.0, 1.0 / 16, 0.0, np.log(18 / 16)]  # centre x 9 vs 8, width 18 vs 16
    np.testing.assert_allclose(out["box_targets"].numpy(), want, atol=1e-6)


@pytest.mark.parametrize("straddle", [0.0, 6.0])
def test_rpn_targets_ignore_anchors_outside_the_valid_area(straddle):
    # The 96 x 96 grid is the padded input; the images inside it are smaller, so many anchors
    # lie partly or wholly in padding. Every labelled anchor is sampled (samples >= anchors,
    # positive fraction 1), so the sampled set is exactly the labelled one.
    anchors = _anchor_grid()
    gt_boxes, gt_valid = _rpn_gt()
    image_sizes = np.array([[80, 76], [60, 96], [50, 40]], np.float32)
    args = dict(RPN_ARGS, num_samples=len(anchors), positive_fraction=1.0)
    out = {k: np.asarray(v) for k, v in targets.rpn_targets(
        anchors, gt_boxes, gt_valid, image_sizes, straddle_thresh=straddle, seed=0,
        **args).items()}
    for b, (height, width) in enumerate(image_sizes):
        visible = ((anchors[:, :2] >= -straddle).all(1) & (anchors[:, 2] <= height + straddle)
                   & (anchors[:, 3] <= width + straddle))
        assert 0 < visible.sum() < len(anchors)
        labels = np.full(len(anchors), -1)
        labels[visible], _ = _np_labels(anchors[visible], gt_boxes[b], gt_valid[b], 0.7, 0.3,
                                        True)
        sampled = out["indices"][b][out["valid"][b]]
        assert sorted(sampled.tolist()) == np.flatnonzero(labels >= 0).tolist()
        np.testing.assert_array_equal(out["labels"][b][out["valid"][b]], labels[sampled])
        assert visible[sampled].all()
    # Objects inside their image keep positives: image 0's second one (to y 80, x 72) sits
    # at its image's edge and still claims its best visible anchors.
    assert out["labels"][0].sum() > 0 and out["labels"][1].sum() > 0


def test_rpn_targets_image_without_gt():
    anchors = _anchor_grid()
    out = targets.rpn_targets(anchors, np.zeros((2, 4, 4), np.float32), np.zeros((2, 4), bool),
                              seed=0, **RPN_ARGS)
    assert np.all(out["valid"].numpy())
    assert not out["labels"].numpy().any()
    box_targets = out["box_targets"].numpy()
    assert np.all(np.isfinite(box_targets)) and not box_targets.any()


# ---------------------------------------------------------------------------- sample_rois

ROI_ARGS = dict(fg_iou_threshold=0.5, bg_iou_threshold=0.5, num_samples=16,
                positive_fraction=0.25, box_weights=(10.0, 10.0, 5.0, 5.0))
MAX_FG = 4  # int(16 * 0.25)
PADDING_BOX = [20, 60, 40, 90]
INVALID_PROPOSAL = [11, 11, 51, 51]


def _roi_inputs():
    gt_boxes = np.zeros((3, 3, 4), np.float32)
    gt_classes = np.full((3, 3), -1, np.int32)
    # Image 0: two objects and a padding row with a real-looking box.
    gt_boxes[0] = [[10, 10, 50, 50], [60, 60, 90, 100], PADDING_BOX]
    gt_classes[0, :2] = [3, 1]
    # Image 1: one object no proposal overlaps: only the gt box itself can be foreground.
    gt_boxes[1, 0] = [30, 30, 60, 60]
    gt_classes[1, 0] = 2
    # Image 2: no objects.
    proposals = np.zeros((3, 12, 4), np.float32)
    proposals[0] = [
        [12, 12, 50, 52], [10, 10, 48, 50], [62, 58, 90, 100], [0, 0, 20, 20],
        PADDING_BOX, [30, 30, 70, 70], INVALID_PROPOSAL, [60, 60, 90, 100],
        [0, 80, 30, 110], [80, 0, 110, 30], [40, 40, 60, 60], [90, 90, 120, 120]]
    rng = np.random.default_rng(0)
    for b in (1, 2):
        corner = rng.uniform(0, 100, (12, 2))
        corner[:6, 0] = rng.uniform(70, 100, 6)  # far below the image-1 object
        corner[6:, 1] = rng.uniform(70, 100, 6)  # far right of it
        proposals[b] = np.concatenate([corner, corner + rng.uniform(8, 20, (12, 2))], axis=-1)
    proposal_valid = np.ones((3, 12), bool)
    proposal_valid[0, 6] = False
    proposal_valid[2, 9:] = False
    return proposals, proposal_valid, gt_boxes, gt_classes, gt_classes > 0


def _check_sample(out, b, candidates, candidate_valid, gt_boxes, gt_classes, gt_valid):
    labels, matched = _np_labels(candidates, gt_boxes, gt_valid, 0.5, 0.5, False)
    labels = np.where(candidate_valid, labels, -1)
    num_fg = min(int((labels == 1).sum()), MAX_FG)
    num_bg = min(int((labels == 0).sum()), 16 - num_fg)
    n = num_fg + num_bg
    rois = out["rois"][b]
    np.testing.assert_array_equal(out["valid"][b], np.arange(16) < n)
    np.testing.assert_array_equal(out["is_foreground"][b], np.arange(16) < num_fg)
    used = collections.Counter()
    want_classes = np.zeros(16, int)
    want_targets = np.zeros((16, 4))
    for s in range(n):
        # The roi is one of the valid candidates with the label of its slot.
        rows = np.flatnonzero(np.all(candidates == rois[s], axis=1) & (labels >= 0))
        assert len(rows), f"image {b} slot {s}: {rois[s]} is not a valid candidate"
        row = rows[0]
        assert labels[row] == (1 if s < num_fg else 0)
        used[tuple(rois[s])] += 1
        assert used[tuple(rois[s])] <= len(rows), f"image {b}: {rois[s]} sampled twice"
        if s < num_fg:
            assert out["matched_gt"][b, s] == matched[row]
            want_classes[s] = gt_classes[matched[row]]
            want_targets[s] = _np_encode(gt_boxes[matched[row]][None], rois[s][None],
                                         ROI_ARGS["box_weights"])[0]
    np.testing.assert_array_equal(out["classes"][b], want_classes)
    np.testing.assert_allclose(out["box_targets"][b], want_targets, rtol=1e-5, atol=1e-4)
    return num_fg, num_bg


@pytest.mark.parametrize("add_gt", [True, False])
def test_sample_rois_match_numpy_rules(add_gt):
    proposals, proposal_valid, gt_boxes, gt_classes, gt_valid = _roi_inputs()
    out = {k: np.asarray(v) for k, v in targets.sample_rois(
        proposals, proposal_valid, gt_boxes, gt_classes, gt_valid, seed=1,
        add_gt_as_proposals=add_gt, **ROI_ARGS).items()}
    assert out["rois"].shape == out["box_targets"].shape == (3, 16, 4)
    assert np.all(np.isfinite(out["box_targets"]))
    counts = []
    for b in range(3):
        candidates, candidate_valid = proposals[b], proposal_valid[b]
        if add_gt:
            candidates = np.concatenate([candidates, gt_boxes[b]])
            candidate_valid = np.concatenate([candidate_valid, gt_valid[b]])
        counts.append(_check_sample(out, b, candidates, candidate_valid, gt_boxes[b],
                                    gt_classes[b], gt_valid[b]))
    if add_gt:
        # Image 0: 4 foreground proposals + 2 gt boxes, capped at 4, and the 7 other valid
        # proposals. Image 1: the gt box alone, with zero regression target toward itself.
        # Image 2: its 9 valid proposals, all background.
        assert counts == [(MAX_FG, 7), (1, 12), (0, 9)]
        np.testing.assert_array_equal(out["rois"][1, 0], gt_boxes[1, 0])
        assert out["classes"][1, 0] == 2
        np.testing.assert_allclose(out["box_targets"][1, 0], 0.0, atol=1e-6)
    else:
        assert counts == [(MAX_FG, 7), (0, 12), (0, 9)]
    # The invalid proposal (IoU 0.9 with an object) is never drawn; the proposal identical to
    # the padding gt box may be drawn, as background only.
    rois0 = out["rois"][0][out["valid"][0]]
    assert not np.any(np.all(rois0 == INVALID_PROPOSAL, axis=1))
    padding_like = np.all(out["rois"][0] == PADDING_BOX, axis=1) & out["valid"][0]
    assert not out["is_foreground"][0][padding_like].any()
    assert np.all(out["matched_gt"][out["is_foreground"]] < 2)


def test_sample_rois_image_without_gt():
    proposals, proposal_valid, _, _, _ = _roi_inputs()
    out = targets.sample_rois(
        proposals, proposal_valid, np.zeros((3, 2, 4), np.float32), np.full((3, 2), -1, np.int32),
        np.zeros((3, 2), bool), seed=0, add_gt_as_proposals=True, **ROI_ARGS)
    assert not out["is_foreground"].numpy().any()
    assert not out["classes"].numpy().any()
    np.testing.assert_array_equal(out["valid"].numpy().sum(axis=1), [11, 12, 9])
    box_targets = out["box_targets"].numpy()
    assert np.all(np.isfinite(box_targets)) and not box_targets.any()
