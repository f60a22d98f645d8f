"""Anchors: hand-computed torchvision cell anchors, counts, ordering and centres; the in-graph
anchors of run-time sizes against a NumPy reference, bit for bit; the level stride rules."""

import numpy as np
import pytest
import tensorflow as tf

from mask_rcnn_tf.ops.anchors import generate_anchors, level_strides

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


def _numpy_anchors(feature_sizes, strides, sizes, aspect_ratios, offset=0.0):
    """The NumPy anchors the model embedded as constants before they moved into the graph
    (static sizes; strides (y, x) per level), float32 throughout as torchvision computes."""
    levels = []
    for (height, width), (stride_y, stride_x), size in zip(feature_sizes, strides, sizes):
        ratios = np.asarray(aspect_ratios, np.float32)
        h_ratios = np.sqrt(ratios)
        w_ratios = np.float32(1.0) / h_ratios
        hs, ws = h_ratios * np.float32(size), w_ratios * np.float32(size)
        base = np.round(np.stack([-hs, -ws, hs, ws], axis=1) / np.float32(2.0))
        shift_y = (np.arange(height, dtype=np.float32) + np.float32(offset)) * np.float32(stride_y)
        shift_x = (np.arange(width, dtype=np.float32) + np.float32(offset)) * np.float32(stride_x)
        shift_y, shift_x = np.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = np.stack([shift_y, shift_x, shift_y, shift_x], axis=-1).reshape(-1, 1, 4)
        levels.append((shifts + base[None]).reshape(-1, 4).astype(np.float32))
    return levels


def _feature_sizes(height, width, levels=5):
    """FPN sizes of a padded input: P2..P5 by exact division, P6 = ceil(P5 / 2) (max pool)."""
    sizes = [(height // 2 ** level, width // 2 ** level) for level in range(2, 6)]
    sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return sizes[:levels]


@tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32),
                              tf.TensorSpec([5, 2], tf.int32), tf.TensorSpec([], tf.string)])
def _graph_anchors(image, feature_sizes, rule):
    """The model's path: run-time sizes, no static shape known when traced."""
    sizes = [feature_sizes[i] for i in range(5)]
    strides = {name: level_strides(tf.shape(image)[:2], sizes, min_level=2, rule=name)
               for name in ("fixed", "torchvision")}
    anchors = {name: generate_anchors([(s[0], s[1]) for s in sizes], strides[name], SIZES, RATIOS,
                                      offset=0.0) for name in strides}
    return tf.cond(tf.equal(rule, "fixed"), lambda: tf.concat(anchors["fixed"], 0),
                   lambda: tf.concat(anchors["torchvision"], 0))


@pytest.mark.parametrize("height, width", [(64, 64), (800, 1088), (1088, 800), (832, 1344)])
def test_run_time_anchors_equal_the_numpy_reference_bit_for_bit(height, width):
    sizes = _feature_sizes(height, width)
    want = np.concatenate(_numpy_anchors(sizes, [(s, s) for s in STRIDES], SIZES, RATIOS))
    got = _graph_anchors(tf.zeros([height, width, 3]), tf.constant(sizes, tf.int32), "fixed")
    np.testing.assert_array_equal(got.numpy(), want)
    # Static sizes (Python ints) give the same numbers.
    static = generate_anchors(sizes, STRIDES, SIZES, RATIOS)
    np.testing.assert_array_equal(np.concatenate([a.numpy() for a in static]), want)
    assert _graph_anchors.experimental_get_tracing_count() == 1


def test_torchvision_stride_rule_divides_the_padded_side_by_the_cells():
    # torchvision's AnchorGenerator: stride = image_size // grid_size per axis. 800 x 1088 has
    # 13 x 17 cells on P6: strides 61 (800 // 13) and 64 (1088 // 17).
    sizes = _feature_sizes(800, 1088)
    strides = [(800 // h, 1088 // w) for h, w in sizes]
    assert strides == [(4, 4), (8, 8), (16, 16), (32, 32), (61, 64)]
    want = np.concatenate(_numpy_anchors(sizes, strides, SIZES, RATIOS))
    got = _graph_anchors(tf.zeros([800, 1088, 3]), tf.constant(sizes, tf.int32), "torchvision")
    np.testing.assert_array_equal(got.numpy(), want)
    assert level_strides(None, sizes, min_level=2, rule="fixed") == list(STRIDES)
    with pytest.raises(ValueError, match="rule must be one of fixed, torchvision"):
        level_strides(None, sizes, min_level=2, rule="square")
