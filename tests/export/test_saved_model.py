"""The exported SavedModel end to end: `mask-rcnn export`, saved_model_cli, tf.saved_model.load
against the in-process Keras model, warm-up records, versions on disk.

The model is the shapes demo narrowed to 64 px, with random weights saved by the test; its
class-logit layer is redrawn wider than the initializer's (std 0.1 instead of 0.01) so that
scores spread out and the 0.5 score threshold keeps a different number of detections per image,
of several classes.
"""

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from mask_rcnn_tf import cli
from mask_rcnn_tf.config import load_config
from mask_rcnn_tf.data.shapes import CATEGORIES, make_shapes
from mask_rcnn_tf.export.saved_model import check_class_names, export_saved_model
from mask_rcnn_tf.modeling.factory import build_model
from mask_rcnn_tf.ops.mask_ops import paste_masks_numpy
from tests.export.helpers import SHAPES_TINY, encode_png, noise_images, resize_scale, run_model

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "shapes.yaml"
SIZE = 64
TINY = SHAPES_TINY  # the model of tests/conftest.py tiny_shapes_export
NUM_DETECTIONS = 50  # roi_heads.detections_per_image of configs/shapes.yaml
IMAGE_SIZES = [(40, 60), (64, 64), (90, 50), (33, 77), (128, 96), (17, 23), (200, 150),
               (64, 31), (100, 100), (48, 130)]
