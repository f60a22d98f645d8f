"""COCO evaluation: conversion to COCO results and COCOeval scores on a hand-made ground truth."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mask_rcnn_tf.evaluation import coco_eval

# Class 1 is COCO category 7, class 2 is category 3: not contiguous and not in order.
CATEGORY_IDS = [7, 3]
MASK_SIZE = 28
SLOTS = 5


def _rectangle(height, width, top, left, bottom, right):
    """Bool [height, width], True on rows top..bottom-1 and columns left..right-1."""
    mask = np.zeros((height, width), bool)
    mask[top:bottom, left:right] = True
    return mask


def _disc(height, width, cy, cx, radius):
    """Bool [height, width], True where the pixel centre lies within `radius` of (cy, cx)."""
    y, x = np.mgrid[:height, :width] + 0.5
    return (y - cy) ** 2 + (x - cx) ** 2 <= radius ** 2


# image id -> (height, width, scale of the resized input, [(class, bool mask)])
IMAGES = {
    11: (40, 50, 2.0, [(1, _rectangle(40, 50, 5, 8, 17, 27)), (2, _disc(40, 50, 28, 36, 8))]),
    12: (30, 30, 0.5, [(1, _rectangle(30, 30, 3, 4, 9, 24) | _rectangle(30, 30, 3, 4, 17, 10))]),
    13: (64, 48, 1.25, [(2, _rectangle(64, 48, 10, 5, 30, 20)), (1, _disc(64, 48, 45, 30, 12))]),
    14: (96, 96, 1.0, [(1, _rectangle(96, 96, 10, 10, 50, 40))]),  # medium: 1200 px
}


def _tight_box(mask):
    """[y1, x1, y2, x2] continuous pixels of the smallest box holding a bool mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float64)


