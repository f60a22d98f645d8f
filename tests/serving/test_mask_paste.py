"""The client's NumPy mask paste against the TensorFlow paste of ops/mask_ops and by hand."""

import numpy as np
import pytest

from mask_rcnn_tf.mask_paste import paste_mask
from mask_rcnn_tf.ops.mask_ops import paste_masks


def test_matches_tensorflow_paste_on_random_boxes():
    rng = np.random.default_rng(0)
    height, width = 23, 31
    y1 = rng.uniform(-5, height, 12)
    x1 = rng.uniform(-5, width, 12)
    boxes = np.stack([y1, x1, y1 + rng.uniform(0.5, 15, 12), x1 + rng.uniform(0.5, 20, 12)],
                     axis=1).astype(np.float32)
    boxes[0] = [4, 6, 4, 10]  # empty box
    masks = rng.uniform(size=(12, 7, 7)).astype(np.float32)
    expected = np.asarray(paste_masks(masks[None], boxes[None], (height, width)))[0]
    for mask, box, want in zip(masks, boxes, expected):
        got = paste_mask(mask, box, (height, width))
        assert got.dtype == np.float32 and got.shape == (height, width)
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_hand_computed_two_by_two_mask_on_a_four_pixel_box():
    # Mask cells of 2 px: pixel centre c sits at cell coordinate (c - 2) / 2 - 0.5 (cell centres
    # at 0 and 1, zero padding beyond). Pixels 1..5 -> -0.75, -0.25, 0.25, 0.75, 1.25, so the
    # weight on cell 0 is 0.25, 0.75, 0.75, 0.25, 0; every other pixel is 0.
    mask = np.array([[1.0, 0.0], [0.0, 0.0]])
    pasted = paste_mask(mask, [2, 2, 6, 6], (8, 8))
    cell0 = np.array([0.25, 0.75, 0.75, 0.25, 0.0])
    expected = np.zeros((8, 8))
    expected[1:6, 1:6] = np.outer(cell0, cell0)
    np.testing.assert_allclose(pasted, expected, atol=1e-6)


@pytest.mark.parametrize("box", [[3, 3, 3, 8], [5, 5, 2, 9], [20, 20, 30, 30]])
def test_empty_or_outside_boxes_give_zeros(box):
    assert not paste_mask(np.ones((4, 4)), box, (10, 10)).any()
