"""`mask-rcnn` user errors end to end through cli.main: exit status 2, one line on stderr that
names the file, field or value at fault, and nothing written half-way.

Degenerate annotations (box under a pixel, empty mask) are covered at the loader level by
tests/data/test_coco.py::test_crowd_excluded_degenerate_skipped_and_counted.
"""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from mask_rcnn_tf.data.shapes import make_shapes
from tests.cli_errors import cli_fails as _fails

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "shapes.yaml"
# The demo model, narrowed and at 64 px, so that evaluate/predict build it in a few seconds.
TINY = ["data.min_size=64", "data.max_size=64", "model.backbone.base_width=8",
        "model.fpn.num_channels=16", "model.roi_heads.box_fc_dim=16",
        "model.roi_heads.mask_conv_dim=8"]


@pytest.fixture(autouse=True)
def _outside_the_repo(tmp_path, monkeypatch):
    # configs/shapes.yaml points at data/shapes/... relative to the working directory: from an
    # empty folder a config error that went unreported fails on the data instead of training.
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A valid 4-image, 64 px shapes dataset; tests corrupt copies of it."""
    output_dir = tmp_path_factory.mktemp("pristine") / "shapes"
    make_shapes(output_dir, num_images=4, seed=0, image_size=64)
    return output_dir


@pytest.fixture
def data(pristine, tmp_path):
    """A private copy of the pristine dataset: (annotations path, images folder)."""
    copy = tmp_path / "shapes"
    shutil.copytree(pristine, copy)
    return copy / "annotations.json", copy / "images"


@pytest.fixture(scope="module")
def weights(pristine, tmp_path_factory):
    """A .weights.h5 file of the TINY model, so that predict gets as far as reading images."""
    from mask_rcnn_tf.config import load_config
    from mask_rcnn_tf.modeling.factory import build_model

    config = load_config(CONFIG, TINY)
    path = tmp_path_factory.mktemp("weights") / "tiny.weights.h5"
    build_model(config.model, image_size=config.data.pad_size).save_weights(path)
    return path


def _train_fails(capsys, tmp_path, annotations, images, *overrides):
    """`train` on the given data; also checks that the model folder holds no checkpoint."""
    model_dir = tmp_path / "model"
    message = _fails(capsys, "train", "--config", CONFIG, "--model-dir", model_dir, "--set",
                     f"data.train.annotations={annotations}", f"data.train.images={images}",
                     *overrides)
    assert not list(model_dir.glob("ckpt-*"))
    assert not (model_dir / "model.weights.h5").exists()
    return message


def _edit_annotations(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_missing_annotations_file(capsys, tmp_path, data):
    _, images = data
    missing = tmp_path / "nowhere" / "annotations.json"
    message = _train_fails(capsys, tmp_path, missing, images)
    assert message == f"{missing}: annotations file not found"


def test_annotations_file_not_json(capsys, tmp_path, data):
    annotations, images = data
    annotations.write_text('{"images": [], "annotations": [,]}')
    message = _train_fails(capsys, tmp_path, annotations, images)
    assert message == f"{annotations}: not valid JSON (line 1, column 32: Expecting value)"


def test_annotations_file_without_annotations_key(capsys, tmp_path, data):
    annotations, images = data
    _edit_annotations(annotations, lambda d: d.pop("annotations"))
    message = _train_fails(capsys, tmp_path, annotations, images)
    assert message == f"{annotations}: missing top-level key 'annotations'"


def test_annotation_of_a_missing_image(capsys, tmp_path, data):
    annotations, images = data
    (images / "000002.png").unlink()
    message = _train_fails(capsys, tmp_path, annotations, images)
    assert message == (f"{images / '000002.png'}: image file not found "
                       f"(listed in {annotations})")


def test_image_that_does_not_decode(capsys, tmp_path, data):
    annotations, images = data
    (images / "000001.png").write_bytes(b"\x89PNG but not really an image")
    message = _train_fails(capsys, tmp_path, annotations, images)
    assert message.startswith(f"{images / '000001.png'}: image does not decode")


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"not an image at all", b"\x89PNG but not really"])
def test_image_failing_during_training_is_named(capsys, tmp_path, data, content):
    """The up-front check skipped: the first batch fails, and one line names the file (from
    the pipeline's format check, or by decoding every image once the decoder failed). Slow:
    ~30 s each to trace the training step (tests/data/test_tfrecords.py checks the same
    naming on the input pipeline in the default suite)."""
    annotations, images = data
    (images / "000001.png").write_bytes(content)
    message = _train_fails(capsys, tmp_path, annotations, images, *TINY,
                           "data.check_images=false", "train.steps=2", "train.warmup_steps=0",
                           "train.batch_size=4")
    assert message.startswith(f"{images / '000001.png'}"), message
    assert ("is not a JPEG, PNG, GIF, BMP or WebP image" in message
            or "image does not decode" in message), message


def test_annotation_with_unknown_category(capsys, tmp_path, data):
    annotations, images = data
    annotation_id = json.loads(annotations.read_text())["annotations"][2]["id"]
    _edit_annotations(annotations, lambda d: d["annotations"][2].update(category_id=42))
    message = _train_fails(capsys, tmp_path, annotations, images)
    assert message == (f"{annotations}: annotation id {annotation_id}: category_id 42 is not "
                       "in categories")


def _config_file(tmp_path, **train):
    """configs/shapes.yaml with `train` entries added, written to tmp_path."""
    tree = yaml.safe_load(CONFIG.read_text())
    tree["train"].update(train)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize("train, expected", [
    ({"batch_sise": 8}, "unknown config key train.batch_sise (valid keys under train: "),
    ({"batch_size": "eight"}, "train.batch_size: expected an integer, got 'eight'"),
])
def test_bad_config_file(capsys, tmp_path, data, train, expected):
    path = _config_file(tmp_path, **train)
    annotations, images = data
    message = _fails(capsys, "train", "--config", path, "--model-dir", tmp_path / "model",
                     "--set", f"data.train.annotations={annotations}",
                     f"data.train.images={images}")
    assert message.startswith(f"{path}: {expected}")
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("override, expected", [
    ("train.stesp=200", "unknown config key train.stesp (valid keys under train: "),
    ("train.steps=abc", "train.steps: expected an integer, got 'abc'"),
])
def test_bad_override(capsys, tmp_path, data, override, expected):
    # The YAML file is fine, so the message must blame --set, not the file.
    annotations, images = data
    message = _fails(capsys, "train", "--config", CONFIG, "--model-dir", tmp_path / "model",
                     "--set", f"data.train.annotations={annotations}",
                     f"data.train.images={images}", override)
    assert message.startswith(f"--set: {expected}")
    assert not (tmp_path / "model").exists()


def _predict_fails(capsys, tmp_path, data, weights, image):
    annotations, images = data
    output_dir = tmp_path / "predictions"
    message = _fails(capsys, "predict", "--config", CONFIG, "--weights", weights,
                     "--output-dir", output_dir, images / "000000.png", image,
                     "--set", *TINY, f"data.train.annotations={annotations}")
    assert not output_dir.exists()
    return message


def test_predict_on_a_missing_image(capsys, tmp_path, data, weights):
    missing = tmp_path / "no_such.png"
    assert _predict_fails(capsys, tmp_path, data, weights, missing) == \
        f"{missing}: image file not found"


def test_predict_on_a_file_that_is_not_an_image(capsys, tmp_path, data, weights):
    text = tmp_path / "notes.png"
    text.write_text("these are notes, not pixels\n")
    message = _predict_fails(capsys, tmp_path, data, weights, text)
    assert message.startswith(f"{text}: image does not decode")


def test_evaluate_with_missing_weights_file(capsys, tmp_path, data):
    annotations, images = data
    missing = tmp_path / "missing.weights.h5"
    metrics = tmp_path / "metrics.json"
    message = _fails(capsys, "evaluate", "--config", CONFIG, "--weights", missing,
                     "--output", metrics, "--set", *TINY, f"data.val.annotations={annotations}",
                     f"data.val.images={images}")
    assert message == f"weights file not found: {missing}"
    assert not metrics.exists()


def test_make_shapes_leaves_a_non_empty_output_folder_alone(capsys, tmp_path):
    output_dir = tmp_path / "existing"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("keep me")
    (output_dir / "images").mkdir()
    (output_dir / "images" / "a.png").write_bytes(b"old bytes")
    before = {p.relative_to(tmp_path): p.read_bytes() if p.is_file() else None
              for p in tmp_path.rglob("*")}
    message = _fails(capsys, "make-shapes", "--output", output_dir, "--num-images", 2,
                     "--seed", 0, "--image-size", 64)
    assert message.startswith(f"{output_dir}: output_dir exists and is not empty")
    after = {p.relative_to(tmp_path): p.read_bytes() if p.is_file() else None
             for p in tmp_path.rglob("*")}
    assert after == before  # same files, same bytes, and no staging folder left next to it