def _make_gt(images=IMAGES):
    dataset = {"images": [], "annotations": [],
               "categories": [{"id": c, "name": f"cat{c}"} for c in sorted(CATEGORY_IDS)]}
    for image_id, (height, width, _, objects) in images.items():
        dataset["images"].append({"id": image_id, "height": height, "width": width})
        for cls, mask in objects:
            y1, x1, y2, x2 = _tight_box(mask)
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            dataset["annotations"].append({
                "id": len(dataset["annotations"]) + 1, "image_id": image_id,
                "category_id": CATEGORY_IDS[cls - 1], "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float(mask.sum()), "segmentation": rle, "iscrowd": 0})
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _crop_mask(mask, box):
    """The mask sampled at the centres of a MASK_SIZE x MASK_SIZE grid of bins over `box`."""
    y1, x1, y2, x2 = box
    centres = (np.arange(MASK_SIZE) + 0.5) / MASK_SIZE
    rows = np.floor(y1 + centres * (y2 - y1)).astype(int)
    cols = np.floor(x1 + centres * (x2 - x1)).astype(int)
    return mask[np.ix_(rows, cols)].astype(np.float32)


def _perfect(image_id):
    """The ground truth of an image as detections: (class, box, score 1, box-crop mask)."""
    return [(cls, _tight_box(mask), 1.0, _crop_mask(mask, _tight_box(mask)))
            for cls, mask in IMAGES[image_id][3]]


def _outputs(image_ids, detections=None):
    """Model outputs for `image_ids`; `detections[id]` lists (class, box in original pixels,
    score, box-crop mask), by default the ground truth itself. Unused slots hold garbage that
    must be ignored."""
    rng = np.random.default_rng(0)
    batch = len(image_ids)
    out = {
        "detection_boxes": rng.uniform(0, 100, (batch, SLOTS, 4)).astype(np.float32),
        "detection_scores": np.full((batch, SLOTS), 0.9, np.float32),
        "detection_classes": np.zeros((batch, SLOTS), np.int32),
        "detection_masks": rng.uniform(0, 1, (batch, SLOTS, MASK_SIZE, MASK_SIZE)).astype(
            np.float32),
        "num_detections": np.zeros(batch, np.int32),
        "image_ids": np.array(image_ids, np.int64),
        "scales": np.array([IMAGES[i][2] for i in image_ids], np.float32),
        "original_sizes": np.array([IMAGES[i][:2] for i in image_ids], np.int32),
    }
    for b, image_id in enumerate(image_ids):
        rows = _perfect(image_id) if detections is None else detections.get(image_id, [])
        out["num_detections"][b] = len(rows)
        for i, (cls, box, score, crop) in enumerate(rows):
            out["detection_boxes"][b, i] = np.asarray(box) * IMAGES[image_id][2]
            out["detection_classes"][b, i] = cls
            out["detection_scores"][b, i] = score
            out["detection_masks"][b, i] = crop
    return out


def _evaluate(batches, category_ids=CATEGORY_IDS, **kwargs):
    evaluator = coco_eval.CocoEvaluator(_make_gt(), category_ids, verbose=False, **kwargs)
    for batch in batches:
        evaluator.update(batch)
    return evaluator, evaluator.evaluate()


def _direct_cocoeval(coco_gt, results, iou_type, image_ids):
    """Reference path: pycocotools run by hand on a results list."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval_direct = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iou_type)
        coco_eval_direct.params.imgIds = sorted(image_ids)
        coco_eval_direct.evaluate()
        coco_eval_direct.accumulate()
        coco_eval_direct.summarize()
    return coco_eval_direct.stats


def test_ground_truth_as_detections_scores_one():
    _, metrics = _evaluate([_outputs([11, 12]), _outputs([13])])
    assert list(metrics) == ["bbox", "segm"]
    assert list(metrics["bbox"]) == ["AP", "AP50", "AP75", "APs", "APm", "APl",
                                     "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    for name in ("AP", "AP50", "AP75", "APs", "AR10", "AR100", "ARs"):
        assert metrics["bbox"][name] == pytest.approx(1.0), name
    # Every object is small (area < 32**2): pycocotools reports -1 for the empty ranges.
    assert metrics["bbox"]["APm"] == -1.0 and metrics["bbox"]["APl"] == -1.0
    assert metrics["segm"]["AP50"] == pytest.approx(1.0)
    assert metrics["segm"]["AP"] > 0.95
    assert all(isinstance(v, float) for m in metrics.values() for v in m.values())


def test_pasted_masks_reproduce_ground_truth():
    evaluator, _ = _evaluate([_outputs([11, 12, 13])])
    gt = _make_gt()
    for result in evaluator.results():
        pasted = mask_utils.decode(result["segmentation"]).astype(bool)
        ious = [(pasted & gt_mask).sum() / (pasted | gt_mask).sum()
                for gt_mask in (gt.annToMask(a).astype(bool)
                                for a in gt.imgToAnns[result["image_id"]]
                                if a["category_id"] == result["category_id"])]
        assert max(ious) > 0.9


def test_shifted_box_lowers_ap():
    box = _tight_box(IMAGES[11][3][0][1])  # class 1 rectangle, 12 high x 19 wide
    shift = 4.0
    shifted = box + np.array([0, shift, 0, shift])
    width = box[3] - box[1]
    iou = (width - shift) / (width + shift)
    assert 0.6 < iou < 0.7  # matches at IoU 0.5 but not at 0.75
    detections = {11: [(1, shifted, 1.0, _crop_mask(IMAGES[11][3][0][1], box))] + _perfect(11)[1:],
                  12: _perfect(12), 13: _perfect(13)}
    _, metrics = _evaluate([_outputs([11, 12, 13], detections)], iou_types=("bbox",))
    assert metrics["bbox"]["AP50"] == pytest.approx(1.0)
    assert metrics["bbox"]["AP75"] < 0.9
    assert metrics["bbox"]["AP"] < 0.95


def test_boxes_go_back_to_original_pixels_and_are_clipped():
    # Image 12 is 30 x 30 at scale 0.5. Box in original pixels [y1, x1, y2, x2] = [5, 10, 15, 20]
    # and one crossing the bottom-right corner: [20, 24, 36, 40] -> clipped to [20, 24, 30, 30].
    detections = {12: [(2, [5, 10, 15, 20], 0.8, np.ones((MASK_SIZE, MASK_SIZE))),
                       (1, [20, 24, 36, 40], 0.3, np.ones((MASK_SIZE, MASK_SIZE)))]}
    results = coco_eval.detections_to_coco(_outputs([12], detections), CATEGORY_IDS)
    assert len(results) == 2  # the other SLOTS - 2 padding rows are ignored
    assert results[0]["bbox"] == pytest.approx([10, 5, 10, 10])
    assert results[1]["bbox"] == pytest.approx([24, 20, 6, 10])
    assert [r["category_id"] for r in results] == [3, 7]
    assert [r["image_id"] for r in results] == [12, 12]
    assert [r["score"] for r in results] == pytest.approx([0.8, 0.3])
    json.dumps(results)  # plain Python types, counts as str


def test_segmentation_is_the_box_filled_in_original_image():
    box = [5, 10, 15, 20]
    probs = np.full((MASK_SIZE, MASK_SIZE), 0.6, np.float32)
    outputs = _outputs([12], {12: [(1, box, 0.9, probs)]})
    expected = _rectangle(30, 30, 5, 10, 15, 20)
    for threshold, want in ((0.5, expected), (0.7, np.zeros_like(expected))):
        (result,) = coco_eval.detections_to_coco(outputs, CATEGORY_IDS, mask_threshold=threshold)
        assert isinstance(result["segmentation"]["counts"], str)
        assert list(result["segmentation"]["size"]) == [30, 30]
        np.testing.assert_array_equal(mask_utils.decode(result["segmentation"]).astype(bool), want)


def test_mask_of_box_crossing_the_image_is_pasted_with_unclipped_box():
    # Unclipped box [20, 24, 36, 40] in a 30 x 30 image; the mask's left half is on. Pasting with
    # the clipped box [20, 24, 30, 30] would put the on/off edge at x = 27, not at x = 32.
    crop = np.zeros((MASK_SIZE, MASK_SIZE), np.float32)
    crop[:, : MASK_SIZE // 2] = 1.0
    (result,) = coco_eval.detections_to_coco(
        _outputs([12], {12: [(1, [20, 24, 36, 40], 0.9, crop)]}), CATEGORY_IDS)
    np.testing.assert_array_equal(mask_utils.decode(result["segmentation"]).astype(bool),
                                  _rectangle(30, 30, 20, 24, 30, 30))


def test_segm_detections_are_sized_by_mask_area():
    # A false positive ranked above the true detection of image 14's medium object: its box is
    # medium (40 x 40 px) but its mask small (the top-left 8 x 8 of 28 x 28 cells, about 11 x 11
    # px). COCOeval ignores unmatched detections outside the area range, so the false positive
    # counts in bbox APm (precision 1/2 at full recall) but not in segm APm.
    blob = np.zeros((MASK_SIZE, MASK_SIZE), np.float32)
    blob[:8, :8] = 1.0
    [(cls, box, _, crop)] = _perfect(14)
    detections = {14: [(1, [50, 50, 90, 90], 0.9, blob), (cls, box, 0.5, crop)]}
    _, metrics = _evaluate([_outputs([14], detections)])
    assert metrics["bbox"]["APm"] == pytest.approx(0.5)
    assert metrics["segm"]["APm"] == pytest.approx(1.0)
    assert metrics["segm"]["APs"] == -1.0  # no small ground truth; the blob is not scored


def test_category_mapping_is_used_in_evaluation():
    _, swapped = _evaluate([_outputs([11, 12, 13])], category_ids=CATEGORY_IDS[::-1])
    assert swapped["bbox"]["AP"] == 0.0
    assert swapped["segm"]["AP"] == 0.0


def test_only_images_seen_are_scored():
    _, seen_two = _evaluate([_outputs([11, 12])])
    assert seen_two["bbox"]["AP"] == pytest.approx(1.0)
    assert seen_two["bbox"]["AR100"] == pytest.approx(1.0)
    # Image 13 seen without detections: its two objects are misses.
    _, with_miss = _evaluate([_outputs([11, 12]), _outputs([13], {})])
    assert with_miss["bbox"]["AR100"] < 0.9


def test_no_detections_give_zeros():
    for batches in ([], [_outputs([11, 12, 13], {})]):
        evaluator, metrics = _evaluate(batches)
        assert evaluator.results() == []
        for iou_type in ("bbox", "segm"):
            assert metrics[iou_type] == dict.fromkeys(coco_eval.STAT_NAMES[iou_type], 0.0)


def test_matches_pycocotools_run_directly():
    rng = np.random.default_rng(1)
    detections = {}
    for image_id in (11, 12, 13):
        rows = []
        for cls, mask in IMAGES[image_id][3]:
            box = _tight_box(mask)
            jitter = rng.uniform(-3, 3, 4)
            rows.append((cls, box + jitter, rng.uniform(0.3, 1), _crop_mask(mask, box)))
            # A lower-scoring duplicate and a false positive of the other class.
            rows.append((cls, box + rng.uniform(-6, 6, 4), rng.uniform(0, 0.5),
                         _crop_mask(mask, box)))
            rows.append((3 - cls, box + 2 * jitter, rng.uniform(0, 1), _crop_mask(mask, box)))
        detections[image_id] = rows[:SLOTS]
    evaluator, metrics = _evaluate([_outputs([11, 13], detections), _outputs([12], detections)])
    assert 0.1 < metrics["bbox"]["AP"] < 0.9  # a case where the numbers say something
    gt = _make_gt()
    bbox_results = [{k: r[k] for k in ("image_id", "category_id", "score", "bbox")}
                    for r in evaluator.results()]
    segm_results = [{k: r[k] for k in ("image_id", "category_id", "score", "segmentation")}
                    for r in evaluator.results()]
    for iou_type, results in (("bbox", bbox_results), ("segm", segm_results)):
        expected = _direct_cocoeval(gt, results, iou_type, [11, 12, 13])
        np.testing.assert_allclose(list(metrics[iou_type].values()), expected, atol=1e-12)


def test_verbose_prints_pycocotools_summary(capsys):
    _evaluate([_outputs([11])])
    assert capsys.readouterr().out == ""
    evaluator = coco_eval.CocoEvaluator(_make_gt(), CATEGORY_IDS, iou_types=("bbox",))
    evaluator.update(_outputs([11]))
    evaluator.evaluate()
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in capsys.readouterr().out


def test_bad_inputs_raise_clear_errors():
    gt = _make_gt()
    with pytest.raises(ValueError, match="keypoint"):
        coco_eval.CocoEvaluator(gt, CATEGORY_IDS, iou_types=("keypoint",))
    with pytest.raises(ValueError, match=r"\[99\]"):
        coco_eval.CocoEvaluator(gt, [7, 99])
    evaluator = coco_eval.CocoEvaluator(gt, CATEGORY_IDS, verbose=False)
    bad_class = _outputs([11])
    bad_class["detection_classes"][0, 1] = 3
    with pytest.raises(ValueError, match=r"detection_classes\[0, 1\] = 3"):
        evaluator.update(bad_class)
    no_masks = _outputs([11])
    del no_masks["detection_masks"]
    with pytest.raises(ValueError, match="detection_masks"):
        evaluator.update(no_masks)
    missing = _outputs([11])
    del missing["scales"]
    with pytest.raises(ValueError, match="scales"):
        evaluator.update(missing)
    unknown_image = _outputs([11])
    unknown_image["image_ids"][0] = 5
    with pytest.raises(ValueError, match=r"image_ids \[5\]"):
        evaluator.update(unknown_image)
    evaluator.update(_outputs([11]))
    with pytest.raises(ValueError, match=r"\[11\].*more than once"):
        evaluator.update(_outputs([11, 12]))
    too_many = _outputs([12])
    too_many["num_detections"][0] = SLOTS + 1
    with pytest.raises(ValueError, match="num_detections"):
        evaluator.update(too_many)


def test_box_only_outputs_give_box_results():
    outputs = _outputs([11])
    del outputs["detection_masks"]
    results = coco_eval.detections_to_coco(outputs, CATEGORY_IDS)
    assert len(results) == 2 and all("segmentation" not in r for r in results)
    _, metrics = _evaluate([outputs], iou_types=("bbox",))
    assert list(metrics) == ["bbox"]
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)
