"""Anchors: hand-computed torchvision cell anchors, counts, ordering and centres."""

import numpy as np
import pytest

from mask_rcnn_tf.ops.anchors import generate_anchors

RATIOS = (0.5, 1.0, 2.0)
SIZES = (32, 64, 128, 256, 512)
STRIDES = (4, 8, 16, 32, 64)


def _levels(offset=0.0):
    cells = [128 // s for s in STRIDES]
    return generate_anchors([(c, c) for c in cells], STRIDES, SIZES, RATIOS, offset=offset)


def test_counts_for_128_input():
    anchors = _levels()
    assert [a.shape.as_list() for a in anchors] == [[32 * 32 * 3, 4], [16 * 16 * 3, 4],
                                                     [8 * 8 * 3, 4], [4 * 4 * 3, 4], [2 * 2 * 3, 4]]
    assert all(a.dtype.name == "float32" for a in anchors)


def test_base_anchors_are_torchvisions_rounded_cells():
    # torchvision cell anchors in xyxy, size 32: [-23, -11, 23, 11], [-16, -16, 16, 16],
    # [-11, -23, 11, 23] (ratio 0.5: h = 22.63 -> half 11.31 -> 11, w = 45.25 -> half 22.63 -> 23).
    anchors = [a.numpy() for a in _levels()]
    np.testing.assert_array_equal(anchors[0][:3], [[-11, -23, 11, 23], [-16, -16, 16, 16],
                                                   [-23, -11, 23, 11]])
    np.testing.assert_array_equal(anchors[1][:3], [[-23, -45, 23, 45], [-32, -32, 32, 32],
                                                   [-45, -23, 45, 23]])
    np.testing.assert_array_equal(anchors[4][:3], [[-181, -362, 181, 362], [-256, -256, 256, 256],
                                                   [-362, -181, 362, 181]])


def test_position_major_order_and_centres():
    anchors = _levels()[1].numpy()  # stride 8, 16 x 16 cells
    # Cell (row 1, column 2), ratio index 2 (tall): size-64 base [-45, -23, 45, 23] moved by
    # the cell's centre (8, 16).
    np.testing.assert_array_equal(anchors[(1 * 16 + 2) * 3 + 2], [8 - 45, 16 - 23, 8 + 45, 16 + 23])
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    rows, cols = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    want = np.repeat(np.stack([rows.ravel(), cols.ravel()], axis=1) * 8.0, 3, axis=0)
    np.testing.assert_array_equal(centres, want)


def test_offset_moves_centres_to_cell_middles():
    anchors = generate_anchors([(2, 3)], [16], [32], RATIOS, offset=0.5)[0].numpy()
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    np.testing.assert_array_equal(
        centres[::3], [[8, 8], [8, 24], [8, 40], [24, 8], [24, 24], [24, 40]])


def test_mismatched_levels_raise():
    with pytest.raises(ValueError, match="one entry per level"):
        generate_anchors([(4, 4), (2, 2)], [8], [32, 64], RATIOS)