SAVED_MODEL_CLI = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def _images():
    """uint8 RGB noise images with a bright rectangle, of the sizes in IMAGE_SIZES."""
    return noise_images(IMAGE_SIZES)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Exports version 1 with --full-masks and --encoded-masks png through the CLI; returns a
    dict of what tests need."""
    root = tmp_path_factory.mktemp("export")
    data = root / "shapes"
    make_shapes(data, num_images=2, seed=0, image_size=SIZE)
    overrides = TINY + [f"data.train.annotations={data / 'annotations.json'}"]
    config = load_config(CONFIG, overrides)
    keras.utils.set_random_seed(0)
    model = build_model(config.model, image_size=config.data.pad_size)
    kernel = model.box_head.class_logits.kernel
    kernel.assign(np.random.default_rng(0).normal(0.0, 0.1, kernel.shape).astype(np.float32))
    weights = root / "tiny.weights.h5"
    model.save_weights(weights)
    base = root / "models"
    code = cli.main(["export", "--config", str(CONFIG), "--weights", str(weights),
                     "--export-base", str(base), "--full-masks", "--encoded-masks", "png",
                     "--set", *overrides])
    assert code == 0
    return {"config": config, "overrides": overrides, "model": model, "weights": weights,
            "base": base, "export_dir": base / "1",
            "loaded": tf.saved_model.load(str(base / "1"))}


def _reference(model, images):
    """In-process detections, boxes in original pixels computed here with NumPy."""
    outputs = run_model(model, images, SIZE)
    scales = [resize_scale(*image.shape[:2], size=SIZE) for image in images]
    unclipped = outputs["detection_boxes"].astype(np.float64) / np.array(scales)[:, None, None]
    limits = np.array([[h, w, h, w] for h, w in (image.shape[:2] for image in images)])
    outputs["unclipped_boxes"] = unclipped
    outputs["boxes"] = np.clip(unclipped, 0.0, limits[:, None, :])
    return outputs


def _assert_same_detections(served, reference, b, served_b=None):
    """Image b of the reference against image served_b (default b) of a served batch."""
    served_b = b if served_b is None else served_b
    num = int(reference["num_detections"][b])
    assert int(served["num_detections"][served_b]) == num
    np.testing.assert_array_equal(served["detection_classes"][served_b, :num],
                                  reference["detection_classes"][b, :num])
    np.testing.assert_allclose(served["detection_scores"][served_b, :num],
                               reference["detection_scores"][b, :num], atol=1e-4)
    np.testing.assert_allclose(served["detection_boxes"][served_b, :num],
                               reference["boxes"][b, :num], atol=1e-3)
    np.testing.assert_allclose(served["detection_masks"][served_b, :num],
                               reference["detection_masks"][b, :num], atol=1e-4)
    # Rows past num_detections are zero.
    for key in ("detection_classes", "detection_scores", "detection_boxes", "detection_masks"):
        assert not np.asarray(served[key][served_b, num:]).any(), key


def test_layout_labels_and_metadata(setup):
    export_dir = setup["export_dir"]
    assert sorted(os.listdir(setup["base"])) == ["1"]
    for name in ("saved_model.pb", "variables", "assets/labels.txt",
                 "assets.extra/tf_serving_warmup_requests"):
        assert (export_dir / name).exists(), name
    names = [category["name"] for category in CATEGORIES]
    assert (export_dir / "assets" / "labels.txt").read_text() == "".join(n + "\n" for n in names)
    # One row per request row: batching servers reject outputs without the batch dimension.
    metadata = setup["loaded"].signatures["metadata"](unused=tf.constant([0, 0]))
    assert [[n.decode() for n in row] for row in metadata["class_names"].numpy()] == [names] * 2


def _saved_model_cli(*args):
    result = subprocess.run(SAVED_MODEL_CLI + [str(arg) for arg in args], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _signature_tensors(show_output):
    """{signature: {("inputs" | "outputs", alias): (dtype, shape)}} from saved_model_cli show."""
    signatures = {}
    for block in show_output.split("signature_def['")[1:]:
        name = block[: block.index("'")]
        signatures[name] = {
            (kind, alias): (dtype, shape.replace(" ", "")) for kind, alias, dtype, shape in
            re.findall(r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: "
                       r"([^\n]+)", block)}
    return signatures


def test_saved_model_cli_show_lists_the_signatures(setup):
    result = _saved_model_cli("show", "--dir", setup["export_dir"], "--all")
    signatures = _signature_tensors(result.stdout)
    detections = {
        ("outputs", "num_detections"): ("DT_INT32", "(-1)"),
        ("outputs", "detection_boxes"): ("DT_FLOAT", f"(-1,{NUM_DETECTIONS},4)"),
        ("outputs", "detection_classes"): ("DT_INT32", f"(-1,{NUM_DETECTIONS})"),
        ("outputs", "detection_scores"): ("DT_FLOAT", f"(-1,{NUM_DETECTIONS})"),
        ("outputs", "detection_masks"): ("DT_FLOAT", f"(-1,{NUM_DETECTIONS},28,28)"),
        ("outputs", "image_sizes"): ("DT_INT32", "(-1,2)"),
        ("outputs", "detection_masks_full"): ("DT_UINT8", f"(-1,{NUM_DETECTIONS},-1,-1)"),
        ("outputs", "detection_masks_encoded_bytes"): ("DT_STRING", f"(-1,{NUM_DETECTIONS})"),
    }
    assert signatures["serving_default"] == {("inputs", "images"): ("DT_STRING", "(-1)"),
                                             **detections}
    assert signatures["serving_tensor"] == {("inputs", "images"): ("DT_UINT8", "(-1,-1,-1,3)"),
                                            **detections}
    assert signatures["metadata"] == {("inputs", "unused"): ("DT_INT32", "(-1)"),
                                      ("outputs", "class_names"): ("DT_STRING", "(-1,3)")}
    assert "Method name is: tensorflow/serving/predict" in result.stdout


def test_saved_model_cli_run_on_oneencode_png(setup, tmp_path):
    # saved_model_cli run loads the model into a TF1 session, as tensorflow_model_server does;
    # a SavedModel can load with tf.saved_model.load and still fail there (serving_module.py).
    image = _images()[0]
    np.save(tmp_path / "images.npy", np.array([encode_png(image)]))
    outdir = tmp_path / "out"
    _saved_model_cli("run", "--dir", setup["export_dir"], "--tag_set", "serve",
                     "--signature_def", "serving_default",
                     "--inputs", f"images={tmp_path / 'images.npy'}", "--outdir", outdir)
    served = {path.stem: np.load(path, allow_pickle=True) for path in outdir.glob("*.npy")}
    reference = _reference(setup["model"], [image])
    assert reference["num_detections"][0] > 0
    _assert_same_detections(served, reference, 0)
    np.testing.assert_array_equal(served["image_sizes"], [image.shape[:2]])


def test_ten_images_of_different_sizes_match_the_keras_model(setup):
    images = _images()
    served = setup["loaded"].signatures["serving_default"](
        images=tf.constant([encode_png(image) for image in images]))
    served = {key: value.numpy() for key, value in served.items()}
    reference = _reference(setup["model"], images)
    counts = reference["num_detections"]
    # A comparison worth making: detections in most images, not all capped, several classes.
    assert (counts > 0).sum() >= 8 and (counts < NUM_DETECTIONS).any()
    assert len(np.unique(reference["detection_classes"][reference["detection_classes"] > 0])) >= 2
    np.testing.assert_array_equal(served["image_sizes"], IMAGE_SIZES)
    for b in range(len(images)):
        _assert_same_detections(served, reference, b)
    # Full masks: the 28 x 28 masks pasted with the unclipped boxes (as evaluation pastes them),
    # thresholded at 0.5, on a canvas of the largest height and width, zero beyond each image.
    full = served["detection_masks_full"]
    assert full.dtype == np.uint8
    assert full.shape == (10, NUM_DETECTIONS, 200, 150)
    for b, (height, width) in enumerate(IMAGE_SIZES):
        assert not full[b, :, height:].any() and not full[b, :, :, width:].any()
        assert not full[b, counts[b]:].any()
        for i in range(counts[b]):
            probs = paste_masks_numpy(reference["detection_masks"][b, i],
                                      reference["unclipped_boxes"][b, i], (height, width))
            decided = np.abs(probs - 0.5) > 1e-3
            np.testing.assert_array_equal(full[b, i, :height, :width][decided],
                                          (probs >= 0.5)[decided])
    assert full.any()
    # Encoded masks: one PNG per detection, the full mask in its own image, pixel for pixel.
    encoded = served["detection_masks_encoded_bytes"]
    assert encoded.shape == (10, NUM_DETECTIONS)
    for b, (height, width) in enumerate(IMAGE_SIZES):
        assert all(value == b"" for value in encoded[b, counts[b]:])
        for i in range(counts[b]):
            if not encoded[b, i]:
                assert not full[b, i].any()
                continue
            png = np.asarray(Image.open(io.BytesIO(encoded[b, i])))
            assert png.dtype == np.uint8 and png.shape == (height, width)
            np.testing.assert_array_equal(png, full[b, i, :height, :width])


def test_pixels_signature_matches_encoded_signature(setup):
    images = [image for image in _images() if image.shape[:2] == (64, 64)] * 2
    images[1] = images[1][::-1].copy()
    signatures = setup["loaded"].signatures
    from_pixels = signatures["serving_tensor"](images=tf.constant(np.stack(images)))
    from_files = signatures["serving_default"](images=tf.constant([encode_png(i) for i in images]))
    for key, value in from_files.items():
        np.testing.assert_array_equal(from_pixels[key].numpy(), value.numpy(), err_msg=key)
    reference = _reference(setup["model"], images)
    for b in range(2):
        _assert_same_detections({k: v.numpy() for k, v in from_pixels.items()}, reference, b)


def test_jpeg_decodes_in_the_graph(setup):
    image = _images()[4]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    signatures = setup["loaded"].signatures
    served = signatures["serving_default"](images=tf.constant([buffer.getvalue(), encode_png(image)]))
    np.testing.assert_array_equal(served["image_sizes"].numpy(), [image.shape[:2]] * 2)
    decoded = tf.io.decode_jpeg(buffer.getvalue()).numpy()
    from_pixels = signatures["serving_tensor"](images=tf.constant(decoded[None]))
    np.testing.assert_array_equal(served["detection_classes"].numpy()[:1],
                                  from_pixels["detection_classes"].numpy())


def test_bad_inputs_raise_invalid_argument(setup):
    signatures = setup["loaded"].signatures
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        signatures["serving_default"](images=tf.constant([b"not an image"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="images: the batch is empty"):
        signatures["serving_default"](images=tf.constant([], tf.string))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="images: height and width must be positive"):
        signatures["serving_tensor"](images=tf.zeros([1, 0, 5, 3], tf.uint8))


def test_warmup_records_are_predict_requests_the_model_answers(setup):
    path = setup["export_dir"] / "assets.extra" / "tf_serving_warmup_requests"
    signatures = setup["loaded"].signatures
    seen = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        name = request.model_spec.signature_name
        inputs = {alias: tf.constant(tf.make_ndarray(proto))
                  for alias, proto in request.inputs.items()}
        outputs = signatures[name](**inputs)
        batch = int(next(iter(inputs.values())).shape[0])
        if name != "metadata":
            assert outputs["num_detections"].shape == (batch,)
        seen.append((name, batch))
    assert seen == [("serving_default", 1), ("serving_default", 2), ("serving_tensor", 1),
                    ("metadata", 1)]


def test_existing_version_refused_by_the_cli(setup, capsys):
    pb = setup["export_dir"] / "saved_model.pb"
    before = (pb.read_bytes(), pb.stat().st_mtime_ns)
    code = cli.main(["export", "--config", str(CONFIG), "--weights", str(setup["weights"]),
                     "--export-base", str(setup["base"]), "--version", "1",
                     "--set", *setup["overrides"]])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"mask-rcnn export: error: {setup['base'] / '1'} already exists; pass "
                   "--overwrite to replace it, or leave out --version to write version 2\n")
    assert (pb.read_bytes(), pb.stat().st_mtime_ns) == before


def test_class_count_that_does_not_fit_the_annotations_refused(setup, capsys, tmp_path):
    annotations = setup["config"].data.train.annotations
    code = cli.main(["export", "--config", str(CONFIG), "--weights", str(setup["weights"]),
                     "--export-base", str(tmp_path / "models"),
                     "--set", *setup["overrides"], "model.num_classes=5"])
    assert code == 2
    assert capsys.readouterr().err == (
        f"mask-rcnn export: error: {annotations}: 3 categories, but model.num_classes=5 needs "
        "4 class names (background excluded)\n")
    assert not (tmp_path / "models").exists()


def test_next_version_without_full_masks_and_interrupted_export(tiny_shapes_export, monkeypatch,
                                                                 tmp_path):
    # The session's export of the same model without --full-masks (export_saved_model into an
    # empty base), copied: this test writes into the base.
    assert tiny_shapes_export["export_dir"] == str(tiny_shapes_export["base"] / "1")
    base = tmp_path / "models"
    shutil.copytree(tiny_shapes_export["base"], base)
    config, weights = tiny_shapes_export["config"], tiny_shapes_export["weights"]
    first = str(base / "1")
    with open(os.path.join(first, "saved_model.pb"), "rb") as f:
        graphs = saved_model_pb2.SavedModel.FromString(f.read()).meta_graphs
    for name in ("serving_default", "serving_tensor"):
        outputs = set(graphs[0].signature_def[name].outputs)
        assert outputs == {"num_detections", "detection_boxes", "detection_classes",
                           "detection_scores", "detection_masks", "image_sizes"}

    def save_then_fail(obj, path, signatures=None):
        os.makedirs(os.path.join(path, "variables"))
        with open(os.path.join(path, "saved_model.pb"), "wb") as f:
            f.write(b"half a SavedModel")
        raise KeyboardInterrupt("killed while writing the SavedModel")

    monkeypatch.setattr(tf.saved_model, "save", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        export_saved_model(config, base, weights=str(weights))
    assert os.listdir(base) == ["1"]


def test_class_names_must_fit_the_model():
    assert check_class_names(("circle", "square"), 3, "a.json") == ["circle", "square"]
    with pytest.raises(ValueError, match=re.escape(
            "a.json: 2 categories, but model.num_classes=4 needs 3 class names (background "
            "excluded)")):
        check_class_names(["circle", "square"], 4, "a.json")
    with pytest.raises(ValueError, match=re.escape(
            "a.json: class name 'a\\nb' must be non-empty and on one line")):
        check_class_names(["a\nb"], 2, "a.json")


def _box_iou(a, b):
    """IoU of [4] [y1, x1, y2, x2] boxes a and b."""
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
    return inter / union if union > 0 else 0.0


def test_bfloat16_export_computes_in_bfloat16_with_float32_outputs(setup, tmp_path):
    path = export_saved_model(setup["config"], tmp_path / "models", weights=str(setup["weights"]),
                              full_masks=True, encoded_masks="png", precision="bfloat16")
    saved = saved_model_pb2.SavedModel.FromString((Path(path) / "saved_model.pb").read_bytes())
    assert "DT_BFLOAT16" in str(saved.meta_graphs[0].graph_def.library)
    images = _images()[:6]
    encoded = tf.constant([encode_png(image) for image in images])
    low = tf.saved_model.load(path).signatures["serving_default"](images=encoded)
    full = setup["loaded"].signatures["serving_default"](images=encoded)
    for key, value in full.items():
        assert low[key].dtype == value.dtype and low[key].shape[1:] == value.shape[1:], key
    # Random tiny weights on noise: detections near the score threshold come and go and boxes
    # regressed from near-random features move, but most float32 detections keep a bfloat16
    # twin of the same class on nearly the same box (72% at IoU > 0.9 when written; a broken
    # bfloat16 graph matches next to none).
    low, full = ({k: v.numpy() for k, v in out.items()} for out in (low, full))
    matched = total = 0
    for b in range(len(images)):
        for i in range(full["num_detections"][b]):
            total += 1
            matched += any(
                low["detection_classes"][b, j] == full["detection_classes"][b, i]
                and _box_iou(low["detection_boxes"][b, j], full["detection_boxes"][b, i]) > 0.8
                for j in range(low["num_detections"][b]))
    assert total >= 10 and matched >= 0.7 * total, (matched, total)
