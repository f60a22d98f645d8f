"""evaluation/evaluate.py: a fixed model's detections and COCO numbers against stored values,
and the progress line.

The model is the tiny shapes model with every weight drawn from NumPy by its variable path (not
from Keras initializers, whose streams change across versions), so its outputs depend only on
the model's computation. Its detections on three fixed shapes images and its AP are stored in
expected_detections.json; a change that moves them (anchors, RoIAlign, NMS, box decoding, mask
pasting, the metric) fails here. After an intended change, regenerate with
MASK_RCNN_REGENERATE=1 and say why in the commit.
"""

import dataclasses
import json
import os
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from mask_rcnn_tf.config import SplitConfig, load_config
from mask_rcnn_tf.data.coco import load_coco
from mask_rcnn_tf.data.inputs import load_split
from mask_rcnn_tf.data.make_tfrecords import make_tfrecords
from mask_rcnn_tf.data.shapes import make_shapes
from mask_rcnn_tf.evaluation.coco_eval import CocoEvaluator
from mask_rcnn_tf.evaluation.evaluate import evaluate_model, predict_dataset
from mask_rcnn_tf.modeling.factory import build_model

CONFIG = Path(__file__).parents[2] / "configs" / "shapes.yaml"
EXPECTED = Path(__file__).with_name("expected_detections.json")
OVERRIDES = ["data.min_size=64", "data.max_size=64", "model.backbone.base_width=8",
             "model.fpn.num_channels=16", "model.roi_heads.box_fc_dim=16",
             "model.roi_heads.mask_conv_dim=8", "model.roi_heads.score_threshold=0.0",
             "model.roi_heads.detections_per_image=8"]
KEPT = 5  # detections stored per image


def _fixed_weights(model):
    """Sets every weight from a NumPy generator seeded by its path: norm scales near 1,
    variances 1, kernels ~ N(0, 1 / fan_in), biases and shifts ~ N(0, 0.1)."""
    for weight in model.weights:
        rng = np.random.default_rng(zlib.crc32(weight.path.encode()))
        shape, name = tuple(weight.shape), weight.path.split("/")[-1]
        if name == "moving_variance":
            value = np.ones(shape)
        elif name == "gamma":
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name == "kernel":
            value = rng.standard_normal(shape) / np.sqrt(max(1, int(np.prod(shape[:-1]))))
        else:
            value = 0.1 * rng.standard_normal(shape)
        weight.assign(value.astype(np.float32))


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regression") / "shapes"
    make_shapes(folder, num_images=3, seed=0, image_size=64)
    config = load_config(CONFIG, OVERRIDES)
    model = build_model(config.model, image_size=config.data.pad_size)
    _fixed_weights(model)
    return config, model, load_coco(folder / "annotations.json", folder / "images")


def _rounded(values, digits):
    return [round(float(v), digits) for v in np.reshape(values, -1)]


@pytest.fixture(scope="module")
def json_batches(fixed):
    """predict_dataset's batches from annotations + images: one batch of all 3 images, so one
    trace of the model."""
    config, model, dataset = fixed
    return list(predict_dataset(model, config.data, dataset, batch_size=3))


def test_fixed_model_gives_the_stored_detections_and_metrics(fixed, json_batches):
    config, model, dataset = fixed
    batches = json_batches
    evaluator = CocoEvaluator(dataset.coco, [c for c, _ in dataset.categories], verbose=False)
    detections = {}
    for batch in batches:
        evaluator.update(batch)
        for i, image_id in enumerate(batch["image_ids"]):
            n = min(int(batch["num_detections"][i]), KEPT)
            detections[str(int(image_id))] = {
                "boxes": _rounded(batch["detection_boxes"][i, :n], 3),
                "scores": _rounded(batch["detection_scores"][i, :n], 5),
                "classes": [int(c) for c in batch["detection_classes"][i, :n]],
                "mask_sums": _rounded(batch["detection_masks"][i, :n].sum((1, 2)), 2)}
    observed = {"detections": detections, "metrics": evaluator.evaluate()}
    if os.environ.get("MASK_RCNN_REGENERATE"):
        EXPECTED.write_text(json.dumps(observed, sort_keys=True) + "\n")
    expected = json.loads(EXPECTED.read_text())
    assert sorted(observed["detections"]) == sorted(expected["detections"])
    for image_id, want in expected["detections"].items():
        got = observed["detections"][image_id]
        assert got["classes"] == want["classes"], image_id
        np.testing.assert_allclose(got["boxes"], want["boxes"], atol=2e-3, err_msg=image_id)
        np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-4, err_msg=image_id)
        np.testing.assert_allclose(got["mask_sums"], want["mask_sums"], rtol=1e-3,
                                   err_msg=image_id)
    for iou_type, stats in expected["metrics"].items():
        for name, value in stats.items():
            assert observed["metrics"][iou_type][name] == pytest.approx(value, abs=1e-4), \
                (iou_type, name)


def test_evaluate_model_logs_the_time_split_and_scores_with_either_backend(fixed, caplog):
    config, model, dataset = fixed
    pytest.importorskip("faster_coco_eval")
    with caplog.at_level("INFO", logger="mask_rcnn_tf.evaluation"):
        metrics = evaluate_model(model, config.data, dataset, batch_size=3, verbose=False,
                                 backend="faster_coco_eval")
    expected = json.loads(EXPECTED.read_text())["metrics"]
    assert sorted(metrics) == sorted(expected) == ["bbox", "segm"]
    for iou_type, stats in expected.items():
        assert metrics[iou_type] == pytest.approx(stats, abs=1e-4)
    assert re.search(r"^3 images: model and input [0-9.]+ s, metric \(faster_coco_eval\) "
                     r"[0-9.]+ s$", caplog.records[-1].getMessage())


def test_evaluation_from_shards_gives_the_json_paths_detections(fixed, json_batches, tmp_path,
                                                               capsys):
    """data.val.tfrecords: images from the shards, ground truth from data.val.annotations;
    and the progress line."""
    config, model, dataset = fixed
    images = os.path.dirname(dataset.records[0].path)
    make_tfrecords(dataset.annotations_path, images, tmp_path / "val", num_shards=2,
                   progress=False)
    data_config = dataclasses.replace(config.data, val=SplitConfig(
        annotations=dataset.annotations_path, tfrecords=os.fspath(tmp_path / "val-*")))
    shards = load_split(data_config, "val")
    assert shards.coco is not None and shards.num_images == 3
    shard_batches = list(predict_dataset(model, config.data, shards, batch_size=3,
                                         progress=True))
    # Not a terminal: one progress line at the end (and every 10 s), with rate and time left.
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("3/3 images, ") and last.endswith(" images/s, 0:00:00 left"), last
    outputs = {}
    for batch in json_batches + shard_batches:
        for i, image_id in enumerate(batch["image_ids"]):
            outputs.setdefault(int(image_id), []).append(
                {key: value[i] for key, value in batch.items()})
    assert sorted(outputs) == sorted(r.image_id for r in dataset.records)
    for image_id, (from_json, from_shards) in outputs.items():
        for key, value in from_json.items():
            np.testing.assert_allclose(from_shards[key], value, atol=1e-5, err_msg=key)

