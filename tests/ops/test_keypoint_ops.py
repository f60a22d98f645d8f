"""Keypoint targets, decoding and flips against NumPy references written from the definitions:
hand-computed cells, torchvision's edge rule, the encode/decode round trip, and the flip
commuting with both (issue 6, acceptance 1)."""

import numpy as np
import pytest
import tensorflow as tf

from mask_rcnn_tf.ops.keypoint_ops import (
    flatten_heatmaps, flip_keypoints, heatmaps_to_keypoints, keypoint_targets)

SIZE = 6
FLIP_MAP = [0, 2, 1, 4, 3]  # keypoint 0 central, (1, 2) and (3, 4) left/right pairs
WIDTH = 100.0


def _np_targets(gt_keypoints, rois, matched_gt, size):
    """torchvision's keypoints_to_heatmap on continuous keypoints, one keypoint at a time."""
    batch, num_rois = matched_gt.shape
    num_keypoints = gt_keypoints.shape[2]
    index = np.zeros((batch, num_rois, num_keypoints), np.int64)
    valid = np.zeros((batch, num_rois, num_keypoints), bool)
    for b in range(batch):
        for r in range(num_rois):
            y1, x1, y2, x2 = rois[b, r].astype(np.float64)
            for k in range(num_keypoints):
                x, y, v = gt_keypoints[b, matched_gt[b, r], k].astype(np.float64)
                if v <= 0 or x2 <= x1 or y2 <= y1 or not (x1 <= x <= x2 and y1 <= y <= y2):
                    continue
                x_map = size - 1 if x == x2 else int(np.floor((x - x1) * size / (x2 - x1)))
                y_map = size - 1 if y == y2 else int(np.floor((y - y1) * size / (y2 - y1)))
                index[b, r, k] = y_map * size + x_map
                valid[b, r, k] = True
    return index, valid


def _np_decode(logits, rois):
    """Cell centre of each heatmap's (first) maximum, and the maximum logit."""
    batch, num, size, _, num_keypoints = logits.shape
    out = np.zeros((batch, num, num_keypoints, 3))
    for b in range(batch):
        for n in range(num):
            y1, x1, y2, x2 = rois[b, n].astype(np.float64)
            for k in range(num_keypoints):
                heatmap = logits[b, n, :, :, k]
                row, column = np.unravel_index(np.argmax(heatmap), heatmap.shape)
                out[b, n, k] = (x1 + (column + 0.5) * (x2 - x1) / size,
                                y1 + (row + 0.5) * (y2 - y1) / size, heatmap.max())
    return out


def _random_rois(rng, shape):
    y1 = rng.uniform(0, 60, shape)
    x1 = rng.uniform(0, 60, shape)
    return np.stack([y1, x1, y1 + rng.uniform(5, 40, shape), x1 + rng.uniform(5, 40, shape)],
                    axis=-1).astype(np.float32)


def _interior_keypoints(rng, rois, num_keypoints, size):
    """Keypoints inside each RoI's heatmap cells, 10% of a cell or more from any cell edge, so
    float32 and float64 agree on the cell; v in {0, 1, 2}. Returns (float32 [B, R, K, 3],
    the cells (row, column) int [B, R, K, 2])."""
    shape = rois.shape[:2] + (num_keypoints,)
    cells = rng.integers(0, size, shape + (2,))
    fraction = rng.uniform(0.1, 0.9, shape + (2,))
    y1, x1, y2, x2 = (rois[..., i, None].astype(np.float64) for i in range(4))
    y = y1 + (cells[..., 0] + fraction[..., 0]) * (y2 - y1) / size
    x = x1 + (cells[..., 1] + fraction[..., 1]) * (x2 - x1) / size
    v = rng.integers(0, 3, shape)
    return np.stack([x, y, v], axis=-1).astype(np.float32), cells


def test_hand_computed_cells_and_edges():
    # RoI x in [2, 10], y in [0, 8], S = 4: cells are 2 px wide.
    rois = np.array([[[0.0, 2.0, 8.0, 10.0], [0.0, 2.0, 8.0, 10.0]]], np.float32)
    gt = np.array([[[[5.0, 3.0, 2],    # x cell floor(3 / 2) = 1, y cell 1 -> 5
                     [2.0, 0.0, 1],    # top-left corner -> 0
                     [10.0, 8.0, 2],   # bottom-right corner -> cell (3, 3) = 15
                     [6.0, 4.0, 2],    # on an inner cell edge: the cell to the right, 2 * 4 + 2
                     [10.01, 4.0, 2],  # just right of the RoI -> not valid
                     [5.0, 3.0, 0],    # not labelled -> not valid
                     [1.99, 4.0, 2]],  # just left of the RoI -> not valid
                    [[0.0, 0.0, 0]] * 7]], np.float32)
    index, valid = keypoint_targets(gt, rois, np.array([[0, 1]], np.int32), 4)
    assert index.dtype == tf.int32 and valid.dtype == tf.bool
    np.testing.assert_array_equal(index[0, 0], [5, 0, 15, 10, 0, 0, 0])
    np.testing.assert_array_equal(valid[0, 0], [True, True, True, True, False, False, False])
    # The second RoI matches a padding row (v = 0): nothing valid.
    assert not valid[0, 1].numpy().any()


