"""A converted torchvision COCO checkpoint carries COCO's label schema: `predict` and `export`
run with no annotations file anywhere and name COCO's categories (random-weight checkpoint)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mask_rcnn_tf import cli

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "maskrcnn_r50_fpn_torchvision.yaml"
# Small images, and every detection kept and drawn: random weights score about 1/91 per class.
SMALL = ["data.min_size=128", "data.max_size=128", "model.roi_heads.score_threshold=0.0",
         "model.roi_heads.detections_per_image=5", "eval.score_threshold_draw=0.0"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """convert-torchvision of a random maskrcnn_resnet50_fpn (91 outputs by COCO id)."""
    import torch
    import torchvision

    folder = tmp_path_factory.mktemp("coco")
    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None,
                                                               weights_backbone=None)
    checkpoint = folder / "maskrcnn.pth"
    torch.save(model.state_dict(), checkpoint)
    output = folder / "maskrcnn_coco.weights.h5"
    assert cli.main(["convert-torchvision", "--checkpoint", str(checkpoint),
                     "--output", str(output), "--config", str(CONFIG)]) == 0
    return output


@pytest.fixture(autouse=True)
def _no_annotations(tmp_path, monkeypatch):
    # The config names coco/annotations/...: from an empty folder no annotations file exists.
    monkeypatch.chdir(tmp_path)


def test_converter_writes_coco_labels_beside_the_weights(converted):
    labels = json.loads(converted.with_name("maskrcnn_coco.labels.json").read_text())
    names = {c["id"]: c["name"] for c in labels["categories"]}
    assert len(names) == 90 and names[1] == "person" and names[90] == "toothbrush"
    assert names[12] == "N/A"  # one of COCO's 10 unused ids among the 91 outputs


def test_predict_names_coco_classes_without_annotations(converted, tmp_path, monkeypatch):
    import mask_rcnn_tf.evaluation.predict as predict

    drawn = []
    original = predict.draw_detections
    monkeypatch.setattr(predict, "draw_detections", lambda *args, **kwargs: (
        drawn.append(args[5]), original(*args, **kwargs))[1])
    image = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8)).save(image)
    assert cli.main(["predict", "--config", str(CONFIG), "--weights", str(converted),
                     str(image), "--output-dir", str(tmp_path / "out"), "--set", *SMALL]) == 0
    assert (tmp_path / "out" / "noise.png").exists()
    assert drawn and drawn[0][1] == "person" and drawn[0][3] == "car"
    assert len(drawn[0]) == 90


def test_schema_that_disagrees_with_the_class_count_is_one_line(converted, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    code = cli.main(["predict", "--config", str(CONFIG), "--weights", str(converted), str(image),
                     "--output-dir", str(tmp_path / "out"), "--set", "model.num_classes=81"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert err == (f"mask-rcnn predict: error: {converted.with_name('maskrcnn_coco.labels.json')}"
                   ": 90 categories, but model.num_classes=81 needs 80 class names (background "
                   "excluded)\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a full ResNet-50-FPN SavedModel
def test_export_serves_coco_names_without_annotations(converted, tmp_path):
    import tensorflow as tf

    base = tmp_path / "exported"
    assert cli.main(["export", "--config", str(CONFIG), "--weights", str(converted),
                     "--export-base", str(base), "--set", *SMALL]) == 0
    labels = (base / "1" / "assets" / "labels.txt").read_text().splitlines()
    assert len(labels) == 90 and labels[0] == "person" and labels[89] == "toothbrush"
    signature = tf.saved_model.load(str(base / "1")).signatures["metadata"]
    (key,) = signature.structured_input_signature[1]
    metadata = signature(**{key: tf.zeros([1], tf.int32)})
    names = [n.decode() for n in metadata["class_names"].numpy()[0]]
    assert names == labels
