"""Drawing detections: what changes, what stays, and where."""

import numpy as np
import pytest

from mask_rcnn_tf.evaluation import visualize

NAMES = {1: "circle", 2: "square"}


def _image(size=128):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def _mask(size, top, left, bottom, right):
    mask = np.zeros((size, size), bool)
    mask[top:bottom, left:right] = True
    return mask


def test_output_shape_dtype_and_input_untouched():
    image = _image()
    before = image.copy()
    out = visualize.draw_detections(image, [[40, 40, 80, 90]], [1], [0.9], None, NAMES)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(image, before)


def test_mask_pixels_are_blended_with_the_class_colour():
    image = _image()
    mask = _mask(128, 60, 50, 100, 110)
    out = visualize.draw_detections(image, [[60, 50, 100, 110]], [2], [0.9],
                                    mask[None].astype(np.float32), NAMES)
    colour = np.array(visualize.class_color(2), np.float32)
    # Rows 80..95, columns 60..100: inside the mask, clear of the outline and the label.
    inside = (slice(80, 96), slice(60, 101))
    expected = np.round(0.5 * image[inside].astype(np.float32) + 0.5 * colour)
    np.testing.assert_array_equal(out[inside], expected.astype(np.uint8))


def test_pixels_far_from_detections_are_unchanged():
    image = _image()
    mask = _mask(128, 70, 70, 100, 100)
    out = visualize.draw_detections(image, [[70, 70, 100, 100]], [1], [0.95], mask[None], NAMES)
    # The label sits above the box: rows 70 - label height .. 70, columns 70 onwards.
    np.testing.assert_array_equal(out[:40], image[:40])
    np.testing.assert_array_equal(out[:, :60], image[:, :60])
    np.testing.assert_array_equal(out[105:], image[105:])
    assert not np.array_equal(out[60:70, 70:100], image[60:70, 70:100])  # the label


def test_box_outline_is_drawn_on_the_box_border():
    image = np.zeros((128, 128, 3), np.uint8)
    out = visualize.draw_detections(image, [[70, 20, 100, 60]], [1], [0.9], None, NAMES)
    colour = visualize.class_color(1)
    # Box [y1, x1, y2, x2] = [70, 20, 100, 60] covers pixels 70..99 x 20..59.
    for y, x in ((85, 20), (85, 59), (99, 40)):
        assert tuple(out[y, x]) == colour, (y, x)
    assert tuple(out[85, 40]) == (0, 0, 0)
    assert tuple(out[85, 60]) == (0, 0, 0)
    assert tuple(out[100, 40]) == (0, 0, 0)


def test_line_width_grows_with_the_image():
    box = [[300, 200, 700, 800]]
    small = visualize.draw_detections(np.zeros((128, 128, 3), np.uint8), [[30, 20, 70, 80]], [1],
                                      [0.9], None, NAMES)
    large = visualize.draw_detections(np.zeros((1000, 1000, 3), np.uint8), box, [1], [0.9],
                                      None, NAMES)
    assert small[50, 20].any() and not small[50, 21].any()
    assert large[500, 200].any() and large[500, 201].any()


def test_score_threshold_hides_low_scores():
    image = _image()
    masks = np.stack([_mask(128, 10, 10, 40, 40), _mask(128, 70, 70, 110, 110)])
    boxes = [[10, 10, 40, 40], [70, 70, 110, 110]]
    out = visualize.draw_detections(image, boxes, [1, 2], [0.3, 0.8], masks, NAMES,
                                    score_threshold=0.5)
    np.testing.assert_array_equal(out[:45, :45], image[:45, :45])
    assert not np.array_equal(out[80:100, 80:100], image[80:100, 80:100])
    hidden = visualize.draw_detections(image, boxes, [1, 2], [0.3, 0.8], masks, NAMES,
                                       score_threshold=0.9)
    np.testing.assert_array_equal(hidden, image)


def test_same_class_same_colour_and_list_names():
    image = np.full((128, 128, 3), 100, np.uint8)
    masks = np.stack([_mask(128, 30, 10, 60, 40), _mask(128, 80, 70, 110, 110),
                      _mask(128, 80, 10, 110, 40)])
    names = ["background", "circle", "square"]
    out = visualize.draw_detections(image, [[30, 10, 60, 40], [80, 70, 110, 110],
                                            [80, 10, 110, 40]], [2, 2, 1], [0.9, 0.8, 0.7],
                                    masks, names)
    np.testing.assert_array_equal(out[50, 25], out[100, 90])
    assert not np.array_equal(out[50, 25], out[100, 25])
    assert visualize.class_color(1) != visualize.class_color(2)


def test_no_detections_and_bad_inputs():
    image = _image()
    empty = visualize.draw_detections(image, np.zeros((0, 4)), [], [], np.zeros((0, 128, 128)),
                                      NAMES)
    np.testing.assert_array_equal(empty, image)
    with pytest.raises(ValueError, match="class 5"):
        visualize.draw_detections(image, [[0, 0, 10, 10]], [5], [0.9], None, NAMES)
    with pytest.raises(ValueError, match="uint8"):
        visualize.draw_detections(image.astype(np.float32), [[0, 0, 10, 10]], [1], [0.9], None,
                                  NAMES)
    with pytest.raises(ValueError, match="masks"):
        visualize.draw_detections(image, [[0, 0, 10, 10]], [1], [0.9], np.zeros((1, 64, 64)),
                                  NAMES)


def test_skeleton_is_drawn_between_visible_keypoints_only():
    image = np.zeros((64, 64, 3), np.uint8)
    keypoints = np.array([[[10, 10, 2], [50, 10, 2], [30, 50, 0]]], np.float32)
    drawn = visualize.draw_detections(image, [[5, 5, 60, 60]], [1], [0.9], None, {1: "figure"},
                            keypoints=keypoints, skeleton=[(1, 2), (2, 3)])
    assert drawn[10, 30].any()  # on the limb joining the two visible keypoints
    assert not drawn[30, 40].any()  # where the limb to the unlabelled keypoint would run