def test_targets_match_numpy_reference():
    rng = np.random.default_rng(0)
    batch, num_gt, num_rois, num_keypoints = 2, 3, 5, 5
    gt_rois = _random_rois(rng, (batch, num_gt))
    gt, _ = _interior_keypoints(rng, gt_rois, num_keypoints, SIZE)
    rois = _random_rois(rng, (batch, num_rois))
    # Some RoIs are exactly a gt box (its keypoints all inside), some only overlap it, one
    # is empty.
    rois[:, :num_gt] = gt_rois
    rois[1, 4] = [10.0, 10.0, 10.0, 30.0]
    # Keypoints on the far edges of their gt box.
    gt[0, 0, 0, 0] = gt_rois[0, 0, 3]
    gt[0, 0, 1, 1] = gt_rois[0, 0, 2]
    gt[0, 0, :2, 2] = 2
    matched = rng.integers(0, num_gt, (batch, num_rois)).astype(np.int32)
    matched[:, :num_gt] = np.arange(num_gt)
    index, valid = keypoint_targets(gt, rois, matched, SIZE)
    want_index, want_valid = _np_targets(gt, rois, matched, SIZE)
    np.testing.assert_array_equal(valid.numpy(), want_valid)
    np.testing.assert_array_equal(index.numpy(), want_index)
    assert want_valid.any() and not want_valid.all()
    assert index.numpy()[0, 0, 0] % SIZE == SIZE - 1 and index.numpy()[0, 0, 1] // SIZE == SIZE - 1


def test_decode_matches_numpy_reference():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, SIZE, SIZE, 4)).astype(np.float32)
    rois = _random_rois(rng, (2, 3))
    decoded = heatmaps_to_keypoints(logits, rois)
    assert decoded.shape == (2, 3, 4, 3) and decoded.dtype == tf.float32
    np.testing.assert_allclose(decoded.numpy(), _np_decode(logits, rois), rtol=1e-5, atol=1e-4)


def test_flatten_heatmaps_is_row_major_keypoint_first():
    logits = np.arange(2 * 1 * 3 * 3 * 2, dtype=np.float32).reshape(2, 1, 3, 3, 2)
    flat = flatten_heatmaps(logits).numpy()
    assert flat.shape == (2, 1, 2, 9)
    for i in range(3):
        for j in range(3):
            assert flat[1, 0, 1, i * 3 + j] == logits[1, 0, i, j, 1]


