"""export/postprocess.py and export/mask_encoding.py against NumPy references written from the
definitions and pycocotools: boxes back in original pixels, masks pasted into images whose size
is only known at run time, and encoded (PNG, COCO RLE) as the client decodes them."""

import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils

from mask_rcnn_tf.export import mask_encoding, postprocess
from mask_rcnn_tf.ops.mask_ops import paste_masks, paste_masks_numpy
from mask_rcnn_tf.serving.images import decode_mask


def _bilinear_zero_padded(mask, y, x):
    """Bilinear read of mask [m, m] at index coordinates (y, x), zeros beyond the mask."""
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    total = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < mask.shape[0] and 0 <= xx < mask.shape[1]:
                total += wy * wx * mask[yy, xx]
    return total


def test_paste_matches_pixel_centre_definition():
    # One mask, one box, every pixel computed from the definition: pixel centre (y + 0.5,
    # x + 0.5) read in the mask's cell-centre frame.
    rng = np.random.default_rng(0)
    mask = rng.uniform(size=(4, 4)).astype(np.float32)
    box = np.array([1.5, 2.25, 7.5, 10.25], np.float32)
    height, width = 10, 13
    cell_h, cell_w = (box[2] - box[0]) / 4, (box[3] - box[1]) / 4
    expected = np.array([[_bilinear_zero_padded(mask, (y + 0.5 - box[0]) / cell_h - 0.5,
                                                (x + 0.5 - box[1]) / cell_w - 0.5)
                          for x in range(width)] for y in range(height)])
    pasted = paste_masks(mask[None, None], box[None, None],
                                             tf.constant([height, width]))
    assert pasted.shape == (1, 1, height, width)
    np.testing.assert_allclose(pasted[0, 0].numpy(), expected, atol=1e-5)
    # Half a cell outside the box everything is exactly zero.
    assert np.all(pasted[0, 0].numpy()[:, 11:] == 0)


def test_paste_matches_paste_masks_numpy_with_dynamic_canvas():
    rng = np.random.default_rng(1)
    masks = rng.uniform(size=(2, 5, 28, 28)).astype(np.float32)
    boxes = np.array([
        [[3.3, -2.2, 40.7, 20.1], [10.5, 12.25, 11.0, 60.0], [0.0, 0.0, 37.0, 50.0],
         [30.0, 45.0, 45.0, 70.0], [5.0, 5.0, 5.0, 9.0]],  # crosses the border; empty
        [[1.0, 1.0, 2.0, 2.0], [0.2, 0.4, 36.9, 49.6], [20.0, 3.0, 25.5, 48.0],
         [0.0, 0.0, 0.0, 0.0], [17.25, 30.5, 33.75, 41.0]],
    ], np.float32)
    canvas = (37, 50)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 28, 28]),
                                  tf.TensorSpec([None, None, 4]), tf.TensorSpec([2], tf.int32)])
    def paste(m, b, size):
        return paste_masks(m, b, size)

    pasted = paste(masks, boxes, tf.constant(canvas)).numpy()
    assert pasted.shape == (2, 5) + canvas
    for b in range(2):
        for i in range(5):
            np.testing.assert_allclose(pasted[b, i], paste_masks_numpy(masks[b, i], boxes[b, i],
                                                                       canvas), atol=1e-4)
    assert not pasted[0, 4].any() and not pasted[1, 3].any()


def test_full_image_masks_threshold_and_zero_beyond_each_image():
    masks = np.zeros((2, 2, 28, 28), np.float32)
    masks[:, :, 7:21, 7:21] = 0.9  # centre half of the box, well above the threshold
    # Image 0 is 20 x 30, image 1 is 40 x 16: the canvas is 40 x 30.
    boxes = np.array([[[0.0, 0.0, 20.0, 30.0], [0.0, 0.0, 0.0, 0.0]],
                      [[8.0, 0.0, 48.0, 32.0], [3.0, 3.0, 3.0, 3.0]]], np.float32)
    sizes = np.array([[20, 30], [40, 16]], np.int32)
    full = postprocess.full_image_masks(masks, boxes, sizes, 0.5).numpy()
    assert full.dtype == np.uint8 and full.shape == (2, 2, 40, 30)
    for b in range(2):
        for i in range(2):
            reference = paste_masks_numpy(masks[b, i], boxes[b, i], (40, 30)) >= 0.5
            reference[sizes[b, 0]:, :] = False
            reference[:, sizes[b, 1]:] = False
            np.testing.assert_array_equal(full[b, i], reference.astype(np.uint8))
    # Image 0, by hand: between cells 6 (0) and 7 (0.9) the value 0.9 f reaches 0.5 at mask
    # coordinate 6.556, and symmetrically up to 20.444; pixel y sits at (y + 0.5) * 28 / 20 - 0.5,
    # so rows 5..14 are foreground, and with 28 / 30 per pixel, columns 8..21.
    assert full[0, 0, 5:15, 8:22].all() and full[0, 0].sum() == 10 * 14
    # Image 1's box is 32 wide, its foreground columns 8..23, but the image is 16 wide.
    pasted = paste_masks_numpy(masks[1, 0], boxes[1, 0], (40, 30)) >= 0.5
    assert pasted[:, 8:24].any(axis=0).all() and pasted[:, 16:].any()
    assert full[1, 0, :, 8:16].any(axis=0).all() and not full[1, 0, :, 16:].any()
    assert not full[0, 1].any() and not full[1, 1].any()


