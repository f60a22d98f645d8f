import json
import logging
import re

import numpy as np
import pytest
import tensorflow as tf
from pycocotools import mask as mask_utils

from mask_rcnn_tf.data.coco import load_coco, rle_string_to_counts
from mask_rcnn_tf.data.pipeline import decode_rle_masks


def _runs(mask):
    """Uncompressed COCO RLE from the definition: column-major runs, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int64)
    edges = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(edges)
    return np.concatenate([[0], runs]) if flat[0] else runs


def _at(path):
    """Regex matching a path as the error messages print it."""
    return re.escape(str(path))


def _annotation(annotation_id, segmentation, bbox=(2, 3, 5, 4), image_id=1, category_id=1,
                **extra):
    return dict(id=annotation_id, image_id=image_id, category_id=category_id,
                bbox=list(bbox), segmentation=segmentation, iscrowd=0, area=1.0, **extra)


def _decode_with_tf(counts_list, height, width):
    ragged = tf.RaggedTensor.from_row_lengths(
        np.concatenate(counts_list).astype(np.int32), [len(c) for c in counts_list])
    return decode_rle_masks(ragged, height, width).numpy()


def test_rle_string_matches_runs_of_the_mask():
    rng = np.random.default_rng(0)
    for trial in range(40):
        height, width = rng.integers(1, 60, size=2)
        mask = rng.random((height, width)) < rng.random() ** 2
        if trial % 4 == 0:
            mask[:] = False
            mask[rng.integers(0, height):, rng.integers(0, width):] = True
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        np.testing.assert_array_equal(rle_string_to_counts(rle["counts"]), _runs(mask))


def test_polygon_and_both_rle_forms_decode_like_pycocotools(write_coco):
    height, width = 20, 30
    mask = np.zeros((height, width), np.uint8)
    mask[0:4, 0:3] = 1  # touches the first pixel: the runs start with an empty 0-run
    mask[10:17, 20:29] = 1
    compressed = mask_utils.encode(np.asfortranarray(mask))
    # Empty runs anywhere, the last pixel set, and a trailing empty run before another mask.
    zero_runs = [5, 0, 3, 0, 0, 2, height * width - 12, 2, 0, 0]
    segmentations = [
        [[2.0, 3.0, 12.5, 3.0, 12.5, 9.0, 6.0, 14.0], [20.0, 1.0, 28.0, 1.0, 24.0, 8.0]],
        {"size": [height, width], "counts": compressed["counts"].decode("ascii")},
        {"size": [height, width], "counts": zero_runs},
        {"size": [height, width], "counts": _runs(mask).tolist()},
    ]
    annotations = [_annotation(i + 1, s) for i, s in enumerate(segmentations)]
    path, images_dir = write_coco([{"id": 1, "height": height, "width": width}], annotations)
    dataset = load_coco(path, images_dir)
    record = dataset.records[0]
    assert record.classes.tolist() == [1, 1, 1, 1]
    decoded = _decode_with_tf(record.mask_counts, height, width)
    for annotation, got in zip(dataset.coco.loadAnns([1, 2, 3, 4]), decoded):
        np.testing.assert_array_equal(got, dataset.coco.annToMask(annotation))
    np.testing.assert_array_equal(decoded[1], mask)
    np.testing.assert_array_equal(decoded[3], mask)
    assert np.flatnonzero(decoded[2].flatten(order="F")).tolist() == [8, 9, 598, 599]


def test_boxes_are_yxyx_and_classes_contiguous(write_coco):
    categories = [{"id": 7, "name": "x"}, {"id": 3, "name": "y"}]
    square = [[4.0, 2.0, 10.0, 2.0, 10.0, 6.0, 4.0, 6.0]]
    annotations = [_annotation(1, square, bbox=(4, 2, 6, 4), category_id=7),
                   _annotation(2, square, bbox=(0, 1, 8.5, 3), category_id=3)]
    path, images_dir = write_coco([{"id": 1, "height": 12, "width": 16}], annotations,
                                  categories)
    dataset = load_coco(path, images_dir)
    assert dataset.categories == [(3, "y"), (7, "x")]
    record = dataset.records[0]
    np.testing.assert_array_equal(record.boxes, [[2, 4, 6, 10], [1, 0, 4, 8.5]])
    assert record.boxes.dtype == np.float32 and record.classes.dtype == np.int32
    assert record.classes.tolist() == [2, 1]
    reordered = load_coco(path, images_dir, category_ids=[7])
    assert reordered.categories == [(7, "x")]
    assert reordered.records[0].classes.tolist() == [1]


def test_crowd_excluded_degenerate_skipped_and_counted(write_coco, caplog):
    square = [[4.0, 2.0, 10.0, 2.0, 10.0, 6.0, 4.0, 6.0]]
    empty_rle = {"size": [12, 16], "counts": [12 * 16]}
    annotations = [
        _annotation(1, square),
        dict(_annotation(2, {"size": [12, 16], "counts": [40, 20, 132]}), iscrowd=1),
        _annotation(3, square, bbox=(2, 3, 0.5, 4)),  # narrower than a pixel
        _annotation(4, empty_rle),
        _annotation(5, [[1.0, 1.0, 3.0, 1.0]]),  # a polygon of two points has no area
    ]
    path, images_dir = write_coco([{"id": 1, "height": 12, "width": 16},
                                   {"id": 2, "height": 8, "width": 8}], annotations)
    with caplog.at_level(logging.INFO, logger="mask_rcnn_tf.data"):
        dataset = load_coco(path, images_dir)
    assert [len(r.classes) for r in dataset.records] == [1, 0]
    assert dataset.records[1].boxes.shape == (0, 4)
    assert len(dataset.coco.getAnnIds()) == 5  # the evaluator still sees the crowd region
    assert "skipped 1 crowd, 3 degenerate" in caplog.text


def _bad_annotations_case(write_coco, **changes):
    annotations = [_annotation(11, [[1.0, 1.0, 5.0, 1.0, 5.0, 5.0]])]
    annotations[0].update(changes)
    return write_coco([{"id": 1, "height": 8, "width": 8}], annotations)


def test_missing_annotations_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match=f"{_at(missing)}: annotations file not found"):
        load_coco(missing, tmp_path)


def test_invalid_json_names_line_and_column(write_coco):
    path, images_dir = write_coco([], [], raw='{\n  "images": [],\n  "annotations": [,]\n}')
    with pytest.raises(ValueError, match=rf"{_at(path)}: not valid JSON \(line 3, column 19"):
        load_coco(path, images_dir)


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_key(write_coco, key):
    data = {"images": [], "annotations": [], "categories": []}
    del data[key]
    path, images_dir = write_coco([], [], raw=json.dumps(data))
    with pytest.raises(ValueError, match=f"{_at(path)}: missing top-level key '{key}'"):
        load_coco(path, images_dir)


def test_annotation_with_unknown_image_id(write_coco):
    path, images_dir = _bad_annotations_case(write_coco, image_id=99)
    with pytest.raises(ValueError,
                       match=f"{_at(path)}: annotation id 11: image_id 99 is not in images"):
        load_coco(path, images_dir)


def test_annotation_with_unknown_category_id(write_coco):
    path, images_dir = _bad_annotations_case(write_coco, category_id=5)
    with pytest.raises(ValueError,
                       match=f"{_at(path)}: annotation id 11: category_id 5 is not in categories"):
        load_coco(path, images_dir)


@pytest.mark.parametrize("segmentation", ["polygon", 3, {"size": [8, 8], "counts": 7}])
def test_segmentation_of_wrong_type(write_coco, segmentation):
    path, images_dir = _bad_annotations_case(write_coco, segmentation=segmentation)
    with pytest.raises(ValueError, match=f"{_at(path)}: annotation id 11: segmentation"):
        load_coco(path, images_dir)


def test_rle_of_wrong_size(write_coco):
    path, images_dir = _bad_annotations_case(
        write_coco, segmentation={"size": [8, 8], "counts": [10, 20]})
    with pytest.raises(ValueError, match="annotation id 11: RLE counts sum to 30, expected"):
        load_coco(path, images_dir)


def test_missing_image_file(write_coco, tmp_path):
    path, images_dir = write_coco([{"id": 1, "height": 8, "width": 8}], [])
    missing = tmp_path / "images" / "1.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=f"{_at(missing)}: image file not found"):
        load_coco(path, images_dir)


def test_image_that_does_not_decode(write_coco, tmp_path):
    path, images_dir = write_coco([{"id": 1, "height": 8, "width": 8}], [])
    broken = tmp_path / "images" / "1.png"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(ValueError, match=f"{_at(broken)}: image does not decode"):
        load_coco(path, images_dir, verify_images=True)
    assert len(load_coco(path, images_dir, verify_images=False).records) == 1


def test_image_size_differs_from_listed_size(write_coco):
    path, images_dir = write_coco([{"id": 1, "height": 8, "width": 8}], [])
    data = json.loads(open(path).read())
    data["images"][0]["width"] = 9
    open(path, "w").write(json.dumps(data))
    with pytest.raises(ValueError, match=r"1.png: image is 8x8 \(h x w\) but .* says 8x9"):
        load_coco(path, images_dir)


def test_unknown_category_ids_argument(write_coco):
    path, images_dir = write_coco([{"id": 1, "height": 8, "width": 8}], [])
    with pytest.raises(ValueError, match=f"{_at(path)}: category_ids value 4 is not in categories"):
        load_coco(path, images_dir, category_ids=[1, 4])