def test_encode_decode_round_trip():
    rng = np.random.default_rng(2)
    batch, num_rois, num_keypoints = 2, 4, 5
    rois = _random_rois(rng, (batch, num_rois))
    keypoints, cells = _interior_keypoints(rng, rois, num_keypoints, SIZE)
    keypoints[..., 2] = 2
    matched = np.tile(np.arange(num_rois, dtype=np.int32), (batch, 1))
    index, valid = keypoint_targets(keypoints, rois, matched, SIZE)
    assert valid.numpy().all()
    np.testing.assert_array_equal(index.numpy(), cells[..., 0] * SIZE + cells[..., 1])

    # A heatmap peaking at the target decodes to the target cell's centre, within half a
    # cell of the keypoint, and encodes back to the same target.
    one_hot = tf.one_hot(index, SIZE * SIZE, on_value=5.0, off_value=-1.0).numpy()
    logits = np.transpose(one_hot.reshape(batch, num_rois, num_keypoints, SIZE, SIZE),
                          (0, 1, 3, 4, 2))
    decoded = heatmaps_to_keypoints(logits, rois).numpy()
    np.testing.assert_allclose(decoded, _np_decode(logits, rois), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(decoded[..., 2], 5.0)
    half_cell = np.stack([(rois[..., 3] - rois[..., 1]), (rois[..., 2] - rois[..., 0])],
                         axis=-1)[:, :, None, :] / (2 * SIZE)
    assert np.all(np.abs(decoded[..., :2] - keypoints[..., :2]) <= half_cell + 1e-4)
    decoded[..., 2] = 2
    again, again_valid = keypoint_targets(decoded, rois, matched, SIZE)
    assert again_valid.numpy().all()
    np.testing.assert_array_equal(again.numpy(), index.numpy())


def test_flip_keypoints_hand_computed():
    keypoints = np.array([[1.0, 2.0, 2], [3.0, 4.0, 1], [5.0, 6.0, 0]], np.float32)
    flipped = flip_keypoints(keypoints, 10.0, [0, 2, 1]).numpy()
    np.testing.assert_array_equal(flipped, [[9.0, 2.0, 2], [5.0, 6.0, 0], [7.0, 4.0, 1]])
    np.testing.assert_array_equal(flip_keypoints(flipped, 10.0, [0, 2, 1]).numpy(), keypoints)


def test_flip_keypoints_per_image_width():
    keypoints = np.ones((2, 1, 3, 3), np.float32)
    widths = np.array([10.0, 20.0], np.float32)[:, None, None]
    flipped = flip_keypoints(keypoints, widths, [0, 1, 2]).numpy()
    np.testing.assert_array_equal(flipped[0, ..., 0], 9.0)
    np.testing.assert_array_equal(flipped[1, ..., 0], 19.0)


@pytest.mark.parametrize("flip_map", [[0, 0, 1], [1, 2, 0], [0, 1], [0, 1, 3]])
def test_flip_keypoints_rejects_bad_flip_maps(flip_map):
    with pytest.raises(ValueError, match="flip_map"):
        flip_keypoints(np.zeros((2, 3, 3), np.float32), 10.0, flip_map)


def _flip_rois(rois, width):
    y1, x1, y2, x2 = np.moveaxis(rois, -1, 0)
    return np.stack([y1, width - x2, y2, width - x1], axis=-1).astype(np.float32)


def test_flip_then_encode_equals_encode_then_flip_heatmap():
    rng = np.random.default_rng(3)
    batch, num_rois, num_keypoints = 2, 4, len(FLIP_MAP)
    rois = _random_rois(rng, (batch, num_rois))
    keypoints, _ = _interior_keypoints(rng, rois, num_keypoints, SIZE)
    # Some keypoints outside their RoI.
    keypoints[0, 1, 3, 0] = rois[0, 1, 3] + 2.0
    keypoints[1, 2, 1, 0] = rois[1, 2, 1] - 2.0
    matched = np.tile(np.arange(num_rois, dtype=np.int32), (batch, 1))

    index, valid = (t.numpy() for t in keypoint_targets(keypoints, rois, matched, SIZE))
    flipped_keypoints = flip_keypoints(keypoints, WIDTH, FLIP_MAP)
    flipped_index, flipped_valid = (t.numpy() for t in keypoint_targets(
        flipped_keypoints, _flip_rois(rois, WIDTH), matched, SIZE))

    # Flipping the heatmap: column j -> S - 1 - j, channel k takes channel FLIP_MAP[k].
    row, column = index // SIZE, index % SIZE
    want_index = (row * SIZE + SIZE - 1 - column)[..., FLIP_MAP]
    want_valid = valid[..., FLIP_MAP]
    np.testing.assert_array_equal(flipped_valid, want_valid)
    np.testing.assert_array_equal(np.where(want_valid, flipped_index, -1),
                                  np.where(want_valid, want_index, -1))
    assert want_valid.any() and not want_valid.all()


def test_decode_of_flipped_heatmap_equals_flip_of_decode():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 3, SIZE, SIZE, len(FLIP_MAP))).astype(np.float32)
    rois = _random_rois(rng, (2, 3))
    flipped_logits = logits[:, :, :, ::-1][..., FLIP_MAP]
    from_flipped = heatmaps_to_keypoints(flipped_logits, _flip_rois(rois, WIDTH))
    flipped = flip_keypoints(heatmaps_to_keypoints(logits, rois), WIDTH, FLIP_MAP)
    np.testing.assert_allclose(from_flipped.numpy(), flipped.numpy(), rtol=1e-5, atol=1e-4)


def test_graph_mode_with_unknown_batch_and_counts():
    num_keypoints = 3

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, num_keypoints, 3], tf.float32),
        tf.TensorSpec([None, None, 4], tf.float32),
        tf.TensorSpec([None, None], tf.int32),
        tf.TensorSpec([None, None, SIZE, SIZE, num_keypoints], tf.float32)])
    def run(gt, rois, matched, logits):
        index, valid = keypoint_targets(gt, rois, matched, SIZE)
        return index, valid, heatmaps_to_keypoints(logits, rois)

    concrete = run.get_concrete_function()
    assert concrete.structured_outputs[0].shape.as_list() == [None, None, num_keypoints]
    assert concrete.structured_outputs[2].shape.as_list() == [None, None, num_keypoints, 3]
    rng = np.random.default_rng(5)
    rois = _random_rois(rng, (1, 2))
    gt, _ = _interior_keypoints(rng, rois, num_keypoints, SIZE)
    logits = rng.normal(size=(1, 2, SIZE, SIZE, num_keypoints)).astype(np.float32)
    index, valid, decoded = run(gt, rois, np.array([[0, 1]], np.int32), logits)
    want_index, want_valid = _np_targets(gt, rois, np.array([[0, 1]]), SIZE)
    np.testing.assert_array_equal(index.numpy(), want_index)
    np.testing.assert_array_equal(valid.numpy(), want_valid)
    np.testing.assert_allclose(decoded.numpy(), _np_decode(logits, rois), rtol=1e-5, atol=1e-4)


def test_bad_heatmap_size_and_shape_raise():
    with pytest.raises(ValueError, match="heatmap_size"):
        keypoint_targets(np.zeros((1, 1, 2, 3), np.float32), np.zeros((1, 1, 4), np.float32),
                         np.zeros((1, 1), np.int32), 0)
    with pytest.raises(ValueError, match="square"):
        heatmaps_to_keypoints(np.zeros((1, 1, 4, 5, 2), np.float32),
                              np.zeros((1, 1, 4), np.float32))