def test_full_image_masks_equal_a_whole_canvas_paste():
    # Pasting only around each box (no float canvas) gives the pixels of a paste over the whole
    # canvas: random boxes, some past the image edges, some empty, tiny and huge.
    rng = np.random.default_rng(1)
    masks = rng.uniform(size=(2, 6, 7, 7)).astype(np.float32)
    y1, x1 = rng.uniform(-10, 40, (2, 6)), rng.uniform(-10, 30, (2, 6))
    boxes = np.stack([y1, x1, y1 + rng.uniform(0.3, 30, (2, 6)), x1 + rng.uniform(0.3, 30, (2, 6))],
                     axis=-1).astype(np.float32)
    boxes[0, 5] = 0.0                      # a padding row
    boxes[1, 4] = [60, 50, 70, 60]         # wholly outside its image
    boxes[1, 5] = [-100, -100, 200, 200]   # far larger than the image
    sizes = np.array([[45, 38], [30, 41]], np.int32)
    full = postprocess.full_image_masks(masks, boxes, sizes, 0.5).numpy()
    probs = paste_masks(masks, boxes, (45, 41)).numpy()
    inside = (np.arange(45)[None, :, None] < sizes[:, 0, None, None]) & \
        (np.arange(41)[None, None, :] < sizes[:, 1, None, None])
    expected = (probs >= 0.5) & inside[:, None]
    decided = np.abs(probs - 0.5) > 1e-4
    np.testing.assert_array_equal(full[decided], expected[decided])
    assert full[0, :5].any(axis=(1, 2)).sum() >= 4 and full[1, 5, :30].any()
    assert not full[0, 5].any() and not full[1, 4].any()


def test_boxes_back_to_original_pixels_padding_zero():
    boxes = np.array([[[10.0, 20.0, 30.0, 64.0], [1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 6.0, 6.0]]],
                     np.float32)
    original = postprocess.to_original_frame(boxes, np.array([0.5], np.float32),
                                             np.array([2], np.int32)).numpy()
    np.testing.assert_allclose(original, [[[20, 40, 60, 128], [2, 4, 6, 8], [0, 0, 0, 0]]])


@pytest.mark.parametrize("num, expected", [([0, 3], [[0, 0, 0], [1, 1, 1]]),
                                           ([2, 1], [[1, 1, 0], [1, 0, 0]])])
def test_valid_rows(num, expected):
    np.testing.assert_array_equal(postprocess.valid_rows(np.array(num, np.int32), 3).numpy(),
                                  np.array(expected, bool))


def test_in_graph_rle_equals_pycocotools_on_random_masks():
    # Random regions anywhere in small images, including ones touching every edge (runs that
    # go on across columns, a run ending on the last pixel) and empty ones.
    rng = np.random.default_rng(2)
    encode = tf.function(lambda region, origin, size: mask_encoding.rle_string(
        mask_encoding.rle_counts(region, origin, size)))
    for _ in range(60):
        height, width = rng.integers(1, 30, 2)
        top, left = rng.integers(0, height), rng.integers(0, width)
        rows, cols = rng.integers(0, height - top + 1), rng.integers(0, width - left + 1)
        region = (rng.uniform(size=(rows, cols)) < rng.uniform()).astype(np.uint8)
        full = np.zeros((height, width), np.uint8)
        full[top:top + rows, left:left + cols] = region
        got = encode(tf.constant(region, shape=(rows, cols)), tf.constant([top, left]),
                     tf.constant([height, width])).numpy()
        assert got == mask_utils.encode(np.asfortranarray(full))["counts"]


@pytest.mark.parametrize("encoding", ["png", "rle"])
def test_encoded_masks_decode_to_the_full_masks(encoding):
    rng = np.random.default_rng(3)
    masks = rng.uniform(size=(2, 4, 7, 7)).astype(np.float32)
    y1, x1 = rng.uniform(-5, 25, (2, 4)), rng.uniform(-5, 25, (2, 4))
    boxes = np.stack([y1, x1, y1 + rng.uniform(1, 20, (2, 4)), x1 + rng.uniform(1, 20, (2, 4))],
                     axis=-1).astype(np.float32)
    boxes[1, 2] = [40, 40, 50, 50]  # outside its image: an empty mask
    sizes = np.array([[30, 26], [20, 33]], np.int32)
    valid = np.array([[True, True, True, False], [True, True, True, True]])
    encoded = mask_encoding.encoded_masks(masks, boxes, sizes, valid, 0.5, encoding).numpy()
    full = postprocess.full_image_masks(np.where(valid[..., None, None], masks, 0),
                                        np.where(valid[..., None], boxes, 0), sizes, 0.5).numpy()
    assert encoded[0, 3] == b""
    for b in range(2):
        for i in range(4):
            if valid[b, i]:
                np.testing.assert_array_equal(
                    decode_mask(encoded[b, i], tuple(sizes[b])), full[b, i, :sizes[b, 0],
                                                                       :sizes[b, 1]] > 0)
    assert (encoded[1, 2] == b"") == (encoding == "png")
